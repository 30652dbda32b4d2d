"""Annotation keys certop reads on Ingresses, and the decisions they carry.

certop's own keys live under `certop.dev/`; cert-manager's ingress-shim keys and
ingress-nginx's redirect keys are honoured unchanged so existing manifests work as written.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass

from certop.core.duration import parse_duration
from certop.core.models import KeyAlgorithm

CLUSTER_ISSUER = ("certop.dev/cluster-issuer", "cert-manager.io/cluster-issuer")
ISSUER = ("certop.dev/issuer", "cert-manager.io/issuer")
TLS_ACME = "kubernetes.io/tls-acme"
KEY_ALGORITHM = ("certop.dev/private-key-algorithm", "cert-manager.io/private-key-algorithm")
KEY_SIZE = ("certop.dev/private-key-size", "cert-manager.io/private-key-size")
RENEW_BEFORE = ("certop.dev/renew-before", "cert-manager.io/renew-before")
ROTATION_POLICY = ("certop.dev/private-key-rotation-policy",
                   "cert-manager.io/private-key-rotation-policy")
SSL_REDIRECT = ("certop.dev/ssl-redirect", "nginx.ingress.kubernetes.io/ssl-redirect")
FORCE_SSL_REDIRECT = ("certop.dev/force-ssl-redirect",
                      "nginx.ingress.kubernetes.io/force-ssl-redirect")
BODY_SIZE = ("certop.dev/proxy-body-size", "nginx.ingress.kubernetes.io/proxy-body-size")
HSTS = "certop.dev/hsts"
NGINX_HSTS = "nginx.ingress.kubernetes.io/hsts"
NGINX_HSTS_MAX_AGE = "nginx.ingress.kubernetes.io/hsts-max-age"
NGINX_HSTS_SUBDOMAINS = "nginx.ingress.kubernetes.io/hsts-include-subdomains"
NGINX_HSTS_PRELOAD = "nginx.ingress.kubernetes.io/hsts-preload"
DEFAULT_HSTS = "max-age=31536000; includeSubDomains"
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True)
class IssuerChoice:
    """Which issuer an Ingress asks for; `name` None means 'the default issuer'."""

    name: str | None
    cluster: bool
    annotation: str | None


def _first(annotations: Mapping[str, str], keys: tuple[str, ...]) -> tuple[str, str] | None:
    for key in keys:
        if annotations.get(key):
            return key, annotations[key]
    return None


def issuer_choice(annotations: Mapping[str, str]) -> IssuerChoice | None:
    """The issuer an Ingress triggers, or None when it asks for no certificate."""
    found = _first(annotations, CLUSTER_ISSUER)
    if found:
        return IssuerChoice(found[1], True, found[0])
    found = _first(annotations, ISSUER)
    if found:
        return IssuerChoice(found[1], False, found[0])
    if annotations.get(TLS_ACME, "").lower() == "true":
        return IssuerChoice(None, True, TLS_ACME)
    return None


def key_algorithm(annotations: Mapping[str, str]) -> tuple[KeyAlgorithm, str | None]:
    """The key type asked for, and the bad annotation key if the value is not understood."""
    algo = _first(annotations, KEY_ALGORITHM)
    size = _first(annotations, KEY_SIZE)
    name = (algo[1] if algo else "ECDSA").upper()
    if name == "ECDSA":
        if size and size[1] != "256":
            return KeyAlgorithm.ECDSA_P256, size[0]
        return KeyAlgorithm.ECDSA_P256, None
    if name == "RSA":
        bits = size[1] if size else "2048"
        try:
            return KeyAlgorithm(f"RSA-{bits}"), None
        except ValueError:
            return KeyAlgorithm.RSA2048, size[0] if size else None
    return KeyAlgorithm.ECDSA_P256, algo[0] if algo else None


def renew_before(annotations: Mapping[str, str]) -> datetime.timedelta | None:
    """How long before expiry to renew (a Go duration such as 720h), or None."""
    found = _first(annotations, RENEW_BEFORE)
    if not found:
        return None
    try:
        return parse_duration(found[1])
    except ValueError:
        raise AnnotationError(found[0], "a duration such as 720h or 360h30m") from None


def reuse_key(annotations: Mapping[str, str]) -> bool:
    """privateKey rotationPolicy: Always (a new key per certificate, the default) or Never."""
    found = _first(annotations, ROTATION_POLICY)
    if not found or found[1] == "Always":
        return False
    if found[1] == "Never":
        return True
    raise AnnotationError(found[0], "Always or Never")


def ssl_redirect(annotations: Mapping[str, str]) -> bool:
    """Whether plain-HTTP requests for this Ingress's TLS hosts are redirected (default yes)."""
    found = _first(annotations, SSL_REDIRECT)
    return not (found and found[1].lower() == "false")


def force_ssl_redirect(annotations: Mapping[str, str]) -> bool:
    """Redirect to HTTPS even for hosts without a TLS section (ingress-nginx semantics)."""
    found = _first(annotations, FORCE_SSL_REDIRECT)
    return bool(found and found[1].lower() == "true")


class AnnotationError(ValueError):
    """An annotation value certop cannot use; `key` names it."""

    def __init__(self, key: str, expected: str) -> None:
        super().__init__(expected)
        self.key = key
        self.expected = expected


def body_limit(annotations: Mapping[str, str]) -> int | None:
    """Largest request body for this Ingress in bytes; None when not set; 0 = no limit.
    nginx size syntax: `8m`, `512k`, `1g`, `1048576`."""
    found = _first(annotations, BODY_SIZE)
    if not found:
        return None
    key, raw = found
    text = raw.strip().lower()
    unit = text[-1:] if text[-1:] in ("k", "m", "g") else ""
    number = text[: len(text) - len(unit)]
    # str.isdigit() is true for "²" too; 18 digits: any real size, and never Python's limit
    # on int() of a long string (a ValueError no user should be able to cause)
    if not (number.isascii() and number.isdigit()) or len(number) > 18:
        raise AnnotationError(key, "a size like 8m, 512k, 1g or a number of bytes (0 = no limit)")
    return int(number) * _SIZE_UNITS[unit]


_HSTS_MAX_AGE = re.compile(r'max-age=(?:[0-9]{1,10}|"[0-9]{1,10}")', re.IGNORECASE | re.ASCII)


def valid_hsts(value: str) -> bool:
    """A Strict-Transport-Security value (RFC 6797 section 6.1) certop will send: max-age in
    seconds, optionally includeSubDomains and preload, each once, separated by ";". Nothing
    else, so an annotation can never add a header line or an unknown directive."""
    seen: set[str] = set()
    for part in value.split(";"):
        directive = part.strip(" \t")
        name = directive.lower()
        if _HSTS_MAX_AGE.fullmatch(directive):
            name = "max-age"
        elif name not in ("includesubdomains", "preload"):
            return False
        if name in seen:
            return False
        seen.add(name)
    return "max-age" in seen


def hsts(annotations: Mapping[str, str], default: str | None) -> str | None:
    """The Strict-Transport-Security value for this Ingress's HTTPS responses, or None.
    `certop.dev/hsts` takes a header value, "true" (the default policy) or "false";
    ingress-nginx's hsts, hsts-max-age, hsts-include-subdomains and hsts-preload keys are
    honoured as written."""
    own = annotations.get(HSTS)
    if own is not None:
        value = own.strip()
        if value.lower() == "false":
            return None
        if value.lower() == "true":
            return DEFAULT_HSTS
        if not valid_hsts(value):
            raise AnnotationError(HSTS, '"true", "false" or a Strict-Transport-Security value '
                                        '"max-age=SECONDS[; includeSubDomains][; preload]"')
        return value
    nginx = annotations.get(NGINX_HSTS)
    if nginx is None and not any(k in annotations for k in (
            NGINX_HSTS_MAX_AGE, NGINX_HSTS_SUBDOMAINS, NGINX_HSTS_PRELOAD)):
        return default
    if nginx is not None and nginx.lower() == "false":
        return None
    max_age = annotations.get(NGINX_HSTS_MAX_AGE, "31536000")
    if not (max_age.isascii() and max_age.isdigit()):
        raise AnnotationError(NGINX_HSTS_MAX_AGE, "a number of seconds")
    value = f"max-age={max_age}"
    if annotations.get(NGINX_HSTS_SUBDOMAINS, "true").lower() == "true":
        value += "; includeSubDomains"
    if annotations.get(NGINX_HSTS_PRELOAD, "false").lower() == "true":
        value += "; preload"
    return value

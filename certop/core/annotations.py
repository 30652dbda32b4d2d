"""Annotation keys certop reads on Ingresses, and the decisions they carry.

certop's own keys live under `certop.dev/`; cert-manager's ingress-shim keys and
ingress-nginx's redirect keys are honoured unchanged so existing manifests work as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from certop.core.models import KeyAlgorithm

CLUSTER_ISSUER = ("certop.dev/cluster-issuer", "cert-manager.io/cluster-issuer")
ISSUER = ("certop.dev/issuer", "cert-manager.io/issuer")
TLS_ACME = "kubernetes.io/tls-acme"
KEY_ALGORITHM = ("certop.dev/private-key-algorithm", "cert-manager.io/private-key-algorithm")
KEY_SIZE = ("certop.dev/private-key-size", "cert-manager.io/private-key-size")
SSL_REDIRECT = ("certop.dev/ssl-redirect", "nginx.ingress.kubernetes.io/ssl-redirect")
FORCE_SSL_REDIRECT = "nginx.ingress.kubernetes.io/force-ssl-redirect"


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


def ssl_redirect(annotations: Mapping[str, str]) -> bool:
    """Whether plain-HTTP requests for this Ingress's TLS hosts are redirected (default yes)."""
    found = _first(annotations, SSL_REDIRECT)
    return not (found and found[1].lower() == "false")

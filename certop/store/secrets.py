"""Secrets as stores (cluster mode): `kubernetes.io/tls` certificates and ACME account keys.

Rules:
- certop writes only Secrets labelled `certop.dev/managed: "true"`; a Secret of that name that
  exists without the label is never overwritten (`SecretNotOwned`, reported on the Ingress).
- A write carries the resourceVersion it read, so a concurrent writer makes it fail (409)
  instead of being overwritten silently.
- `tls.crt` (leaf + chain) and `tls.key` change together in one request.
Blocking (the `kubernetes` client): call from worker threads, never from the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from certop import crypto
from certop.core.errors import PermanentError, TemporaryError
from certop.store.ports import StoredCert

MANAGED_LABEL = "certop.dev/managed"
TLS_TYPE = "kubernetes.io/tls"


class SecretNotOwned(PermanentError):
    """A Secret with the wanted name exists and certop did not create it."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(
            f"Secret {namespace}/{name} exists and is not managed by certop (no label "
            f"{MANAGED_LABEL}=true): not overwriting it; rename spec.tls[].secretName or "
            "delete the Secret")
        self.namespace = namespace
        self.name = name


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class SecretCertStore:
    def __init__(self, api: client.CoreV1Api, timeout: float = 10.0) -> None:
        self.api = api
        self.timeout = timeout

    def _read(self, namespace: str, name: str) -> Any | None:
        try:
            return self.api.read_namespaced_secret(name, namespace,
                                                   _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise TemporaryError(f"reading Secret {namespace}/{name}: HTTP {exc.status}") from exc

    def load(self, namespace: str, name: str) -> StoredCert | None:
        secret = self._read(namespace, name)
        if secret is None or secret.type != TLS_TYPE:
            return None
        data = secret.data or {}
        if "tls.crt" not in data or "tls.key" not in data:
            return None
        try:
            return StoredCert(base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]))
        except ValueError:
            return None

    def version(self, namespace: str, name: str) -> str | None:
        secret = self._read(namespace, name)
        if secret is None:
            return None
        rv = secret.metadata.resource_version
        if rv:
            return str(rv)
        digest = hashlib.sha256(repr(sorted((secret.data or {}).items())).encode())
        return digest.hexdigest()

    def owned(self, namespace: str, name: str) -> bool | None:
        """True: ours; False: someone else's; None: no such Secret."""
        secret = self._read(namespace, name)
        if secret is None:
            return None
        labels = secret.metadata.labels or {}
        return bool(labels.get(MANAGED_LABEL) == "true")

    def save(self, namespace: str, name: str, cert: StoredCert) -> None:
        data: dict[str, bytes | str] = {"tls.crt": _b64(cert.fullchain_pem),
                                        "tls.key": _b64(cert.key_pem)}
        root = crypto.root_of(cert.fullchain_pem)
        if root is not None:
            data["ca.crt"] = _b64(root)
        secret = self._read(namespace, name)
        if secret is None:
            body = client.V1Secret(
                api_version="v1", kind="Secret", type=TLS_TYPE, data=data,
                metadata=client.V1ObjectMeta(name=name, namespace=namespace,
                                             labels={MANAGED_LABEL: "true"}),
            )
            try:
                self.api.create_namespaced_secret(namespace, body,
                                                  _request_timeout=self.timeout)
                return
            except ApiException as exc:
                if exc.status == 409:
                    raise TemporaryError(f"Secret {namespace}/{name} appeared while "
                                         "certop was creating it; will look again") from exc
                raise TemporaryError(f"creating Secret {namespace}/{name}: HTTP "
                                     f"{exc.status}") from exc
        labels = secret.metadata.labels or {}
        if labels.get(MANAGED_LABEL) != "true":
            raise SecretNotOwned(namespace, name)
        metadata: dict[str, Any] = {}
        if secret.metadata.resource_version:
            metadata["resourceVersion"] = secret.metadata.resource_version
        try:
            # A null ca.crt removes one a chain with its root left behind.
            self.api.patch_namespaced_secret(name, namespace, {"metadata": metadata,
                                                               "data": {"ca.crt": None, **data}},
                                             _request_timeout=self.timeout)
        except ApiException as exc:
            raise TemporaryError(f"updating Secret {namespace}/{name}: HTTP "
                                 f"{exc.status}") from exc


ACCOUNT_ANNOTATION = "certop.dev/acme-account"


class SecretAccountStore:
    """ACME account keys in Secrets (key `tls.key`, like cert-manager's
    `privateKeySecretRef`), so a cert-manager account Secret can be reused as it is.

    The key is written once and never overwritten; the registration (URI, server, email) goes
    to an annotation. A Secret certop does not own is only read, never written."""

    def __init__(self, api: client.CoreV1Api, namespace: str,
                 names: Mapping[str, str] | None = None, timeout: float = 10.0) -> None:
        self.api = api
        self.namespace = namespace
        self.names = dict(names or {})
        """account id -> Secret name (from the issuer's privateKeySecretRef)."""
        self.timeout = timeout

    def _name(self, account_id: str) -> str:
        return self.names.get(account_id, f"certop-acme-account-{account_id}")

    def _read(self, account_id: str) -> Any | None:
        try:
            return self.api.read_namespaced_secret(self._name(account_id), self.namespace,
                                                   _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise TemporaryError(f"reading Secret {self.namespace}/{self._name(account_id)}: "
                                 f"HTTP {exc.status}") from exc

    def load_account(self, account_id: str) -> tuple[bytes, dict[str, Any]] | None:
        secret = self._read(account_id)
        if secret is None or "tls.key" not in (secret.data or {}):
            return None
        annotations = secret.metadata.annotations or {}
        try:
            info = json.loads(annotations.get(ACCOUNT_ANNOTATION, "{}"))
        except ValueError:
            info = {}
        return base64.b64decode(secret.data["tls.key"]), info if isinstance(info, dict) else {}

    def save_account_key(self, account_id: str, key_pem: bytes) -> None:
        name = self._name(account_id)
        body = client.V1Secret(
            api_version="v1", kind="Secret", type="Opaque", data={"tls.key": _b64(key_pem)},
            metadata=client.V1ObjectMeta(name=name, namespace=self.namespace,
                                         labels={MANAGED_LABEL: "true"}))
        try:
            self.api.create_namespaced_secret(self.namespace, body,
                                              _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 409:
                raise FileExistsError(f"Secret {self.namespace}/{name} exists: an account "
                                      "key is never overwritten") from exc
            raise TemporaryError(f"creating Secret {self.namespace}/{name}: HTTP "
                                 f"{exc.status}") from exc

    def save_account_info(self, account_id: str, info: dict[str, Any]) -> None:
        secret = self._read(account_id)
        if secret is None or (secret.metadata.labels or {}).get(MANAGED_LABEL) != "true":
            return  # a user's Secret: used, never written
        patch = {"metadata": {"annotations": {ACCOUNT_ANNOTATION: json.dumps(info)}}}
        try:
            self.api.patch_namespaced_secret(self._name(account_id), self.namespace, patch,
                                             _request_timeout=self.timeout)
        except ApiException as exc:
            raise TemporaryError(f"updating Secret {self.namespace}/{self._name(account_id)}"
                                 f": HTTP {exc.status}") from exc


JOURNAL_PREFIX = "certop-order-"
_NAME_LIMIT = 253


def journal_name(secret_name: str) -> str:
    """The journal Secret's name for a TLS Secret's name, distinct for distinct names.

    `certop-order-<name>` when that fits in a Secret name (253 characters); else
    `certop-order--<32 hex of SHA-256(name)>-<start of name>`. A name of the first form never
    looks like one of the second: after the prefix it would start with "-", which no Secret
    name does."""
    plain = JOURNAL_PREFIX + secret_name
    if len(plain) <= _NAME_LIMIT:
        return plain
    digest = hashlib.sha256(secret_name.encode()).hexdigest()[:32]
    head = f"{JOURNAL_PREFIX}-{digest}-"
    return head + secret_name[:_NAME_LIMIT - len(head)].rstrip("-.")


class SecretOrderJournal:
    """In-flight orders in Secrets (`journal_name()`, labelled managed): the order URL and its
    fresh private key survive an operator restart, so the order is resumed. A Secret, not the
    Certificate's status, because the entry holds a private key.

    A journal Secret without certop's label is someone else's: never read as an order, never
    written (`SecretNotOwned`). Clearing empties the Secret instead of deleting it, so the
    operator needs no `delete` on Secrets (RBAC cannot limit it to certop's own); writes carry
    the resourceVersion they read."""

    def __init__(self, api: client.CoreV1Api, timeout: float = 10.0) -> None:
        self.api = api
        self.timeout = timeout

    @staticmethod
    def _name(name: str) -> str:
        return journal_name(name)

    def _read(self, namespace: str, name: str) -> Any | None:
        """The journal Secret, None if there is none; SecretNotOwned if it is not ours."""
        try:
            secret = self.api.read_namespaced_secret(self._name(name), namespace,
                                                     _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise TemporaryError(f"reading the order journal of {namespace}/{name}: HTTP "
                                 f"{exc.status}") from exc
        if ((secret.metadata.labels if secret.metadata else None) or {}).get(
                MANAGED_LABEL) != "true":
            raise SecretNotOwned(namespace, self._name(name))
        return secret

    def load(self, namespace: str, name: str) -> dict[str, Any] | None:
        secret = self._read(namespace, name)
        if secret is None:
            return None
        try:
            entry = json.loads(base64.b64decode((secret.data or {}).get("order") or ""))
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    def _patch(self, namespace: str, name: str, secret: Any, data: dict[str, Any]) -> None:
        metadata: dict[str, Any] = {}
        if secret.metadata.resource_version:
            metadata["resourceVersion"] = secret.metadata.resource_version
        try:
            self.api.patch_namespaced_secret(self._name(name), namespace,
                                             {"metadata": metadata, "data": data},
                                             _request_timeout=self.timeout)
        except ApiException as exc:
            raise TemporaryError(f"writing the order journal of {namespace}/{name}: "
                                 f"HTTP {exc.status}") from exc

    def save(self, namespace: str, name: str, entry: dict[str, Any]) -> None:
        data: dict[str, Any] = {"order": _b64(json.dumps(entry).encode())}
        secret = self._read(namespace, name)
        if secret is not None:
            self._patch(namespace, name, secret, data)
            return
        body = client.V1Secret(api_version="v1", kind="Secret", type="Opaque", data=data,
                               metadata=client.V1ObjectMeta(
                                   name=self._name(name), namespace=namespace,
                                   labels={MANAGED_LABEL: "true"}))
        try:
            self.api.create_namespaced_secret(namespace, body, _request_timeout=self.timeout)
        except ApiException as exc:
            raise TemporaryError(f"writing the order journal of {namespace}/{name}: HTTP "
                                 f"{exc.status}") from exc

    def clear(self, namespace: str, name: str) -> None:
        secret = self._read(namespace, name)
        if secret is None or not (secret.data or {}).get("order"):
            return
        self._patch(namespace, name, secret, {"order": None})

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from certop import crypto
from certop.core.errors import PermanentError, TemporaryError
from certop.store.ports import StoredCert
from certop.store.secret_cache import CachedSecret, SecretCache

MANAGED_LABEL = "certop.dev/managed"
TLS_TYPE = "kubernetes.io/tls"
_T = TypeVar("_T")


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


@dataclass(frozen=True)
class _View:
    """What certop last saw of a Secret it reads and writes (its last read or write): enough
    to write without reading first. Stale, the write fails (409 on a resourceVersion that
    moved or a create of something that exists, 404 on a patch of something gone) and the
    Secret is read once and the write decided again."""

    exists: bool
    owned: bool = False
    rv: str | None = None
    filled: bool = False
    """The journal holds an order."""


def _view(secret: Any | None) -> _View:
    if secret is None:
        return _View(False)
    meta = secret.metadata
    labels = (meta.labels if meta is not None else None) or {}
    return _View(True, labels.get(MANAGED_LABEL) == "true",
                 meta.resource_version if meta is not None else None,
                 bool((secret.data or {}).get("order")))


def _cached_view(cache: SecretCache | None, namespace: str, name: str) -> _View | None:
    """What the watch-fed cache says of certop's own Secret `name`: None when there is no
    listing yet, or the Secret is not in it and may be someone else's (not certop's: not in
    a watch of certop's label)."""
    if cache is None or not cache.synced.is_set():
        return None
    found = cache.get(namespace, name)
    if found is None:
        return None
    return _View(True, True, found.rv, found.filled)


def _known(cache: SecretCache | None, seen: dict[tuple[str, str], _View], key: tuple[str, str],
           name: str) -> _View | None:
    """What is known of Secret `name` (of `key`'s namespace) without a read: the cache's
    entry; else the last read or write, unless that says certop's own and the synced cache
    does not hold it (deleted or relabelled since: certop's writes go into the cache)."""
    cached = _cached_view(cache, key[0], name)
    if cached is not None:
        return cached
    last = seen.get(key)
    if last is not None and last.exists and last.owned and cache is not None and \
            cache.synced.is_set():
        return None
    return last


def _put(cache: SecretCache | None, api: client.CoreV1Api, namespace: str, name: str,
         written: Any) -> None:
    """certop's write into the cache (write-through: a look right after it sees it)."""
    if cache is not None and hasattr(written, "metadata"):
        cache.put(namespace, name, api.api_client.sanitize_for_serialization(written))


def _pair(found: CachedSecret | None) -> StoredCert | None:
    if found is None or found.type != TLS_TYPE or found.tls_crt is None or \
            found.tls_key is None:
        return None
    return StoredCert(found.tls_crt, found.tls_key)


class _Stale(Exception):
    """The write found the Secret other than certop last saw it."""


def _stale(exc: ApiException) -> bool:
    return exc.status in (404, 409)


class SecretCertStore:
    """`kubernetes.io/tls` Secrets. With a synced `SecretCache` (the operator), a look reads
    the cache (the watch shows a deleted or replaced Secret) and an attempt reads a Secret
    the cache does not hold once by name (absent, or someone else's); without one, reads
    ask the API server. A write goes by what the cache or the last read or write saw
    (`_View`) and reads first only when that turns out stale."""

    def __init__(self, api: client.CoreV1Api, timeout: float = 10.0,
                 cache: SecretCache | None = None) -> None:
        self.api = api
        self.timeout = timeout
        self.cache = cache
        self._seen: dict[tuple[str, str], _View] = {}

    def forget(self, namespace: str, name: str) -> None:
        """The certificate is gone: drop what was seen of its Secret."""
        self._seen.pop((namespace, name), None)

    def _read(self, namespace: str, name: str) -> Any | None:
        try:
            secret = self.api.read_namespaced_secret(name, namespace,
                                                     _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                self._seen[(namespace, name)] = _View(False)
                return None
            raise TemporaryError(f"reading Secret {namespace}/{name}: HTTP {exc.status}") from exc
        self._seen[(namespace, name)] = _view(secret)
        return secret

    def load(self, namespace: str, name: str) -> StoredCert | None:
        if self.cache is not None and self.cache.synced.is_set():
            return _pair(self.cache.get(namespace, name))
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
        """True: ours; False: someone else's; None: no such Secret (as last seen: the write
        that follows checks again)."""
        seen = _known(self.cache, self._seen, (namespace, name), name)
        if seen is None:
            self._read(namespace, name)
            seen = self._seen[(namespace, name)]
        return seen.owned if seen.exists else None

    def save(self, namespace: str, name: str, cert: StoredCert) -> None:
        data: dict[str, bytes | str] = {"tls.crt": _b64(cert.fullchain_pem),
                                        "tls.key": _b64(cert.key_pem)}
        root = crypto.root_of(cert.fullchain_pem)
        if root is not None:
            data["ca.crt"] = _b64(root)
        key = (namespace, name)
        seen = _known(self.cache, self._seen, key, name)
        if seen is None:
            self._read(namespace, name)
            seen = self._seen[key]
        try:
            self._write(namespace, name, seen, data)
        except _Stale:
            self._read(namespace, name)  # once: what is there now decides
            try:
                self._write(namespace, name, self._seen[key], data)
            except _Stale as exc:
                raise TemporaryError(f"Secret {namespace}/{name} changed while certop was "
                                     "writing it; will look again") from exc

    def _write(self, namespace: str, name: str, seen: _View,
               data: Mapping[str, bytes | str]) -> None:
        if not seen.exists:
            body = client.V1Secret(
                api_version="v1", kind="Secret", type=TLS_TYPE, data=dict(data),
                metadata=client.V1ObjectMeta(name=name, namespace=namespace,
                                             labels={MANAGED_LABEL: "true"}),
            )
            written = _call(lambda: self.api.create_namespaced_secret(
                namespace, body, _request_timeout=self.timeout),
                f"creating Secret {namespace}/{name}")
        else:
            if not seen.owned:
                raise SecretNotOwned(namespace, name)
            metadata: dict[str, Any] = {"resourceVersion": seen.rv} if seen.rv else {}
            # A null ca.crt removes one a chain with its root left behind.
            written = _call(lambda: self.api.patch_namespaced_secret(
                name, namespace, {"metadata": metadata, "data": {"ca.crt": None, **data}},
                _request_timeout=self.timeout), f"updating Secret {namespace}/{name}")
        self._seen[(namespace, name)] = _view(written) if hasattr(written, "metadata") \
            else _View(True, True)
        _put(self.cache, self.api, namespace, name, written)


def _call(write: Callable[[], _T], what: str) -> _T:
    """A write: 404/409 mean certop's view was stale (`_Stale`); other errors are temporary."""
    try:
        return write()
    except ApiException as exc:
        if _stale(exc):
            raise _Stale(what) from exc
        raise TemporaryError(f"{what}: HTTP {exc.status}") from exc


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

    def __init__(self, api: client.CoreV1Api, timeout: float = 10.0,
                 cache: SecretCache | None = None) -> None:
        self.api = api
        self.timeout = timeout
        self.cache = cache
        """certop's Secrets as the watch has them: a write goes by it, without a read."""
        self._seen: dict[tuple[str, str], _View] = {}
        """By (namespace, certificate Secret name): the journal as last read or written."""

    def forget(self, namespace: str, name: str) -> None:
        self._seen.pop((namespace, name), None)

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
                self._seen[(namespace, name)] = _View(False)
                return None
            raise TemporaryError(f"reading the order journal of {namespace}/{name}: HTTP "
                                 f"{exc.status}") from exc
        self._seen[(namespace, name)] = _view(secret)
        if not self._seen[(namespace, name)].owned:
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

    def _seen_or_read(self, namespace: str, name: str) -> _View:
        seen = _known(self.cache, self._seen, (namespace, name), self._name(name))
        if seen is None and self.cache is not None and self.cache.synced.is_set():
            # Not among certop's Secrets: created (a 409, someone else's, reads it once).
            seen = _View(False)
        if seen is None:
            self._read(namespace, name)
            seen = self._seen[(namespace, name)]
        return seen

    def _write(self, namespace: str, name: str, order: str | None) -> None:
        """Make the journal hold `order` (None: empty), by what was last seen of it; read
        once and decide again when that was stale."""
        seen = self._seen_or_read(namespace, name)
        for last in (False, True):
            try:
                self._write_seen(namespace, name, seen, order)
                return
            except _Stale as exc:
                if last:
                    raise TemporaryError(f"the order journal of {namespace}/{name} changed "
                                         "while certop was writing it") from exc
                self._read(namespace, name)  # once: what is there now decides
                seen = self._seen[(namespace, name)]

    def _write_seen(self, namespace: str, name: str, seen: _View, order: str | None) -> None:
        what = f"writing the order journal of {namespace}/{name}"
        if not seen.exists:
            if order is None:
                return
            body = client.V1Secret(api_version="v1", kind="Secret", type="Opaque",
                                   data={"order": order},
                                   metadata=client.V1ObjectMeta(
                                       name=self._name(name), namespace=namespace,
                                       labels={MANAGED_LABEL: "true"}))
            written = _call(lambda: self.api.create_namespaced_secret(
                namespace, body, _request_timeout=self.timeout), what)
        else:
            if not seen.owned:
                raise SecretNotOwned(namespace, self._name(name))
            if order is None and not seen.filled:
                return  # empty already
            metadata: dict[str, Any] = {"resourceVersion": seen.rv} if seen.rv else {}
            written = _call(lambda: self.api.patch_namespaced_secret(
                self._name(name), namespace, {"metadata": metadata, "data": {"order": order}},
                _request_timeout=self.timeout), what)
        self._seen[(namespace, name)] = _view(written) if hasattr(written, "metadata") \
            else _View(True, True, None, order is not None)
        _put(self.cache, self.api, namespace, self._name(name), written)

    def save(self, namespace: str, name: str, entry: dict[str, Any]) -> None:
        self._write(namespace, name, _b64(json.dumps(entry).encode()))

    def clear(self, namespace: str, name: str) -> None:
        self._write(namespace, name, None)

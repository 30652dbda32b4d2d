"""The Ingress shim's kopf handlers: thin, they read, call `core.shim.plan`, and apply.

Registered into a given registry (no global one) with an injected `ApiClient`, so tests point
them at the emulator and production at the cluster. Status-free: an event handler on Ingresses
(kopf writes nothing to users' Ingresses: no annotation, no finalizer), and the Certificates it
plans against come from the watch-fed `CertificateCache` (one LIST per namespace at first use,
then the Certificate watch), never a LIST per event. The work runs in a thread, where the
blocking `kubernetes` client belongs; an event whose writes fail is planned again after a
backoff (kopf does not retry event handlers), a newer event of the same Ingress replacing it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Mapping, Sequence
from typing import Any, cast

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from certop.core.annotations import CLUSTER_ISSUER, ISSUER, TLS_ACME
from certop.core.backoff import Backoff
from certop.core.desired import certificate_specs
from certop.core.errors import ConfigError
from certop.core.ingress import parse_ingress
from certop.core.models import CertificateSpec
from certop.core.shim import API_VERSION, Act, Action, Owner, plan
from certop.k8s.cache import CertificateCache

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "certop.dev", "v1", "certificates"
HANDLED_ANNOTATION = "kopf.zalando.org/last-handled-configuration"
"""What kopf's changing handlers of certop before 0.2 left on Ingresses (they are still
followed: one that stops asking loses its Certificates)."""


class _Stale(Exception):
    """A write found the cache behind the API server (409 or 404): re-read, plan again."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Shim:
    def __init__(self, api: client.ApiClient, default_issuer: str | None = None,
                 cache: CertificateCache | None = None, backoff: Backoff | None = None
                 ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.default_issuer = default_issuer
        self.cache = cache if cache is not None else CertificateCache()
        self.backoff = backoff or Backoff(base=1.0, cap=300.0)
        self._pending: dict[str, tuple[str | None, dict[str, Any]]] = {}
        """Ingresses whose last event failed: (event type, body), planned again later."""
        self._failures: dict[str, int] = {}
        self._filling = threading.Lock()
        self._retrying: set[asyncio.Future[None]] = set()

    def asks(self, annotations: Mapping[str, str], uid: str = "", **_: Any) -> bool:
        """kopf's filter: only Ingresses that ask for certop (its issuer annotations,
        cert-manager's, or kubernetes.io/tls-acme with --default-issuer), or that own a
        Certificate (so one that stops asking loses its Certificates)."""
        if any(annotations.get(name) for name in (*CLUSTER_ISSUER, *ISSUER)):
            return True
        if self.default_issuer and str(annotations.get(TLS_ACME, "")).lower() == "true":
            return True
        return HANDLED_ANNOTATION in annotations or self.cache.owns_any(uid)

    def register(self, registry: kopf.OperatorRegistry) -> None:
        kopf.on.event("networking.k8s.io", "v1", "ingresses", registry=registry, id="shim",
                      when=self.asks)(self.on_event)
        kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="certificate-cache")(
            self.on_certificate)

    async def on_certificate(self, type: str | None, body: kopf.Body, **_: Any) -> None:
        self.cache.observe(type, body)

    async def on_event(self, type: str | None, body: kopf.Body, uid: str, **_: Any) -> None:
        """One Ingress event (None: kopf's initial listing). A failure is logged and the
        latest event of that Ingress planned again after a backoff."""
        seen = (type, dict(body))
        self._pending.pop(uid, None)
        try:
            await asyncio.to_thread(self._handle, *seen)
        except (ApiException, _Stale, OSError) as exc:
            failures = self._failures[uid] = self._failures.get(uid, 0) + 1
            delay = self.backoff.delay(failures, random.random())
            meta = seen[1].get("metadata") or {}
            log.warning("Ingress %s/%s: Certificates not updated (%s); again in %.0fs",
                        meta.get("namespace"), meta.get("name"), _why(exc), delay)
            self._pending[uid] = seen
            asyncio.get_running_loop().call_later(delay, self._again, uid)
        else:
            self._failures.pop(uid, None)

    def _again(self, uid: str) -> None:
        seen = self._pending.pop(uid, None)  # gone: a newer event has been handled
        if seen is not None:
            task = asyncio.ensure_future(self.on_event(seen[0], cast(kopf.Body, seen[1]), uid))
            self._retrying.add(task)
            task.add_done_callback(self._retrying.discard)

    def _handle(self, type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        owner = Owner(meta["name"], meta["uid"])
        if type == "DELETED":
            self._apply(body, owner, meta["namespace"], [])
            return
        try:
            ingress = parse_ingress(dict(body))
            desired = certificate_specs([ingress], None, self.default_issuer,
                                        require_annotation=True).specs
        except ConfigError as exc:
            kopf.warn(cast(Any, dict(body)), reason="InvalidIngress",
                      message=f"{exc.field}: {exc.expected}")
            return
        self._apply(body, owner, meta["namespace"], desired, ingress.ingress_class)

    def _existing(self, namespace: str, owner: Owner, names: Sequence[str]
                  ) -> dict[str, Mapping[str, Any]]:
        """What the plan looks at, from the cache (the namespace listed once, at first use)."""
        if not self.cache.filled(namespace):
            with self._filling:  # Ingress events run in parallel threads: one LIST
                if not self.cache.filled(namespace):
                    listing = cast(dict[str, Any], self.custom.list_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL))
                    self.cache.fill(namespace, listing.get("items", []))
        return self.cache.for_owner(namespace, owner.uid, names)

    def _apply(self, body: Mapping[str, Any], owner: Owner, namespace: str,
               desired: Sequence[CertificateSpec], ingress_class: str | None = None) -> None:
        names = [spec.secret_name for spec in desired]
        try:
            self._carry_out(body, owner, namespace, names, desired, ingress_class)
        except _Stale as stale:
            # The cache was behind: read that one Certificate, plan once more.
            self._reread(namespace, stale.name)
            self._carry_out(body, owner, namespace, names, desired, ingress_class)

    def _reread(self, namespace: str, name: str) -> None:
        try:
            found = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                             PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.cache.remove(namespace, name)
        else:
            self.cache.put(cast(dict[str, Any], found))

    def _carry_out(self, body: Mapping[str, Any], owner: Owner, namespace: str,
                   names: Sequence[str], desired: Sequence[CertificateSpec],
                   ingress_class: str | None) -> None:
        existing = self._existing(namespace, owner, names)
        for action in plan(owner, desired, existing, ingress_class):
            if action.act is Act.CONFLICT:  # tell both sides, change nothing
                self._conflict(body, owner, namespace, action)
                continue
            try:
                written = self._write(namespace, action)
            except ApiException as exc:
                if exc.status in (404, 409):
                    raise _Stale(action.name) from exc
                raise
            if action.act is Act.DELETE:
                self.cache.remove(namespace, action.name)
            elif isinstance(written, dict):
                self.cache.put(written)  # write-through: the next event plans on it
            log.info("Ingress %s/%s: %s Certificate %s", namespace, owner.name,
                     action.act, action.name)

    def _write(self, namespace: str, action: Action) -> object:
        if action.act is Act.CREATE:
            assert action.body is not None
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                               PLURAL, action.body)
        if action.act in (Act.UPDATE, Act.ADOPT, Act.RELEASE):
            assert action.body is not None
            return self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace,
                                                              PLURAL, action.name,
                                                              action.body)
        return self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                           action.name)

    def _conflict(self, body: Mapping[str, Any], owner: Owner, namespace: str,
                  action: Action) -> None:
        kopf.warn(cast(Any, dict(body)), reason="CertificateConflict", message=action.message)
        for other in action.others:
            ref: Any = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                        "metadata": {"name": other, "namespace": namespace}}
            kopf.warn(ref, reason="CertificateConflict",
                      message=f"Ingress {owner.name} asks for Certificate {action.name} "
                              "with other hosts or issuer")


def _why(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}"
    if isinstance(exc, _Stale):
        return f"Certificate {exc.name} changed meanwhile, twice"
    return str(exc) or type(exc).__name__


__all__ = ["API_VERSION", "Shim"]

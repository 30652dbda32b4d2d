"""The Ingress shim's kopf handlers: thin, they read, call `core.shim.plan`, and apply.

Registered into a given registry (no global one) with an injected `ApiClient`, so tests point
them at the emulator and production at the cluster. The handlers are sync: kopf runs them in
its executor, where the blocking `kubernetes` client belongs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from certop.core.annotations import CLUSTER_ISSUER, ISSUER, TLS_ACME
from certop.core.desired import certificate_specs
from certop.core.errors import ConfigError
from certop.core.ingress import parse_ingress
from certop.core.shim import API_VERSION, Act, Owner, plan

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "certop.dev", "v1", "certificates"
HANDLED_ANNOTATION = "kopf.zalando.org/last-handled-configuration"
"""kopf's record of the last handled state (its default diff-base storage)."""


class Shim:
    def __init__(self, api: client.ApiClient, default_issuer: str | None = None) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.default_issuer = default_issuer

    def asks(self, annotations: Mapping[str, str], **_: Any) -> bool:
        """kopf's filter: only Ingresses that ask for certop (its issuer annotations,
        cert-manager's, or kubernetes.io/tls-acme with --default-issuer), or that kopf handled
        before (so one that stops asking loses its Certificates). kopf neither annotates nor
        tells events about any other Ingress."""
        if any(annotations.get(name) for name in (*CLUSTER_ISSUER, *ISSUER)):
            return True
        if self.default_issuer and str(annotations.get(TLS_ACME, "")).lower() == "true":
            return True
        return HANDLED_ANNOTATION in annotations

    def register(self, registry: kopf.OperatorRegistry) -> None:
        ingresses = ("networking.k8s.io", "v1", "ingresses")
        when = self.asks
        kopf.on.create(*ingresses, registry=registry, id="shim", when=when)(self.on_ingress)
        kopf.on.update(*ingresses, registry=registry, id="shim", when=when)(self.on_ingress)
        kopf.on.resume(*ingresses, registry=registry, id="shim", when=when)(self.on_ingress)
        # Optional: no finalizer on users' Ingresses; ownerReferences let the API server's
        # garbage collector do the same when certop is not running.
        kopf.on.delete(*ingresses, registry=registry, id="shim-delete", when=when,
                       optional=True)(self.on_ingress_deleted)

    def _existing(self, namespace: str) -> dict[str, Mapping[str, Any]]:
        listing = cast(dict[str, Any], self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL))
        return {item["metadata"]["name"]: item for item in listing.get("items", [])}

    def on_ingress(self, body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        owner = Owner(meta["name"], meta["uid"])
        try:
            ingress = parse_ingress(dict(body))
            desired = certificate_specs([ingress], None, self.default_issuer,
                                        require_annotation=True).specs
        except ConfigError as exc:
            kopf.warn(body, reason="InvalidIngress", message=f"{exc.field}: {exc.expected}")
            return
        self._apply(body, owner, meta["namespace"], desired, ingress.ingress_class)

    def on_ingress_deleted(self, body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        self._apply(body, Owner(meta["name"], meta["uid"]), meta["namespace"], [])

    def _apply(self, body: kopf.Body, owner: Owner, namespace: str, desired: Any,
               ingress_class: str | None = None) -> None:
        for action in plan(owner, desired, self._existing(namespace), ingress_class):
            try:
                if action.act is Act.CREATE:
                    assert action.body is not None
                    self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                PLURAL, action.body)
                elif action.act in (Act.UPDATE, Act.ADOPT, Act.RELEASE):
                    assert action.body is not None
                    self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace,
                                                               PLURAL, action.name,
                                                               action.body)
                elif action.act is Act.DELETE:
                    self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                PLURAL, action.name)
                else:  # a conflict: tell both sides, change nothing
                    kopf.warn(body, reason="CertificateConflict", message=action.message)
                    for other in action.others:
                        ref: Any = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                                    "metadata": {"name": other, "namespace": namespace}}
                        kopf.warn(ref,
                                  reason="CertificateConflict",
                                  message=f"Ingress {owner.name} asks for Certificate "
                                          f"{action.name} with other hosts or issuer")
                    continue
            except ApiException as exc:
                if exc.status in (404, 409):
                    raise kopf.TemporaryError(f"{action.act} Certificate {action.name}: "
                                              f"HTTP {exc.status}", delay=1) from exc
                raise
            log.info("Ingress %s/%s: %s Certificate %s", namespace, owner.name,
                     action.act, action.name)


__all__ = ["API_VERSION", "Shim"]

"""HTTP-01 in a cluster: a temporary Ingress routes the challenge path to certop's responder.

For each pending challenge an Ingress is created in the certificate's namespace: host = the
identifier, one `Exact` path `/.well-known/acme-challenge/<token>` (or ImplementationSpecific
by issuer option), the class of the source Ingress or the issuer's override, and as backend
certop's responder Service. No solver pods. The token itself is served by certop's responder
from the token store, and the self-check asks that responder directly. `cleanup` deletes the
Ingress; it is called on every exit path.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from certop.core.errors import TemporaryError
from solvers.base import Challenge
from solvers.http01.solver import Http01Solver
from solvers.http01.tokens import CHALLENGE_PATH

log = logging.getLogger(__name__)
TOKEN_LABEL = "certop.dev/http01-solver"
KEY_AUTHORIZATION = "certop.dev/http01-key-authorization"
"""Annotation of the temporary Ingress: the key authorization to serve (public: it is what
the CA fetches), so that every replica of certop's own proxy answers the challenge itself,
whichever replica the CA's request reaches."""


def temporary_ingress(namespace: str, host: str, token: str, service: str, port: int,
                      ingress_class: str | None, path_type: str = "Exact",
                      key_authorization: str | None = None) -> dict[str, Any]:
    """The temporary Ingress for one challenge (pure)."""
    name = "certop-http01-" + hashlib.sha256(f"{host}/{token}".encode()).hexdigest()[:12]
    spec: dict[str, Any] = {"rules": [{"host": host, "http": {"paths": [{
        "path": CHALLENGE_PATH + token, "pathType": path_type,
        "backend": {"service": {"name": service, "port": {"number": port}}}}]}}]}
    if ingress_class:
        spec["ingressClassName"] = ingress_class
    metadata: dict[str, Any] = {"name": name, "namespace": namespace,
                                "labels": {TOKEN_LABEL: "true"}}
    if key_authorization is not None:
        metadata["annotations"] = {KEY_AUTHORIZATION: key_authorization}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata,
            "spec": spec}


class IngressSolver:
    challenge_type = "http-01"

    def __init__(self, local: Http01Solver, api: client.ApiClient, namespace: str,
                 service: str, port: int, ingress_class: str | None,
                 path_type: str = "Exact") -> None:
        self.local = local
        self.net = client.NetworkingV1Api(api)
        self.namespace = namespace
        self.service = service
        self.port = port
        self.ingress_class = ingress_class
        self.path_type = path_type
        self.created: dict[str, str] = {}  # token -> Ingress name

    def present(self, challenge: Challenge) -> None:
        self.local.present(challenge)
        identifier, token = challenge.identifier, challenge.token
        body = temporary_ingress(self.namespace, identifier, token, self.service, self.port,
                                 self.ingress_class, self.path_type,
                                 challenge.key_authorization)
        name = body["metadata"]["name"]
        try:
            self.net.create_namespaced_ingress(self.namespace, cast(Any, body))
        except ApiException as exc:
            if exc.status != 409:  # 409: already there from an earlier attempt
                raise TemporaryError(f"creating the HTTP-01 Ingress for {identifier}: HTTP "
                                     f"{exc.status}") from exc
        self.created[token] = name

    def check(self, challenge: Challenge) -> bool:
        return self.local.check(challenge)

    def cleanup(self, challenge: Challenge) -> None:
        self.local.cleanup(challenge)
        identifier, token = challenge.identifier, challenge.token
        name = self.created.pop(token, None) or temporary_ingress(
            self.namespace, identifier, token, self.service, self.port, None)["metadata"]["name"]
        try:
            self.net.delete_namespaced_ingress(name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not delete HTTP-01 Ingress %s/%s: HTTP %s", self.namespace,
                            name, exc.status)

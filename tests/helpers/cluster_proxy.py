"""`certop proxy` in-process against the emulator: the proxy on free loopback ports, fed by
`ClusterSource` as the proxy's ServiceAccount (manifests/base/rbac-proxy.yaml, enforced), and
builders for the objects it serves (IngressClass, Ingress, Service, EndpointSlice, Secret).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
from collections.abc import Sequence
from typing import Any

from kube import EmulatorThread, wait_for
from kubernetes import client
from loopthread import LoopThread

from certop import crypto
from certop.k8s.ingress_source import ClusterSource, SourceSettings
from certop.k8s.ingress_status import StatusWriter, address_entries
from certop.k8s.lease import Lease
from certop.proxy.server import Proxy, ProxySettings
from certop.proxy.tls import CertBook
from solvers.http01 import TokenStore

CONTROLLER = "certop.dev/ingress-controller"


class ClusterProxy(LoopThread):
    def __init__(self, kube: EmulatorThread, settings: SourceSettings | None = None,
                 publish: str | None = None) -> None:
        """`publish`: write this address into served Ingresses' status (as
        --publish-address), holding the Lease certop/certop-proxy-status."""
        super().__init__()
        self.kube = kube
        self.publish = publish
        self.writer: StatusWriter | None = None
        self.settings = settings or SourceSettings(settle=0.01)
        self.proxy: Proxy | None = None
        self.source: ClusterSource | None = None
        self.events: list[tuple[dict[str, Any], str, str, str]] = []
        self.http_port = 0
        self.https_port = 0

    async def serve(self) -> None:
        proxy = Proxy(CertBook(), TokenStore(), ProxySettings())
        await proxy.start("127.0.0.1", 0, 0)
        self.proxy, self.http_port, self.https_port = proxy, proxy.http_port, proxy.https_port
        source = ClusterSource(self.kube.proxy_client(), proxy, self.settings, proxy.metrics,
                               events=lambda *event: self.events.append(event))  # type: ignore[arg-type]
        self.source = source
        writing = None
        if self.publish is not None:
            api = self.kube.proxy_client()
            address = address_entries(self.publish)
            self.writer = StatusWriter(api, Lease(api, "certop", "certop-proxy-status",
                                                  f"test-{id(self)}", duration=3.0),
                                       lambda: address)
            source.on_built = lambda built: self.writer.update(built.seen)  # type: ignore[union-attr]
            writing = asyncio.create_task(self.writer.run(self.stopping))
        await source.start(timeout=30)
        self.started()
        try:
            await self.stopping.wait()
        finally:
            if writing is not None:
                await writing
            source.stop()
            await proxy.close(grace=0.5)

    def rebuilds(self) -> int:
        assert self.source is not None
        return self.source.rebuilds

    def get(self, host: str, path: str = "/", port: int | None = None
            ) -> tuple[int, bytes]:
        """A plain-HTTP request through the proxy (no retries)."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.http_port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def wait_status(self, host: str, status: int, path: str = "/",
                    timeout: float = 10.0) -> bytes:
        """Until a request for `host` answers `status` (a change reached the data path)."""
        found: list[bytes] = []

        def check() -> bool:
            code, body = self.get(host, path)
            found[:] = [body]
            return code == status

        wait_for(check, timeout=timeout, what=f"{host}{path} answering {status}")
        return found[0]


def ingress_class(name: str, controller: str = CONTROLLER,
                  default: bool = False) -> dict[str, Any]:
    annotations = {"ingressclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"controller": controller}}


def ingress(name: str, host: str, service: str = "web", port: int | str = "http",
            klass: str | None = "certop", tls_secret: str | None = None,
            annotations: dict[str, str] | None = None, path: str = "/") -> dict[str, Any]:
    backend_port = {"number": port} if isinstance(port, int) else {"name": port}
    spec: dict[str, Any] = {"rules": [{"host": host, "http": {"paths": [{
        "path": path, "pathType": "Prefix",
        "backend": {"service": {"name": service, "port": backend_port}}}]}}]}
    if klass is not None:
        spec["ingressClassName"] = klass
    if tls_secret is not None:
        spec["tls"] = [{"hosts": [host], "secretName": tls_secret}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}


def service(name: str, ports: Sequence[tuple[str, int]] = (("http", 80),),
            external_name: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": n, "port": p, "targetPort": n}
                                      for n, p in ports]}
    if external_name is not None:
        spec.update(type="ExternalName", externalName=external_name)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def endpoint_slice(name: str, service_name: str, port: int, addresses: Sequence[str],
                   port_name: str = "http", ready: Sequence[bool] | None = None,
                   terminating: Sequence[bool] | None = None) -> dict[str, Any]:
    ready = ready if ready is not None else [True] * len(addresses)
    terminating = terminating if terminating is not None else [False] * len(addresses)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": r, "serving": r or t,
                                                           "terminating": t}}
                          for a, r, t in zip(addresses, ready, terminating, strict=True)]}


def tls_secret(name: str, hosts: tuple[str, ...]) -> dict[str, Any]:
    cert, key = crypto.self_signed(hosts)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64.b64encode(cert).decode(),
                     "tls.key": base64.b64encode(key).decode()}}


def create(kube: EmulatorThread, namespace: str, *objects: dict[str, Any]) -> None:
    """Create each object as the test's admin."""
    api = kube.api_client()
    core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    for obj in objects:
        kind = obj["kind"]
        if kind == "IngressClass":
            net.create_ingress_class(obj)
        elif kind == "Ingress":
            net.create_namespaced_ingress(namespace, obj)
        elif kind == "Service":
            core.create_namespaced_service(namespace, obj)
        elif kind == "EndpointSlice":
            discovery.create_namespaced_endpoint_slice(namespace, obj)
        elif kind == "Secret":
            core.create_namespaced_secret(namespace, obj)
        else:
            raise ValueError(kind)

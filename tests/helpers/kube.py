"""kmock's Kubernetes emulator on its own event loop in a thread, so that blocking code (the
`kubernetes` client, store adapters) can talk to it from the test thread. Loopback only."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock
import kopf
import yaml
from kmock_ext import ADMIN_TOKEN, OPERATOR_TOKEN, PROXY_TOKEN, RBAC_RESOURCES, Emulator, apply
from kubernetes import client
from loopthread import LoopThread

from certop.k8s.operator import configure_kopf

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
RBAC_MANIFESTS = {
    # ServiceAccount certop: the operator's roles; certop-proxy: the proxy's.
    "split": (MANIFESTS / "base" / "rbac.yaml", MANIFESTS / "base" / "rbac-proxy.yaml",
              MANIFESTS / "split" / "serviceaccounts.yaml"),
    # ServiceAccount certop (`certop run`): both.
    "all-in-one": (MANIFESTS / "base" / "rbac.yaml", MANIFESTS / "base" / "rbac-proxy.yaml",
                   MANIFESTS / "all-in-one" / "serviceaccount.yaml"),
}
"""The RBAC files of each layout of manifests/ (its roles and its ServiceAccounts' bindings)."""


def rbac_documents(layout: str = "split") -> list[dict[str, Any]]:
    """The Roles, ServiceAccounts and bindings of a layout of manifests/, as
    `kubectl apply -k manifests/LAYOUT` applies them. "split" (the default) binds
    ServiceAccount certop (`OPERATOR_TOKEN`) to the operator's roles and certop-proxy
    (`PROXY_TOKEN`) to the proxy's; "all-in-one" binds certop to both (`certop run`)."""
    return [d for path in RBAC_MANIFESTS[layout]
            for d in yaml.safe_load_all(path.read_text()) if d]

VERBS = ["get", "list", "watch", "create", "patch", "delete"]
# Discovery for what certop uses, plus v1/namespaces (without it kopf silently never watches).
RESOURCES: dict[str, dict[str, Any]] = {
    "v1/secrets": {"kind": "Secret", "namespaced": True, "verbs": VERBS},
    "v1/namespaces": {"kind": "Namespace", "namespaced": False, "verbs": VERBS},
    "v1/events": {"kind": "Event", "namespaced": True, "verbs": VERBS},
    "networking.k8s.io/v1/ingresses": {"kind": "Ingress", "namespaced": True, "verbs": VERBS,
                                       "subresources": ["status"]},
    "networking.k8s.io/v1/ingressclasses": {"kind": "IngressClass", "namespaced": False,
                                            "verbs": VERBS},
    "v1/services": {"kind": "Service", "namespaced": True, "verbs": VERBS},
    "discovery.k8s.io/v1/endpointslices": {"kind": "EndpointSlice", "namespaced": True,
                                           "verbs": VERBS},
    "certop.dev/v1/certificates": {"kind": "Certificate", "namespaced": True,
                                   "verbs": VERBS, "subresources": ["status"]},
    "certop.dev/v1/clusterissuers": {"kind": "ClusterIssuer", "namespaced": False,
                                     "verbs": VERBS, "subresources": ["status"]},
    "certop.dev/v1/issuers": {"kind": "Issuer", "namespaced": True, "verbs": VERBS,
                              "subresources": ["status"]},
    "coordination.k8s.io/v1/leases": {"kind": "Lease", "namespaced": True, "verbs": VERBS},
    "v1/serviceaccounts": {"kind": "ServiceAccount", "namespaced": True, "verbs": VERBS},
    **RBAC_RESOURCES,
}


class EmulatorThread(LoopThread):
    """The emulator with the RBAC of a layout of manifests/ applied and enforced (`layout`,
    default the split one's: `rbac_documents`): clients from `operator_client()` (and
    `OperatorThread`) are ServiceAccount certop, `proxy_client()` certop-proxy, the others
    are the test's admin. Leaving the block fails the test if any request was refused (set
    `denials_expected` when refusals are the point)."""

    def __init__(self, resources: dict[str, dict[str, Any]] | None = None,
                 bundled: bool = False, rbac: bool = True, layout: str = "split") -> None:
        super().__init__()
        self.resources = resources or RESOURCES
        self.bundled = bundled
        """Also declare kmock's bundled built-in resources (what kubectl apply needs)."""
        self.rbac = rbac
        """Apply the layout's RBAC at start (else only the admin can do anything)."""
        self.layout = layout
        """Whose RBAC: "split" (certop and certop-proxy each its own roles) or "all-in-one"
        (certop bound to both, `certop run`'s)."""
        self.denials_expected = False
        self.url = ""
        self.emulator: Any = None

    async def serve(self) -> None:
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            if self.bundled:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    emulator.resources.load_bundled()
            for resource, info in self.resources.items():
                emulator.resources[resource] = info
            if self.rbac:
                await apply(emulator, rbac_documents(self.layout))
            self.emulator = emulator
            self.url = f"http://{server.host}:{server.port}"
            self.started()
            await self.stopping.wait()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        denied = list(self.emulator.denied) if self.emulator is not None else []
        if exc[0] is None and denied and not self.denials_expected:
            raise AssertionError(f"the emulator refused {len(denied)} request(s) under "
                                 f"the {self.layout} RBAC of manifests/, first: {denied[0]}")

    def interrupt_watches(self, how: str) -> int:
        """End every open watch: `gone` (410 Gone) or `cut` (the connection breaks)."""
        future = asyncio.run_coroutine_threadsafe(self._interrupt(how), self.loop)
        return future.result(10)

    async def _interrupt(self, how: str) -> int:
        return int(self.emulator.interrupt_watches(how))

    def set_unavailable(self, down: bool) -> None:
        """Drop every request (an API server that went away) until called with False; the
        open watches are cut at once."""
        async def change() -> None:
            self.emulator.unavailable = down
            if down:
                self.emulator.interrupt_watches("cut")
        asyncio.run_coroutine_threadsafe(change(), self.loop).result(10)

    def api_client(self, token: str = ADMIN_TOKEN) -> client.ApiClient:
        """A client as the test's admin (granted everything)."""
        config = client.Configuration()
        config.host = self.url
        if token:
            config.api_key = {"authorization": token}
            config.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(config)

    def operator_client(self) -> client.ApiClient:
        """A client as ServiceAccount certop (split: what manifests/base/rbac.yaml grants)."""
        return self.api_client(OPERATOR_TOKEN)

    def proxy_client(self) -> client.ApiClient:
        """A client as ServiceAccount certop-proxy (split: manifests/base/rbac-proxy.yaml)."""
        return self.api_client(PROXY_TOKEN)

    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client())

    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client())


class OperatorThread:
    """`kopf.operator()` with a given registry, on its own loop in a thread, logged in to the
    emulator through a login handler (no test-only code in certop itself)."""

    def __init__(self, registry: kopf.OperatorRegistry, url: str, posting: bool = False) -> None:
        self.registry = registry
        self.url = url
        self.stop_flag: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.thread = threading.Thread(target=self._run, daemon=True)

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True, scheme="Bearer",
                                       token=OPERATOR_TOKEN)

        @kopf.on.startup(registry=registry)
        def quiet(settings: kopf.OperatorSettings, **_: Any) -> None:
            configure_kopf(settings)  # as `certop operator` does
            settings.posting.enabled = posting
            settings.watching.server_timeout = 10

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # kopf warns that OS signals are not ours here
            loop.run_until_complete(kopf.operator(registry=self.registry, clusterwide=True,
                                                  standalone=True, stop_flag=self.stop_flag))
        loop.close()

    def __enter__(self) -> OperatorThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set_result(None)
        self.thread.join(30)


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Until `check()` holds: the condition is re-checked, never assumed after a delay."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)

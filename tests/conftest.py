"""Shared fixtures: a real Pebble per session, in-process standalone runs, TLS clients.

Rules: everything listens on loopback; servers are stopped by the handle that started them;
no test sleeps to wait for something, it waits for the condition itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pebblectl
import podmanctl
import pytest
from fakeclock import FakeClock

from certop.core.backoff import Backoff
from certop.core.clock import Clock
from certop.core.models import AcmeIssuer, ObjectRef
from certop.proxy.server import Proxy
from certop.standalone import wiring
from certop.standalone.runner import Standalone, StandaloneSettings


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in leaked:
        task.cancel()
    assert not leaked, f"test leaked asyncio tasks: {leaked}"


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pebblectl.PebbleInfo]:
    """One Pebble for the session; certop's HTTP port for HTTP-01 is `info.http_port`."""
    workdir = tmp_path_factory.mktemp("pebble")
    with pebblectl.running(workdir, http_port=pebblectl.free_port()) as info:
        yield info


# tests/image: one `make image` build and one podman store for the session (here and not in a
# tests/image/conftest.py, which would shadow this module for `from conftest import ...`).
@pytest.fixture(scope="session")
def image_builds(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[podmanctl.Built, Future[podmanctl.Built]]]:
    """Two `make image` runs of this commit: the first waited for, the second (only compared
    with it, for reproducibility) built meanwhile on the other core."""
    with ThreadPoolExecutor(1) as pool:
        again = pool.submit(podmanctl.make_image, tmp_path_factory.mktemp("image-again"))
        try:
            yield podmanctl.make_image(tmp_path_factory.mktemp("image")), again
        finally:
            again.result()


@pytest.fixture(scope="session")
def built(image_builds: tuple[podmanctl.Built, Future[podmanctl.Built]]) -> podmanctl.Built:
    return image_builds[0]


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory,
           built: podmanctl.Built) -> Iterator[podmanctl.Podman]:
    """A podman store of the session's own with the built image loaded."""
    store = podmanctl.Podman(tmp_path_factory.mktemp("podman"))
    try:
        loaded = store("load", "--input", str(built.archive))
        assert f"Loaded image: {podmanctl.IMAGE}" in loaded.stdout + loaded.stderr, loaded
        yield store
    finally:
        store.close()


@pytest.fixture(scope="session")
def pebble_root(pebble: pebblectl.PebbleInfo) -> str:
    return pebble.root_pem()


@dataclass
class Running:
    runner: Standalone
    proxy: Proxy
    http_port: int
    https_port: int
    state_dir: Path
    task: asyncio.Task[None]
    stop: asyncio.Event


class LoopbackHTTPS(http.client.HTTPSConnection):
    """HTTPS to a host name (SNI, verification, Host header) over a loopback connection."""

    def __init__(self, host: str, port: int, root_pem: str, timeout: float = 10) -> None:
        super().__init__(host, port, context=ssl.create_default_context(cadata=root_pem),
                         timeout=timeout)

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]

    def get(self, path: str = "/") -> tuple[int, bytes]:
        self.request("GET", path)
        resp = self.getresponse()
        return resp.status, resp.read()

    def peer_serial(self) -> int:
        assert self.sock is not None
        der = self.sock.getpeercert(binary_form=True)
        from cryptography import x509

        return x509.load_der_x509_certificate(der).serial_number


def https_request(port: int, host: str, root_pem: str, path: str = "/") -> tuple[int, bytes]:
    """(status, body) of one HTTPS request for `host`, verified against `root_pem`."""
    conn = LoopbackHTTPS(host, port, root_pem)
    try:
        return conn.get(path)
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def standalone(
    pebble: pebblectl.PebbleInfo,
    state_dir: Path,
    files: list[Path],
    services: list[str],
    clock: Clock | None = None,
    watch_interval: float = 0.05,
    http_port: int | None = None,
    directory_url: str | None = None,
    cli_issuer: bool = True,
    backoff: Backoff | None = None,
    validation_timeout: float = 600.0,
) -> AsyncIterator[Running]:
    """certop standalone in this process (same code path as the CLI), on free ports."""
    http_port = http_port or pebble.http_port
    https_port = pebblectl.free_port()
    issuer = AcmeIssuer(ObjectRef("ClusterIssuer", "", "default", "test"),
                        directory_url or pebble.directory_url, "test@certop.test")
    settings = StandaloneSettings(
        files=tuple(files), state_dir=state_dir, services=tuple(services),
        cli_issuer=issuer if cli_issuer else None,
        ca_bundle=Path(pebble.api_ca), watch_interval=watch_interval,
        self_check_addr=("127.0.0.1", http_port), validation_timeout=validation_timeout,
    )
    async with wiring.standalone(settings, "127.0.0.1", http_port, https_port,
                                 clock=clock, backoff=backoff) as wired:
        stop = asyncio.Event()
        task = asyncio.create_task(wired.runner.run(stop))
        try:
            yield Running(wired.runner, wired.proxy, http_port, https_port, state_dir, task,
                          stop)
        finally:
            stop.set()
            await task


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()

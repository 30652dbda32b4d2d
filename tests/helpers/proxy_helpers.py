"""Helpers for proxy tests: serve manifests in-process with user-supplied certificates."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from certop import crypto
from certop.proxy.server import Proxy, ProxySettings
from certop.standalone import wiring
from certop.standalone.runner import Standalone, StandaloneSettings
from certop.store.ports import StoredCert


@dataclass
class Served:
    runner: Standalone
    proxy: Proxy
    http_port: int
    https_port: int
    manifest: Path


def self_signed_files(directory: Path, name: str, hosts: tuple[str, ...]) -> tuple[Path, Path]:
    cert, key = crypto.self_signed(hosts)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return cert_path, key_path


@contextlib.asynccontextmanager
async def serving(tmp: Path, manifests: str, services: list[str],
                  certificates: list[str] | None = None, hsts: bool = False,
                  proxy_settings: ProxySettings | None = None,
                  default: StoredCert | None = None) -> AsyncIterator[Served]:
    manifest = tmp / "manifests.yaml"
    manifest.write_text(manifests)
    settings = StandaloneSettings(files=(manifest,), state_dir=tmp / "state",
                                  services=tuple(services),
                                  certificates=tuple(certificates or ()), hsts=hsts,
                                  watch_interval=0.05)
    async with wiring.standalone(settings, "127.0.0.1", 0, 0, proxy_settings=proxy_settings,
                                 default_certificate=default, grace=1.0) as wired:
        stop = asyncio.Event()
        task = asyncio.create_task(wired.runner.run(stop))
        try:
            yield Served(wired.runner, wired.proxy, wired.proxy.http_port,
                         wired.proxy.https_port, manifest)
        finally:
            stop.set()
            await task


def client_context(cafile: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx

"""Standalone mode against a real Pebble: issue, serve, restart, crash, renew, fail, reload."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pebblectl
import pytest
from conftest import LoopbackHTTPS, https_request, standalone
from echo import Echo
from fakeclock import FakeClock
from gate import Gate
from manifest_yaml import write_ingress

from certop import crypto
from certop.core.backoff import Backoff
from certop.store.files import FileCertStore
from certop.store.ports import StoredCert

HOST = "web.certop.test"


@pytest.fixture
def backend() -> Iterator[Echo]:
    with Echo("web") as echo:
        yield echo


class CertopProcess:
    """`certop standalone` as a real subprocess, logging to a file."""

    def __init__(self, tmp: Path, pebble: pebblectl.PebbleInfo, files: list[Path],
                 services: list[str], http_port: int, state: Path, name: str = "certop",
                 extra: list[str] | None = None) -> None:
        self.https_port = pebblectl.free_port()
        self.log = tmp / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = self._start(out, pebble, files, services, http_port, state,
                                    extra or [])

    def _start(self, out: object, pebble: pebblectl.PebbleInfo, files: list[Path],
               services: list[str], http_port: int, state: Path,
               extra: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "certop.cli", "standalone",
             *[a for f in files for a in ("-f", str(f))],
             "--acme-directory", pebble.directory_url, "--acme-ca-bundle", pebble.api_ca,
             "--email", "test@certop.test", "--state-dir", str(state),
             "--listen", "127.0.0.1", "--http-port", str(http_port),
             "--https-port", str(self.https_port),
             *[a for s in services for a in ("--service", s)], *extra],
            stdout=out, stderr=subprocess.STDOUT,  # type: ignore[arg-type]
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_log(self, needle: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, f"certop exited: {self.text()}"
            assert time.monotonic() < deadline, f"no {needle!r} in log: {self.text()}"
            time.sleep(0.02)  # re-read the log: the condition itself is what we wait for

    def wait_https(self, host: str, root: str, timeout: float = 30) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"certop exited: {self.text()}"
            try:
                return https_request(self.https_port, host, root)
            except (OSError, http.client.HTTPException) as exc:
                assert time.monotonic() < deadline, f"{exc}: {self.text()}"
            time.sleep(0.02)  # retry: not served with a verifiable certificate yet

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=15)


def test_http01_issuance_then_https_through_the_proxy_verified_against_pebble(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, pebble_root: str, backend: Echo) -> None:
    ingress = write_ingress(tmp_path / "web.yaml", "web", [HOST], "web-tls")
    certop = CertopProcess(tmp_path, pebble, [ingress], [f"web=127.0.0.1:{backend.port}"],
                           pebble.http_port, tmp_path / "state")
    try:
        status, body = certop.wait_https(HOST, pebble_root)
        assert status == 200
        seen = json.loads(body)
        assert seen["service"] == "web"
        assert seen["headers"]["host"] == f"{HOST}:{certop.https_port}"
        assert seen["headers"]["x-forwarded-proto"] == "https"
        # Plain HTTP redirects to HTTPS with 308, except ACME challenges.
        conn = http.client.HTTPConnection("127.0.0.1", pebble.http_port, timeout=5)
        conn.request("GET", "/shop?x=1", headers={"Host": HOST})
        resp = conn.getresponse()
        assert resp.status == 308
        assert resp.getheader("Location") == f"https://{HOST}:{certop.https_port}/shop?x=1"
        resp.read()
        conn.request("GET", "/.well-known/acme-challenge/unknown", headers={"Host": HOST})
        assert conn.getresponse().status == 200  # not redirected: routed to the backend
        conn.close()
    finally:
        assert certop.stop() == 0
    key = tmp_path / "state/certs/default/web-tls/current/tls.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"


def test_a_restart_on_the_same_state_dir_reuses_account_and_certificate(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, pebble_root: str, backend: Echo) -> None:
    ingress = write_ingress(tmp_path / "web.yaml", "web", [HOST], "web-tls")
    args = ([ingress], [f"web=127.0.0.1:{backend.port}"], pebble.http_port, tmp_path / "state")
    first = CertopProcess(tmp_path, pebble, *args, name="first")
    try:
        first.wait_https(HOST, pebble_root)
    finally:
        first.stop()
    assert "registered ACME account" in first.text() and "placed order" in first.text()
    crt = tmp_path / "state/certs/default/web-tls/current/tls.crt"
    before = crt.read_bytes()
    # As if the first run had died between storing the certificate and clearing its order
    # journal: the stored certificate is current, so the journal is done with, not resumed.
    leftover = tmp_path / "state/orders/default/web-tls.json"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_text(json.dumps({"hosts": [HOST], "order_url": "https://127.0.0.1:1/o/1"}))
    second = CertopProcess(tmp_path, pebble, *args, name="second")
    try:
        status, _ = second.wait_https(HOST, pebble_root)
        assert status == 200
    finally:
        second.stop()
    assert "registered ACME account" not in second.text()
    assert "placed order" not in second.text() and "issuing" not in second.text()
    assert crt.read_bytes() == before
    assert not leftover.exists()


def test_kill_9_mid_order_then_restart_resumes_the_same_order(
        tmp_path: Path, backend: Echo) -> None:
    certop_http = pebblectl.free_port()
    state = tmp_path / "state"
    ingress = write_ingress(tmp_path / "web.yaml", "web", [HOST], "web-tls")
    args = ([ingress], [f"web=127.0.0.1:{backend.port}"], certop_http, state)
    # Pebble validates through a gate we hold shut: the order is answered but cannot finish.
    with Gate(certop_http) as gate, pebblectl.running(tmp_path / "pebble",
                                                       http_port=gate.port) as info:
        root = info.root_pem()
        first = CertopProcess(tmp_path, info, *args, name="first")
        try:
            assert gate.arrived.wait(30), first.text()
            journal = json.loads((state / "orders/default/web-tls.json").read_text())
        finally:
            first.kill()
        order_url = journal["order_url"]
        assert order_url and f"placed order {order_url}" in first.text()
        assert not (state / "certs/default/web-tls/current").exists()

        second = CertopProcess(tmp_path, info, *args, name="second")
        try:
            second.wait_log(f"resuming order {order_url}")
            second.wait_log("presented http-01")
            gate.open()
            status, _ = second.wait_https(HOST, root)
            assert status == 200
        finally:
            second.stop()
        assert "placed order" not in second.text()
        assert not (state / "orders/default/web-tls.json").exists()


async def test_pebble_rejecting_half_the_nonces_still_issues(tmp_path: Path,
                                                             backend: Echo) -> None:
    hosts = [f"n{i}.certop.test" for i in range(3)]
    files = [write_ingress(tmp_path / f"{h}.yaml", h.split(".")[0], [h], f"{h.split('.')[0]}-tls")
             for h in hosts]
    info_http = pebblectl.free_port()
    with pebblectl.running(tmp_path / "pebble", http_port=info_http, nonce_reject=50) as info:
        async with standalone(info, tmp_path / "state", files,
                              [f"web=127.0.0.1:{backend.port}"]) as run:
            await run.runner.wait_ready(timeout=60)
            root = info.root_pem()
            for h in hosts:
                status, _ = await asyncio.to_thread(https_request, run.https_port, h, root)
                assert status == 200
            assert run.runner.stats.failures == 0


async def test_renewal_at_two_thirds_swaps_the_certificate_without_dropping_connections(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, pebble_root: str, backend: Echo) -> None:
    clock = FakeClock()
    files = [write_ingress(tmp_path / "web.yaml", "web", [HOST], "web-tls")]
    async with standalone(pebble, tmp_path / "state", files, [f"web=127.0.0.1:{backend.port}"],
                          clock=clock) as run:
        await run.runner.wait_ready()
        old = LoopbackHTTPS(HOST, run.https_port, pebble_root)
        try:
            assert (await asyncio.to_thread(old.get))[0] == 200
            first_serial = old.peer_serial()
            stored = FileCertStore(tmp_path / "state").load("default", "web-tls")
            assert stored is not None
            facts = crypto.load_pair(stored.fullchain_pem, stored.key_pem).facts
            # Just past 2/3 of the (five-year) lifetime.
            real_now = clock.now()
            clock.set(facts.not_before + (facts.not_after - facts.not_before) * 2 / 3
                      + dt.timedelta(minutes=1))
            run.runner.wake()
            await run.runner.wait_until(lambda: run.runner.stats.issued == 2)
            # Pebble's certificates all start "now": at this fake time the new one is due as
            # well. certop must notice and back off instead of ordering in a loop.
            assert "already due" in run.runner.stats.events[-1]
            clock.set(real_now)
            assert run.runner.all_ready()
            new = LoopbackHTTPS(HOST, run.https_port, pebble_root)
            try:
                assert (await asyncio.to_thread(new.get))[0] == 200
                assert new.peer_serial() != first_serial
            finally:
                new.close()
            # The connection opened before the swap still works, on its old certificate.
            assert (await asyncio.to_thread(old.get))[0] == 200
            assert old.peer_serial() == first_serial
        finally:
            old.close()
        assert run.runner.stats.issued == 2


@pytest.mark.parametrize("failure", ["unreachable", "http-500"])
async def test_an_unavailable_ca_backs_off_and_keeps_serving(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, backend: Echo, failure: str,
        caplog: pytest.LogCaptureFixture) -> None:
    port = pebblectl.free_port()
    broken: asyncio.Server | None = None
    if failure == "http-500":
        async def answer_500(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()
            writer.close()

        broken = await asyncio.start_server(answer_500, "127.0.0.1", port)
    files = [write_ingress(tmp_path / "web.yaml", "web", [HOST], "web-tls")]
    try:
        async with standalone(pebble, tmp_path / "state", files,
                              [f"web=127.0.0.1:{backend.port}"],
                              directory_url=f"http://127.0.0.1:{port}/dir") as run:
            await run.runner.wait_until(lambda: run.runner.stats.failures >= 1, timeout=30)
            assert run.task.done() is False
            # Still serving: plain HTTP answers (a redirect for this TLS host).
            status = await asyncio.to_thread(_http_status, run.http_port, HOST, "/")
            assert status == 308
            event = run.runner.stats.events[0]
            assert "next attempt in" in event and "default/web-tls" in event
    finally:
        if broken is not None:
            broken.close()
            await broken.wait_closed()


async def test_a_restart_continues_the_backoff_where_the_last_run_left_it(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, backend: Echo) -> None:
    clock = FakeClock()
    unreachable = f"http://127.0.0.1:{pebblectl.free_port()}/dir"
    files = [write_ingress(tmp_path / "web.yaml", "web", [HOST], "web-tls")]
    record = tmp_path / "state/failures/default/web-tls.json"
    async with standalone(pebble, tmp_path / "state", files, [f"web=127.0.0.1:{backend.port}"],
                          clock=clock, directory_url=unreachable) as run:
        await run.runner.wait_until(lambda: run.runner.stats.failures == 1, timeout=30)
    assert json.loads(record.read_text())["failures"] == 1
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    # Restarted at once: the rest of that backoff is waited out, no new attempt yet ...
    async with standalone(pebble, tmp_path / "state", files, [f"web=127.0.0.1:{backend.port}"],
                          clock=clock, directory_url=unreachable) as run:
        state = run.runner._states[("default", "web-tls")]
        await run.runner.wait_until(lambda: state.looks >= 1, timeout=30)
        looks = state.looks
        run.runner.wake()  # a wake (a file edit, ...) does not cut the backoff short
        await run.runner.wait_until(lambda: state.looks > looks, timeout=30)
        assert run.runner.stats.orders == 0 and run.runner.stats.failures == 0
        # ... and once it has passed, the next attempt counts on from there.
        clock.advance(dt.timedelta(hours=1))
        run.runner.wake()
        await run.runner.wait_until(lambda: run.runner.stats.failures == 1, timeout=30)
        assert "attempt 2 failed" in run.runner.stats.events[0]
    assert json.loads(record.read_text())["failures"] == 2
    # A certificate at last: the record is gone, and Ready says no failures.
    async with standalone(pebble, tmp_path / "state", files, [f"web=127.0.0.1:{backend.port}"],
                          clock=clock) as run:
        clock.advance(dt.timedelta(hours=1))
        run.runner.wake()
        await run.runner.wait_ready()
    assert not record.exists()


def _http_status(port: int, host: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["corrupt", "foreign", "expired"])
async def test_a_bad_certificate_in_the_state_dir_is_reissued_serving_the_old_meanwhile(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, pebble_root: str, backend: Echo,
        kind: str) -> None:
    state = tmp_path / "state"
    if kind == "corrupt":
        pair = StoredCert(b"-----BEGIN CERTIFICATE-----\ngarbage\n", b"not a key")
    elif kind == "foreign":
        pair = StoredCert(*crypto.self_signed(("someone-else.test",)))
    else:
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
        pair = StoredCert(*crypto.self_signed((HOST,), days=90, now=long_ago))
    FileCertStore(state).save("default", "web-tls", pair)
    files = [write_ingress(tmp_path / "web.yaml", "web", [HOST], "web-tls")]
    async with standalone(pebble, state, files, [f"web=127.0.0.1:{backend.port}"]) as run:
        # Until its replacement is ready a readable old pair is served; a corrupt one cannot be.
        assert run.proxy.certs.has(("default", "web-tls")) is (kind != "corrupt")
        await run.runner.wait_ready()
        status, _ = await asyncio.to_thread(https_request, run.https_port, HOST, pebble_root)
        assert status == 200
    assert run.runner.stats.issued == 1


async def test_edited_manifests_are_picked_up_without_a_restart(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, pebble_root: str, backend: Echo) -> None:
    path = write_ingress(tmp_path / "web.yaml", "web", [HOST], "web-tls")
    async with standalone(pebble, tmp_path / "state", [path],
                          [f"web=127.0.0.1:{backend.port}"]) as run:
        await run.runner.wait_ready()
        second = "shop.certop.test"
        write_ingress(path, "web", [HOST, second], "web-tls")
        # Make sure the edit is visible as a change even within one mtime tick.
        os.utime(path, (time.time() + 5, time.time() + 5))
        await run.runner.wait_until(
            lambda: run.runner.config is not None
            and second in run.runner.config.specs[0].hosts, timeout=30)
        await run.runner.wait_ready()
        status, _ = await asyncio.to_thread(https_request, run.https_port, second, pebble_root)
        assert status == 200
        # A broken edit is refused and the last good configuration stays in force.
        path.write_text("kind: Ingress\nmetadata: [\n")
        os.utime(path, (time.time() + 10, time.time() + 10))
        await run.runner.wait_until(lambda: run.runner.stats.reload_errors == 1, timeout=30)
        status, _ = await asyncio.to_thread(https_request, run.https_port, second, pebble_root)
        assert status == 200


async def test_an_invalid_challenge_names_the_host_and_carries_the_cas_detail(
        tmp_path: Path, backend: Echo) -> None:
    # Pebble validates on a port where nothing listens; certop's own self-check passes.
    certop_http = pebblectl.free_port()
    with pebblectl.running(tmp_path / "pebble", http_port=pebblectl.free_port()) as info:
        files = [write_ingress(tmp_path / "web.yaml", "web", [HOST], "web-tls")]
        async with standalone(info, tmp_path / "state", files,
                              [f"web=127.0.0.1:{backend.port}"], http_port=certop_http) as run:
            await run.runner.wait_until(lambda: run.runner.stats.failures == 1)
            event = run.runner.stats.events[0]
            assert f"challenge for {HOST} failed" in event
            assert "connection refused" in event.lower()
            assert "next attempt in" in event
            assert not (tmp_path / "state/orders/default/web-tls.json").exists()


def test_two_workers_share_challenges_and_certificates(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, pebble_root: str, backend: Echo) -> None:
    ingress = write_ingress(tmp_path / "web.yaml", "web", [HOST], "web-tls")
    certop = CertopProcess(tmp_path, pebble, [ingress], [f"web=127.0.0.1:{backend.port}"],
                           pebble.http_port, tmp_path / "state", extra=["--workers", "2"])
    try:
        certop.wait_log("started worker process")
        child = int(certop.text().split("started worker process ")[1].split()[0])
        # Pebble's three validation requests land on either process: both can answer.
        certop.wait_https(HOST, pebble_root)
        # New connections are spread over both processes; all must get the issued
        # certificate once the serving-only worker has picked it up from the state dir.
        deadline = time.monotonic() + 30
        streak = 0
        while streak < 20:
            assert time.monotonic() < deadline, certop.text()
            try:
                status, _ = https_request(certop.https_port, HOST, pebble_root)
                streak = streak + 1 if status == 200 else 0
            except (OSError, http.client.HTTPException):
                streak = 0
        # The serving worker follows its parent: kill the parent, the child stops too.
        certop.kill()
        while Path(f"/proc/{child}").exists() and _state(child) != "Z":
            assert time.monotonic() < deadline + 30, "worker outlived its parent"
            time.sleep(0.05)  # polling the process table for the condition
    finally:
        certop.stop()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except OSError:
        return "gone"


@pytest.mark.parametrize("refused", [False, True], ids=["replaces", "refused"])
async def test_the_cas_renewal_info_schedules_renewal_and_the_order_names_what_it_replaces(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, backend: Echo, refused: bool) -> None:
    """ARI (RFC 9773) in standalone mode: the CA asks for the first certificate to be replaced
    now; certop backs off once (it just issued it), orders a replacement naming it (or, when
    the CA refuses that, one without it), and then follows the CA's window for the new one."""
    from faultproxy import FaultProxy

    from certop.acme import ari

    now = dt.datetime.now(dt.UTC)
    window = (now + dt.timedelta(days=1), now + dt.timedelta(days=2))
    files = [write_ingress(tmp_path / "web.yaml", "web", ["ari.certop.test"], "web-tls")]
    with FaultProxy(pebble, Path(pebble.api_ca).parent) as proxy:
        proxy.rate_limited = False
        proxy.ari_window = window
        proxy.ari_due_first = True
        proxy.refuse_replaces = refused
        async with standalone(pebble, tmp_path / "state", files,
                              [f"web=127.0.0.1:{backend.port}"],
                              directory_url=proxy.directory_url,
                              backoff=Backoff(base=0.2)) as run:
            await run.runner.wait_until(lambda: run.runner.stats.issued == 2, timeout=60)
            assert any("replace the certificate it just issued" in e
                       for e in run.runner.stats.events)
            await run.runner.wait_until(lambda: len(proxy.ari_asked) == 2, timeout=30)
            stored = FileCertStore(tmp_path / "state").load("default", "web-tls")
            assert stored is not None
            assert ari.cert_id(stored.fullchain_pem) == proxy.ari_asked[1]
            key = ("default", "web-tls")
            await run.runner.wait_until(lambda: run.runner.ari_at(key) is not None, timeout=30)
            suggested = run.runner.ari_at(key)
            assert suggested is not None and window[0] <= suggested <= window[1]
        if refused:
            first, refused_order, renewal = proxy.orders
            assert refused_order["replaces"] == proxy.ari_asked[0]
            assert "replaces" not in renewal
        else:
            first, renewal = proxy.orders
            assert renewal["replaces"] == proxy.ari_asked[0]
        assert "replaces" not in first


async def test_a_conflict_answer_to_a_new_order_backs_off_with_a_clear_reason(
        tmp_path: Path, pebble: pebblectl.PebbleInfo, backend: Echo) -> None:
    from faultproxy import FaultProxy

    files = [write_ingress(tmp_path / "web.yaml", "web", ["conflict.certop.test"], "web-tls")]
    with FaultProxy(pebble, Path(pebble.api_ca).parent) as proxy:
        proxy.rate_limited = False
        proxy.conflict_orders = True
        async with standalone(pebble, tmp_path / "state", files,
                              [f"web=127.0.0.1:{backend.port}"],
                              directory_url=proxy.directory_url) as run:
            await run.runner.wait_until(lambda: run.runner.stats.failures >= 1, timeout=30)
            assert "409 Conflict" in run.runner.stats.events[-1]
            assert "next attempt in" in run.runner.stats.events[-1]
        assert proxy.counts["/order-plz"] == 1  # backing off, not retrying at once

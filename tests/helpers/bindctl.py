"""A real BIND (`named`, Debian's bind9) for the DNS-01 tests, on a free loopback port.

`running(workdir, zones, keys)` writes a `named.conf` for 127.0.0.1 only (UDP and TCP on one
free port, no recursion, no control channel), one primary zone file per zone (SOA, NS
`ns1.<zone>` at 127.0.0.1, the records given), each zone updatable (RFC 2136) only with its
TSIG key, then starts `named -f` as a child process and waits until it answers the zones'
SOA queries. It is stopped by the handle it was started with (SIGTERM, then SIGKILL), never
by name. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "pebble"))
import pebblectl

NAMED = "/usr/sbin/named"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Zone:
    name: str
    """Without the trailing dot."""
    key: str
    """The TSIG key (its name) that may update it."""
    records: Sequence[str] = ()
    """Zone-file lines relative to the zone ("www 60 A 127.0.0.1")."""


@dataclass
class BindInfo:
    host: str
    port: int
    keys: Mapping[str, bytes]
    """TSIG key name -> secret (hmac-sha256)."""
    zones: Sequence[Zone]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def nameserver(self) -> str:
        """host:port, as cert-manager's rfc2136 `nameserver` takes it."""
        return f"{self.host}:{self.port}"


def ensure_installed() -> None:
    if not os.access(NAMED, os.X_OK):
        raise SystemExit(f"bindctl: {NAMED} not found; install Debian's package: apt-get "
                         "install bind9 dnsutils (`make test` does this for you)")


def _conf(info: BindInfo) -> str:
    lines = [
        "options {",
        f'  directory "{info.workdir}";',
        f'  pid-file "{info.workdir / "named.pid"}";',
        f"  listen-on port {info.port} {{ {info.host}; }};",
        "  listen-on-v6 { none; };",
        "  recursion no;",
        "  allow-query { any; };",
        "  dnssec-validation no;",
        "  notify no;",
        "};",
        "controls { };",
        "logging { channel out { stderr; severity info; }; category default { out; }; };",
    ]
    for name, secret in info.keys.items():
        lines += [f'key "{name}" {{', "  algorithm hmac-sha256;",
                  f'  secret "{base64.b64encode(secret).decode()}";', "};"]
    for zone in info.zones:
        lines += [f'zone "{zone.name}" {{', "  type primary;",
                  f'  file "{info.workdir / (zone.name + ".zone")}";',
                  f'  allow-update {{ key "{zone.key}"; }};', "};"]
    return "\n".join(lines) + "\n"


def _zone_file(zone: Zone) -> str:
    return "\n".join([
        "$TTL 60",
        f"@ IN SOA ns1.{zone.name}. hostmaster.{zone.name}. 1 3600 600 86400 60",
        f"@ IN NS ns1.{zone.name}.",
        "ns1 IN A 127.0.0.1",
        *zone.records, ""])


def answers_soa(host: str, port: int, zone: str) -> bool:
    query = dns.message.make_query(zone + ".", dns.rdatatype.SOA)
    try:
        response = dns.query.udp(query, host, port=port, timeout=0.5)
    except (OSError, dns.exception.Timeout):
        return False
    return bool(response.answer)


@contextlib.contextmanager
def running(workdir: Path, zones: Sequence[Zone], keys: Mapping[str, bytes],
            timeout: float = 30.0) -> Iterator[BindInfo]:
    ensure_installed()
    workdir.mkdir(parents=True, exist_ok=True)
    info = BindInfo(LOOPBACK, pebblectl.free_udp_tcp_port(), dict(keys), list(zones),
                    workdir)
    for zone in zones:
        (workdir / f"{zone.name}.zone").write_text(_zone_file(zone))
    conf = workdir / "named.conf"
    conf.write_text(_conf(info))
    # As the test's own user (no -u): the workdir is the test's, private to that user.
    command = [NAMED, "-f", "-c", str(conf), "-n", "1"]
    with open(workdir / "named.log", "wb") as log:
        info.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not all(answers_soa(info.host, info.port, z.name) for z in zones):
            if info.proc.poll() is not None:
                raise RuntimeError(f"named exited with {info.proc.returncode}: "
                                   f"{(workdir / 'named.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"named did not answer within {timeout}s")
            time.sleep(0.05)  # polling the condition above
        yield info
    finally:
        pebblectl.stop_process(info.proc)

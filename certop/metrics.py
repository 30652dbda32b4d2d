"""Counters certop keeps (the proxy's requests and connections, the operator's ACME work),
rendered in the Prometheus text format.

Host labels are bounded: the host as a rule names it (`*.example.com` for a wildcard rule), and
"_unknown" for a Host no Ingress names, so a client cannot grow the label set by inventing hosts.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency_counts = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.tls_handshakes = 0
        self.connections_total = 0
        self.counters: dict[str, float] = {}
        """Other counters (the operator's ACME work), rendered as certop_<name>."""
        self.gauges: dict[str, Callable[[], float]] = {}
        """Values read when rendered (the operator's order queue), as certop_<name>."""

    def add(self, name: str, value: float = 1.0) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + value

    def request(self, host: str, status: int) -> None:
        key = (host, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def upstream_latency(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def render(self, open_connections: int,
               expiry: Mapping[tuple[str, str], float], handshakes: int = 0) -> str:
        """`open_connections` counts `handshakes` (TLS connections not yet through their
        handshake) too."""
        lines = [
            "# HELP certop_requests_total Requests answered, by host and status.",
            "# TYPE certop_requests_total counter",
        ]
        for (host, status), n in sorted(self.requests.items()):
            lines.append(f'certop_requests_total{{host="{_esc(host)}",status="{status}"}} {n}')
        lines += [
            "# HELP certop_upstream_response_seconds Time from request to upstream response head.",
            "# TYPE certop_upstream_response_seconds histogram",
        ]
        running = 0
        for bound, n in zip(BUCKETS, self.latency_counts, strict=False):
            running += n
            lines.append(f'certop_upstream_response_seconds_bucket{{le="{bound}"}} {running}')
        total = running + self.latency_counts[-1]
        lines += [
            f'certop_upstream_response_seconds_bucket{{le="+Inf"}} {total}',
            f"certop_upstream_response_seconds_sum {self.latency_sum:.6f}",
            f"certop_upstream_response_seconds_count {total}",
            "# HELP certop_tls_handshakes_total Completed TLS handshakes.",
            "# TYPE certop_tls_handshakes_total counter",
            f"certop_tls_handshakes_total {self.tls_handshakes}",
            "# HELP certop_connections_total Client connections accepted.",
            "# TYPE certop_connections_total counter",
            f"certop_connections_total {self.connections_total}",
            "# HELP certop_open_connections Client connections open now, TLS handshakes "
            "included.",
            "# TYPE certop_open_connections gauge",
            f"certop_open_connections {open_connections}",
            "# HELP certop_tls_handshakes_in_progress TLS connections accepted whose handshake "
            "is not done.",
            "# TYPE certop_tls_handshakes_in_progress gauge",
            f"certop_tls_handshakes_in_progress {handshakes}",
            "# HELP certop_certificate_expiry_timestamp_seconds notAfter of served certificates.",
            "# TYPE certop_certificate_expiry_timestamp_seconds gauge",
        ]
        for name, value in sorted(self.counters.items()):
            lines += [f"# TYPE certop_{name} counter", f"certop_{name} {value:g}"]
        for name, read in sorted(self.gauges.items()):
            lines += [f"# TYPE certop_{name} gauge", f"certop_{name} {read():g}"]
        for (namespace, name), when in sorted(expiry.items()):
            lines.append(f'certop_certificate_expiry_timestamp_seconds{{namespace='
                         f'"{_esc(namespace)}",secret="{_esc(name)}"}} {when:.0f}')
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

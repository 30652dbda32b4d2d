"""The proxy's limits, timeouts and header policy (set once, at start)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class ProxySettings:
    header_limit: int = 32 * 1024
    """Largest request or response head, bytes (431 / 502 above)."""
    body_limit: int | None = None
    """Largest request body, bytes (413 above); None for no limit."""
    header_timeout: float = 30.0
    """Seconds for a complete request head, also the keep-alive idle timeout."""
    connect_timeout: float = 5.0
    """Seconds to connect to an upstream endpoint (502 after)."""
    read_timeout: float = 60.0
    """Seconds to wait for an upstream response head once the request is sent (504 after)."""
    body_timeout: float = 60.0
    """Seconds a request body may make no progress (408 and the connection closed after)."""
    response_timeout: float = 60.0
    """Seconds a response body may make no progress, the backend sending or the client
    reading (the connection closed after)."""
    tunnel_timeout: float = 3600.0
    """Seconds an upgraded connection (WebSocket) may carry no byte either way (closed after)."""
    drain_limit: int = 64 * 1024
    """Largest body, bytes, read and discarded for a request certop answers itself (404, 308,
    token); a larger one is answered with `Connection: close` and the connection closed."""
    drain_timeout: float = 5.0
    """Seconds to receive such a body (else answered with `Connection: close` and closed)."""
    max_connections: int = 16384
    """Client connections open at once per worker process, TLS handshakes included; more are
    closed at once (0: no limit)."""
    access_log: bool = False
    """Log one line per request to the `certop.access` logger."""
    public_http_port: int | None = None
    """The port clients reach plain HTTP on when something maps it to certop's (a Service, a
    NAT, a container's published port): told to backends as X-Forwarded-Port. None: the port
    certop listens on."""
    public_https_port: int | None = None
    """The same for HTTPS, and where plain HTTP is redirected (443: no port in the Location)."""
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Peers whose X-Forwarded-For/-Proto/-Host/-Port certop believes (extends, keeps)."""
    allowed_upgrades: frozenset[bytes] = frozenset({b"websocket"})
    """Upgrade protocols relayed (lower-case names); other Upgrade offers are dropped."""

"""What the proxy serves, as one immutable value: the serving snapshot.

A source (the manifest files today, the Kubernetes API next) builds a `Snapshot` from Ingress
values and hands it to the proxy in one call (`Proxy.swap`): the route table, which Secret
serves which SNI host, the endpoints of every backend the routes name, and the certificates
the user brings. Certificates certop issues reach the proxy on their own, by Secret key.
"""

from __future__ import annotations

Address = tuple[str, int]
"""An endpoint: (IP address or `localhost`, port)."""

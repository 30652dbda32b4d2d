"""The built-in TLS-terminating Ingress proxy (asyncio): listeners, TLS by SNI, HTTP/1.1."""

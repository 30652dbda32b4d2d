"""The pure core: models, parsing, routing, policies. No I/O, no sockets, no clients.

An import-linter contract in pyproject.toml keeps it that way.
"""

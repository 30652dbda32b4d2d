"""`--service NAME[:PORT]=HOST:PORT`: where Ingress backends live when there is no cluster.

NAME may be `namespace/name`; without PORT the mapping serves every port of that Service.
Repeating a mapping adds endpoints, which the proxy balances per request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from certop.core.errors import ConfigError
from certop.core.models import Ingress, ServiceBackend

Address = tuple[str, int]
Key = tuple[str | None, str, str | None]  # (namespace or None, name, port or None)


def parse_service_flag(value: str) -> tuple[Key, Address]:
    def bad(expected: str) -> ConfigError:
        return ConfigError("--service", value, "", expected)

    left, sep, right = value.partition("=")
    if not sep or not left or not right:
        raise bad("NAME[:PORT]=HOST:PORT, e.g. web:80=127.0.0.1:8080")
    namespace: str | None = None
    if "/" in left:
        namespace, left = left.split("/", 1)
    name, _, port = left.partition(":")
    host, colon, raw_port = right.rpartition(":")
    if not colon or not host or not (raw_port.isascii() and raw_port.isdigit()) \
            or not 0 < int(raw_port) < 65536:
        raise bad("an address HOST:PORT after '=', e.g. 127.0.0.1:8080")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise bad("an IP address or localhost after '=' (no DNS lookups)") from None
    return (namespace, name, port or None), (host, int(raw_port))


@dataclass
class StaticBackends:
    mapping: dict[Key, list[Address]]

    @classmethod
    def from_flags(cls, flags: Iterable[str]) -> StaticBackends:
        mapping: dict[Key, list[Address]] = {}
        for flag in flags:
            key, addr = parse_service_flag(flag)
            mapping.setdefault(key, []).append(addr)
        return cls(mapping)

    def addresses(self, backend: ServiceBackend) -> Sequence[Address]:
        port = str(backend.port)
        for key in ((backend.namespace, backend.name, port), (None, backend.name, port),
                    (backend.namespace, backend.name, None), (None, backend.name, None)):
            found = self.mapping.get(key)
            if found:
                return found
        return ()

    def check(self, ingresses: Iterable[Ingress]) -> None:
        """Every backend of every Ingress is mapped; else a ConfigError naming the field."""
        for ing in ingresses:
            fields: list[tuple[str, ServiceBackend]] = []
            if ing.default_backend:
                fields.append(("spec.defaultBackend.service", ing.default_backend))
            for i, rule in enumerate(ing.rules):
                for j, path in enumerate(rule.paths):
                    fields.append((f"spec.rules[{i}].http.paths[{j}].backend.service",
                                   path.backend))
            for field, backend in fields:
                if not self.addresses(backend):
                    raise ConfigError(
                        ing.ref.source, str(ing.ref), field,
                        f"a Service mapped with --service {backend.name}:{backend.port}="
                        "HOST:PORT (none given for it)",
                    )

"""The DNS-01 solver: a provider (`solvers.dns01.provider`) behind the solver interface.

`present` adds the challenge's TXT value at `_acme-challenge.<name>` (or where its CNAME
leads, with `cnameStrategy: Follow`), `check` makes one propagation round
(`solvers.dns01.propagation`) and keeps what it saw in `last_check` for the order driver's
error, `cleanup` removes that one value. The order driver calls them from a worker thread;
each runs its provider's coroutine on a loop of its own there.

Which nameservers `check` asks, in order of precedence: those given (`--dns01-nameservers`,
`SolverContext.dns01_nameservers`); else the provider's own update server (rfc2136's
`nameserver`). A provider with neither is refused when the solver is built (until the
authoritative servers are looked up through the machine's resolver).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from certop.core.errors import ConfigError, TemporaryError
from certop.core.models import SolverSpec
from solvers.base import Challenge, SolverContext
from solvers.dns01 import propagation
from solvers.dns01.provider import DnsProvider, ProviderFactory, Where, installed


class Dns01Solver:
    challenge_type = "dns-01"

    def __init__(self, provider: DnsProvider, servers: Sequence[propagation.Server],
                 follow_cnames: bool = False, timeout: float = 2.0) -> None:
        self.provider = provider
        self.servers = tuple(servers)
        self.follow_cnames = follow_cnames
        self.timeout = timeout
        self.last_check = ""
        """What the last check saw that was not the value (the nameserver that lags)."""
        self._names: dict[tuple[str, str], str] = {}
        """(identifier, token) -> the name the value was put at."""

    def _name(self, challenge: Challenge) -> str:
        key = (challenge.identifier, challenge.token)
        if key not in self._names:
            name = challenge.dns01_record_name
            if self.follow_cnames:
                try:
                    name = asyncio.run(propagation.follow_cname(self.servers[0], name,
                                                                self.timeout))
                except ValueError as exc:
                    raise TemporaryError(f"{challenge.identifier}: {exc}") from exc
            self._names[key] = name
        return self._names[key]

    def present(self, challenge: Challenge) -> None:
        asyncio.run(self.provider.present(self._name(challenge), challenge.dns01_txt_value))

    def check(self, challenge: Challenge) -> bool:
        seen = asyncio.run(propagation.check(self.servers, self._name(challenge),
                                             challenge.dns01_txt_value, self.timeout))
        self.last_check = seen.detail
        return seen.visible

    def cleanup(self, challenge: Challenge) -> None:
        asyncio.run(self.provider.cleanup(self._name(challenge), challenge.dns01_txt_value))


def build(spec: SolverSpec, context: SolverContext, where: Where,
          providers: Mapping[str, ProviderFactory] | None = None) -> Dns01Solver:
    """The solver of one `dns01` block; ConfigError naming the field when it cannot be
    built (unknown provider, bad settings, no nameserver to check)."""
    block: Mapping[str, Any] = spec.config
    name = spec.provider
    factories = installed() if providers is None else providers
    if name is None or name not in factories:
        known = ", ".join(sorted(factories)) or "none"
        raise ConfigError(where.issuer, "", where.field, f"a DNS provider certop has "
                          f"({known}), not {name!r}")
    settings = block.get(name)
    if not isinstance(settings, Mapping):
        raise ConfigError(where.issuer, "", f"{where.field}.{name}", "a mapping of settings")
    if name == "exec":
        _allowed(settings, context, where)
    secrets = context.secrets or (lambda _name, _key: None)
    provider = factories[name](settings, Where(where.issuer, f"{where.field}.{name}"),
                               secrets)
    servers = context.dns01_nameservers or _update_server(provider)
    if not servers:
        raise ConfigError(where.issuer, "", where.field, "nameservers to check propagation "
                          "against: give them with --dns01-nameservers host:port[,...]")
    strategy = str(block.get("cnameStrategy") or "None")
    if strategy not in ("None", "Follow"):
        raise ConfigError(where.issuer, "", f"{where.field}.cnameStrategy",
                          f"None or Follow, not {strategy!r}")
    return Dns01Solver(provider, servers, follow_cnames=strategy == "Follow")


def _allowed(settings: Mapping[str, Any], context: SolverContext, where: Where) -> None:
    """An `exec` hook runs with certop's own rights: only a program the operator listed
    (--dns01-exec-allow), and never for a namespaced Issuer in a cluster."""
    raw = settings.get("command")
    program = raw if isinstance(raw, str) else raw[0] if isinstance(raw, list) and raw else ""
    if str(program).strip() not in context.exec_allowed:
        raise ConfigError(where.issuer, "", f"{where.field}.exec.command",
                          "a program the operator allows with --dns01-exec-allow (ClusterIssuers "
                          "only in a cluster: a hook runs with certop's own rights)")


def _update_server(provider: DnsProvider) -> tuple[propagation.Server, ...]:
    host, port = getattr(provider, "host", None), getattr(provider, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return ((host, port),)
    return ()

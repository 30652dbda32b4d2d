"""The DNS-01 solver: a provider (`solvers.dns01.provider`) behind the solver interface.

`present` adds the challenge's TXT value at `_acme-challenge.<name>` (or where its CNAME
leads, with `cnameStrategy: Follow`), `check` makes one propagation round
(`solvers.dns01.propagation`) and keeps what it saw in `last_check` for the order driver's
error, `cleanup` removes that one value. The order driver calls them from a worker thread;
each runs its provider's coroutine on a loop of its own there.

Which nameservers `check` asks: `solvers.dns01.authorities` (those given with
`--dns01-nameservers`; else the provider's update server and the zone's other authoritative
servers it names; else those the machine's resolver finds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from certop.core.errors import ConfigError, TemporaryError
from certop.core.models import SolverSpec
from solvers.base import Challenge, SolverContext
from solvers.dns01 import propagation
from solvers.dns01.authorities import Authorities
from solvers.dns01.provider import DnsProvider, ProviderFactory, Where, installed


class Dns01Solver:
    challenge_type = "dns-01"

    def __init__(self, provider: DnsProvider, authorities: Authorities,
                 follow_cnames: bool = False, timeout: float = 2.0) -> None:
        self.provider = provider
        self.authorities = authorities
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
                first = self.authorities.first
                try:
                    name = asyncio.run(propagation.follow_cname(
                        first or self.authorities.recursive, name, self.timeout,
                        recursive=first is None))
                except ValueError as exc:
                    raise TemporaryError(f"{challenge.identifier}: {exc}") from exc
            self._names[key] = name
        return self._names[key]

    def present(self, challenge: Challenge) -> None:
        asyncio.run(self.provider.present(self._name(challenge), challenge.dns01_txt_value))

    def check(self, challenge: Challenge) -> bool:
        seen = asyncio.run(self._check(self._name(challenge), challenge.dns01_txt_value))
        self.last_check = seen.detail
        return seen.visible

    async def _check(self, name: str, value: str) -> propagation.Seen:
        try:
            servers = await self.authorities.servers(name)
        except TemporaryError as exc:  # no server to ask yet: another round may find one
            return propagation.Seen(False, str(exc))
        return await propagation.check(servers, name, value, self.timeout)

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
    authorities = Authorities(context.dns01_nameservers, _update_server(provider))
    strategy = str(block.get("cnameStrategy") or "None")
    if strategy not in ("None", "Follow"):
        raise ConfigError(where.issuer, "", f"{where.field}.cnameStrategy",
                          f"None or Follow, not {strategy!r}")
    return Dns01Solver(provider, authorities, follow_cnames=strategy == "Follow")


def _allowed(settings: Mapping[str, Any], context: SolverContext, where: Where) -> None:
    """An `exec` hook runs with certop's own rights: only a program the operator listed
    (--dns01-exec-allow), and never for a namespaced Issuer in a cluster."""
    raw = settings.get("command")
    program = raw if isinstance(raw, str) else raw[0] if isinstance(raw, list) and raw else ""
    if str(program).strip() not in context.exec_allowed:
        raise ConfigError(where.issuer, "", f"{where.field}.exec.command",
                          "a program the operator allows with --dns01-exec-allow (ClusterIssuers "
                          "only in a cluster: a hook runs with certop's own rights)")


def _update_server(provider: DnsProvider) -> propagation.Server | None:
    """The one server a provider sends its updates to, if it has one (rfc2136)."""
    host, port = getattr(provider, "host", None), getattr(provider, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return host, port
    return None

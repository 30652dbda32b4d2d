"""Which solver answers an issuer's solver block: a registry of solver factories.

A factory is registered under a name: the challenge type (`http-01`, `dns-01`) or the type
and the block's provider (`dns-01.rfc2136`, `dns-01.webhook`); the most specific name wins
(`SolverSpec.registry_names`). certop's own solvers and third-party ones are found the same
way, through the entry points of group `certop.solvers`:

    [project.entry-points."certop.solvers"]
    "dns-01.rfc2136" = "mypackage.rfc2136:Rfc2136Solver"

where the object named is a `SolverFactory`: called with the solver block (`SolverSpec`, its
`config` the block as the issuer wrote it) and the mode's `SolverContext`, it returns the
solver. A block that no factory is registered for gets no solver: the order driver refuses
the identifiers selected for it with a clear message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import metadata

from certop.core.models import SolverSpec
from solvers.base import Solver, SolverContext, SolverFactory

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "certop.solvers"


def entry_point_factories() -> dict[str, SolverFactory]:
    """The factories installed packages declare in group `certop.solvers`; one that does not
    load is left out with a warning (never a crash of certop)."""
    found: dict[str, SolverFactory] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[entry.name] = entry.load()
        except Exception as exc:  # a broken third-party package
            log.warning("solver %s (%s) could not be loaded: %s: %s", entry.name, entry.value,
                        type(exc).__name__, exc)
    return found


class SolverRegistry:
    """Names -> solver factories."""

    def __init__(self, factories: Mapping[str, SolverFactory] | None = None) -> None:
        """`factories` None: the installed entry points."""
        self._factories = dict(entry_point_factories() if factories is None else factories)

    def register(self, name: str, factory: SolverFactory) -> None:
        self._factories[name] = factory

    def factory(self, spec: SolverSpec) -> SolverFactory | None:
        return next((self._factories[name] for name in spec.registry_names
                     if name in self._factories), None)

    @property
    def challenge_types(self) -> tuple[str, ...]:
        return tuple(sorted({name.split(".", 1)[0] for name in self._factories}))

    def bind(self, context: SolverContext) -> BoundSolvers:
        """The solvers of one certificate (one order session)."""
        return BoundSolvers(self, context)


class BoundSolvers:
    """A registry and one certificate's context: one solver per solver block, built once
    (a solver may remember what it presented, for its cleanup)."""

    def __init__(self, registry: SolverRegistry, context: SolverContext) -> None:
        self.registry = registry
        self.context = context
        self._built: list[tuple[SolverSpec, Solver]] = []

    def solver(self, spec: SolverSpec) -> Solver | None:
        for known, solver in self._built:
            if known is spec:
                return solver
        factory = self.registry.factory(spec)
        if factory is None:
            return None
        solver = factory(spec, self.context)
        self._built.append((spec, solver))
        return solver

    @property
    def challenge_types(self) -> tuple[str, ...]:
        return self.registry.challenge_types

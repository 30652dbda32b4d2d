"""The `dns-01` solver factory (entry point `certop.solvers` "dns-01"): the issuer's `dns01`
block -> `solvers.dns01.solver.Dns01Solver` over the installed provider it names."""

from __future__ import annotations

from certop.core.models import SolverSpec
from solvers.base import Solver, SolverContext
from solvers.dns01.provider import Where
from solvers.dns01.solver import build


def dns01_solver(spec: SolverSpec, context: SolverContext) -> Solver:
    source, issuer, field = spec.origin
    where = Where(": ".join(part for part in (source, issuer) if part) or "the issuer",
                  field or "dns01")
    return build(spec, context, where)

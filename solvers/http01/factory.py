"""The HTTP-01 solver factory (entry point `http-01` of group `certop.solvers`).

Standalone: certop's own responder answers from its token store. Cluster mode: the same, plus a
temporary Ingress per challenge routing the path to certop's responder Service, with the class
and pathType of the solver block (else the class of the Ingress that asked).
"""

from __future__ import annotations

from certop.core.models import SolverSpec
from solvers.base import Solver, SolverContext
from solvers.http01.solver import Http01Solver


def http01_solver(spec: SolverSpec, context: SolverContext) -> Solver:
    local = Http01Solver(context.tokens, context.self_check_addr)
    cluster = context.cluster
    if cluster is None:
        return local
    from solvers.http01.ingress import IngressSolver  # Kubernetes only in cluster mode

    return IngressSolver(local, cluster.api, cluster.namespace, cluster.service, cluster.port,
                         spec.http01_ingress_class or cluster.ingress_class,
                         spec.http01_path_type.value)

"""HTTP-01 (RFC 8555 section 8.3): a token store the proxy answers from, and the solver."""

from solvers.http01.solver import Http01Solver
from solvers.http01.tokens import TokenStore

__all__ = ["Http01Solver", "TokenStore"]

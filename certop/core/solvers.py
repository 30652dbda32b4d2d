"""Which of an issuer's solvers answers for an identifier: cert-manager's selector rules.

A solver whose selector is empty is the default, of lowest priority. `matchLabels` must all be
on the Certificate. A `dnsNames` entry equal to the identifier beats any zone; among
`dnsZones` the longest zone the identifier is in wins; then the solver with more
`matchLabels`; then the one listed first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from certop.core.models import SolverSpec


def _name(value: str) -> str:
    return value.strip().rstrip(".").lower()


def _rank(solver: SolverSpec, identifier: str, labels: Mapping[str, str]
          ) -> tuple[int, int, int] | None:
    """(exact name, labels of the matching zone, match labels), higher is better; None when
    the solver is not for this identifier."""
    sel = solver.selector
    if any(labels.get(key) != value for key, value in sel.match_labels):
        return None
    name = _name(identifier)
    exact = any(_name(n) == name for n in sel.dns_names)
    zone_labels = 0
    for zone in sel.dns_zones:
        z = _name(zone)
        if name == z or name.endswith("." + z):
            zone_labels = max(zone_labels, len(z.split(".")))
    if sel.dns_names and sel.dns_zones and not exact and not zone_labels:
        return None
    if sel.dns_names and not sel.dns_zones and not exact:
        return None
    if sel.dns_zones and not sel.dns_names and not zone_labels:
        return None
    return (int(exact), zone_labels, len(sel.match_labels))


def select(solvers: Sequence[SolverSpec], identifier: str,
           labels: Mapping[str, str] | None = None) -> SolverSpec | None:
    """The solver for `identifier` (a DNS name, maybe `*.`), or None when none is for it."""
    best: tuple[tuple[int, int, int], int] | None = None
    for index, solver in enumerate(solvers):
        rank = _rank(solver, identifier, labels or {})
        if rank is not None and (best is None or rank > best[0]):
            best = (rank, index)
    return solvers[best[1]] if best is not None else None


def refusal(solvers: Sequence[SolverSpec], identifier: str,
            labels: Mapping[str, str] | None = None) -> str | None:
    """Why no solver of `solvers` can be used for `identifier` (None: `select` finds one
    that may): no selector matches it, or it is a wildcard and the one selected is not
    dns01 (RFC 8555 section 7.1.3: a CA validates a wildcard through DNS only)."""
    chosen = select(solvers, identifier, labels)
    if chosen is None:
        return f"no selector matches {identifier}"
    if identifier.startswith("*.") and chosen.challenge_type != "dns-01":
        return (f"a wildcard host ({identifier}) needs a DNS-01 solver; solvers["
                f"{solvers.index(chosen)}], selected for it, is {chosen.challenge_type}")
    return None

"""The DNS provider interface and its registry (entry-point group `certop.dns_providers`).

A provider puts one TXT value at a name and takes it away again. Both are idempotent and
*add* or *remove that value only*: a certificate for `*.example.test` and `example.test`
needs two values at `_acme-challenge.example.test` at once, and another order's value may be
there too. A provider is one small module; a third party adds one with `pip install` and an
entry point:

    [project.entry-points."certop.dns_providers"]
    route53 = "mypackage.route53:provider"

where the object named is a `ProviderFactory`: called with the issuer's block for it (the
mapping under `dns01.<name>`, as cert-manager spells it), a `Where` naming that block for
error messages, and a `SecretLookup` (Secrets of the issuer's namespace in a cluster, of the
loaded manifests in standalone mode), it returns the provider or raises `ConfigError` naming
the field. Network errors are `TemporaryError`s, a refusal that retrying will not fix (a
wrong key, a zone the provider cannot update) a `PermanentError`, each naming the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "certop.dns_providers"


class DnsProvider(Protocol):
    async def present(self, fqdn: str, value: str) -> None:
        """Add `value` to the TXT record set at `fqdn` (absolute, no trailing dot)."""
        ...

    async def cleanup(self, fqdn: str, value: str) -> None:
        """Remove `value` from the TXT record set at `fqdn` (nothing else)."""
        ...


SecretLookup = Callable[[str, str], bytes | None]
"""(Secret name, key) -> the value, None when there is no such Secret or key."""


@dataclass(frozen=True)
class Where:
    """Which issuer block a provider is built from (for messages)."""

    issuer: str
    """e.g. "ClusterIssuer letsencrypt"."""
    field: str
    """e.g. "spec.acme.solvers[1].dns01.rfc2136"."""


ProviderFactory = Callable[[Mapping[str, Any], Where, SecretLookup], DnsProvider]


def installed() -> dict[str, ProviderFactory]:
    """The providers installed packages declare; one that does not load is left out with a
    warning (never a crash of certop)."""
    found: dict[str, ProviderFactory] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[entry.name] = entry.load()
        except Exception as exc:  # a broken third-party package
            log.warning("DNS provider %s (%s) could not be loaded: %s: %s", entry.name,
                        entry.value, type(exc).__name__, exc)
    return found

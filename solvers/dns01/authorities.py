"""Which nameservers a DNS-01 value must be visible on before the CA is asked to look.

In order of precedence:

1. the nameservers the operator gave (`--dns01-nameservers`), asked as they are;
2. for a provider that updates one server (rfc2136's `nameserver`): that server, plus every
   authoritative server of the zone it names (its NS set) that answers for the zone;
3. else the zone's authoritative servers found through the machine's resolver (the zone by
   SOA, its NS set, their addresses), those that answer for the zone.

"Answers for the zone" means an authoritative (AA) answer to an SOA query within the
timeout: a name in the NS set that is not reachable from here (an internal name, a server
that is down) cannot be checked and is left out, as is a cache that is not authoritative.
The servers an NS record names are asked on `port` (53). Nothing here sleeps or retries:
the order driver's self-check rounds do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from certop.core.errors import TemporaryError

Server = tuple[str, int]


def _absolute(name: str) -> str:
    return name.rstrip(".") + "."


async def _query(server: Server, name: str, rdtype: dns.rdatatype.RdataType,
                 timeout: float) -> dns.message.Message | None:
    """A non-recursive query (TCP when truncated); None when the server does not answer."""
    query = dns.message.make_query(_absolute(name), rdtype)
    query.flags &= ~dns.flags.RD
    try:
        response = await dns.asyncquery.udp(query, server[0], port=server[1], timeout=timeout)
        if response.flags & dns.flags.TC:
            response = await dns.asyncquery.tcp(query, server[0], port=server[1],
                                                timeout=timeout)
    except (OSError, dns.exception.DNSException):
        return None
    return response


def _records(response: dns.message.Message | None, rdtype: dns.rdatatype.RdataType,
             owner: str | None = None) -> list[str]:
    """The rdata (as text, no trailing dot) of type `rdtype` in every section, at `owner`
    if given."""
    if response is None:
        return []
    wanted = dns.name.from_text(_absolute(owner)) if owner is not None else None
    return [rdata.to_text().rstrip(".")
            for section in (response.answer, response.authority, response.additional)
            for rrset in section
            if rrset.rdtype == rdtype and (wanted is None or rrset.name == wanted)
            for rdata in rrset]


async def answers_for(server: Server, zone: str, timeout: float) -> bool:
    """Does `server` answer authoritatively for `zone`? Asked over TCP, which an
    authoritative server serves too (RFC 7766): a closed port is refused at once, where a
    UDP query would wait out the timeout."""
    query = dns.message.make_query(_absolute(zone), dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    try:
        response = await dns.asyncquery.tcp(query, server[0], port=server[1], timeout=timeout)
    except (OSError, dns.exception.DNSException):
        return False
    return bool(response.flags & dns.flags.AA) \
        and bool(_records(response, dns.rdatatype.SOA, zone))


async def _zone_at(server: Server, fqdn: str, timeout: float) -> str | None:
    """The zone `fqdn` is in, as `server` says (the owner of the SOA it answers with)."""
    response = await _query(server, fqdn, dns.rdatatype.SOA, timeout)
    if response is None:
        return None
    for section in (response.answer, response.authority):
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.SOA:
                return str(rrset.name).rstrip(".")
    return None


class Authorities:
    """The servers to check, per zone (looked up once per zone by one instance)."""

    def __init__(self, given: Sequence[Server] = (), update_server: Server | None = None,
                 resolver: Sequence[Server] = (), port: int = 53,
                 timeout: float = 2.0) -> None:
        self.given = tuple(given)
        """--dns01-nameservers: asked as they are, nothing looked up."""
        self.update_server = update_server
        """The server a provider sends its updates to (rfc2136's `nameserver`)."""
        self.resolver = tuple(resolver)
        """Recursive resolvers for the last resort (empty: the machine's, resolv.conf)."""
        self.port = port
        """Where the servers an NS record names are asked."""
        self.timeout = timeout
        self._found: dict[str, tuple[Server, ...]] = {}

    @property
    def first(self) -> Server | None:
        """A server to ask about names before the zone is known (CNAMEs): a given one or
        the update server; None: the machine's resolver."""
        return self.given[0] if self.given else self.update_server

    @property
    def recursive(self) -> Server:
        """A recursive resolver (the first configured) for CNAMEs when `first` is None."""
        resolver = self._resolver()
        return str(resolver.nameservers[0]), int(resolver.port)

    async def servers(self, fqdn: str) -> tuple[Server, ...]:
        """The servers `fqdn`'s value must be visible on (looked up once per zone)."""
        if self.given:
            return self.given
        if self.update_server is not None:
            zone = await _zone_at(self.update_server, fqdn, self.timeout) or fqdn
            if zone not in self._found:
                self._found[zone] = (self.update_server, *await self._named_by(
                    self.update_server, zone, exclude=self.update_server))
            return self._found[zone]
        return await self._through_resolver(fqdn)

    async def _named_by(self, server: Server, zone: str,
                        exclude: Server | None = None) -> tuple[Server, ...]:
        """The zone's NS set as `server` has it, their addresses (from `server`, else the
        resolver), those that answer for the zone."""
        response = await _query(server, zone, dns.rdatatype.NS, self.timeout)
        addresses: list[str] = []
        for host in _records(response, dns.rdatatype.NS, zone):
            glue = [a for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
                    for a in _records(response, rdtype, host)]
            if not glue:
                for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    glue += _records(await _query(server, host, rdtype, self.timeout),
                                     rdtype, host)
            addresses += glue or await self._resolve(host)
        return await self._answering(zone, addresses, exclude)

    async def _answering(self, zone: str, addresses: Iterable[str],
                         exclude: Server | None) -> tuple[Server, ...]:
        candidates = list(dict.fromkeys((a, self.port) for a in addresses))
        candidates = [c for c in candidates if c != exclude]
        ok = await asyncio.gather(*(answers_for(c, zone, self.timeout) for c in candidates))
        return tuple(c for c, yes in zip(candidates, ok, strict=True) if yes)

    def _resolver(self) -> dns.asyncresolver.Resolver:
        if not self.resolver:
            return dns.asyncresolver.Resolver()
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host for host, _ in self.resolver]
        resolver.port = self.resolver[0][1]
        resolver.lifetime = self.timeout
        return resolver

    async def _resolve(self, host: str) -> list[str]:
        resolver = self._resolver()
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(_absolute(host), rdtype, raise_on_no_answer=False)
            except dns.exception.DNSException:
                continue
            found += [rdata.to_text() for rdata in answer]
        return found

    async def _through_resolver(self, fqdn: str) -> tuple[Server, ...]:
        resolver = self._resolver()
        try:
            zone = str(await dns.asyncresolver.zone_for_name(
                _absolute(fqdn), resolver=resolver, lifetime=self.timeout)).rstrip(".")
        except dns.exception.DNSException as exc:
            raise TemporaryError(f"the zone of {fqdn} could not be found through the resolver "
                                 f"({exc or type(exc).__name__}); give the nameservers to "
                                 "check with --dns01-nameservers") from exc
        if zone in self._found:
            return self._found[zone]
        try:
            answer = await resolver.resolve(_absolute(zone), "NS")
        except dns.exception.DNSException as exc:
            raise TemporaryError(f"the nameservers of zone {zone} could not be found "
                                 f"({exc or type(exc).__name__})") from exc
        addresses: list[str] = []
        for rdata in answer:
            addresses += await self._resolve(str(rdata.target))
        found = await self._answering(zone, addresses, None)
        if not found:
            asked = ", ".join(sorted({f"{a}:{self.port}" for a in addresses})) or "none found"
            raise TemporaryError(f"no authoritative nameserver of zone {zone} answers from "
                                 f"here (asked: {asked}); give the nameservers to check "
                                 "with --dns01-nameservers")
        self._found[zone] = found
        return found


"""Is a TXT value visible yet? Asked of each nameserver directly, never of a cache.

`check` makes one bounded round: every nameserver in the list is asked (at once) for the TXT
record set at the name, over UDP (TCP when the answer is truncated), and the value must be in
every answer. Its result names the first nameserver that lags and what it served, so an error
after the caller's last round says exactly which server is behind. The caller decides how
often to ask again and when to give up (the order driver's scheduled self-checks): nothing
here sleeps.

`follow_cname` resolves `_acme-challenge.<name>` through CNAMEs (cert-manager's
`cnameStrategy: Follow`), so validation can be delegated to a zone certop may update.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

Server = tuple[str, int]
MAX_CNAMES = 8


@dataclass(frozen=True)
class Seen:
    visible: bool
    detail: str
    """Empty when visible; else "<server> serves <what>" for the first server that lags."""


def _absolute(name: str) -> str:
    return name.rstrip(".") + "."


async def _ask(server: Server, name: str, rdtype: dns.rdatatype.RdataType,
               timeout: float, recursive: bool = False) -> dns.message.Message:
    query = dns.message.make_query(_absolute(name), rdtype)
    if not recursive:
        query.flags &= ~dns.flags.RD  # an authoritative answer, not a recursion
    response = await dns.asyncquery.udp(query, server[0], port=server[1], timeout=timeout)
    if response.flags & dns.flags.TC:
        response = await dns.asyncquery.tcp(query, server[0], port=server[1], timeout=timeout)
    return response


async def served(server: Server, name: str, timeout: float = 2.0) -> set[str] | str:
    """The TXT values `server` serves at `name`, or why there are none to tell (an error)."""
    try:
        response = await _ask(server, name, dns.rdatatype.TXT, timeout)
    except (OSError, dns.exception.DNSException) as exc:
        return f"no answer ({exc or type(exc).__name__})"
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return f"an error ({dns.rcode.to_text(rcode)})"
    return {b"".join(rdata.strings).decode(errors="replace")
            for rrset in response.answer if rrset.rdtype == dns.rdatatype.TXT
            for rdata in rrset}


def _describe(found: set[str] | str) -> str:
    if isinstance(found, str):
        return found
    if not found:
        return "no TXT value"
    return "only " + ", ".join(sorted(f'"{v}"' for v in found))


async def check(servers: Sequence[Server], name: str, value: str,
                timeout: float = 2.0) -> Seen:
    """One round: is `value` among the TXT values at `name` on every server?"""
    answers = await asyncio.gather(*(served(s, name, timeout) for s in servers))
    for server, found in zip(servers, answers, strict=True):
        if isinstance(found, str) or value not in found:
            return Seen(False, f"nameserver {server[0]}:{server[1]} serves "
                               f"{_describe(found)} at {name.rstrip('.')}")
    return Seen(True, "")


async def follow_cname(server: Server, name: str, timeout: float = 2.0,
                       recursive: bool = False) -> str:
    """Where `name` leads through CNAMEs, as `server` answers (the name itself when it is
    no alias; `recursive`: `server` is a resolver); a loop or a chain longer than
    MAX_CNAMES is a ValueError."""
    seen = [name.rstrip(".")]
    for _ in range(MAX_CNAMES):
        response = await _ask(server, seen[-1], dns.rdatatype.CNAME, timeout, recursive)
        target = next((str(rdata.target).rstrip(".") for rrset in response.answer
                       if rrset.rdtype == dns.rdatatype.CNAME
                       and rrset.name == dns.name.from_text(_absolute(seen[-1]))
                       for rdata in rrset), None)
        if target is None:
            return seen[-1]
        if target in seen:
            raise ValueError(f"a CNAME loop: {' -> '.join([*seen, target])}")
        seen.append(target)
    raise ValueError(f"more than {MAX_CNAMES} CNAMEs from {name}")

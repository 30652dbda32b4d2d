"""RFC 2136 dynamic updates, signed with TSIG, over TCP (dnspython): configured as
cert-manager's `rfc2136` solver is.

    dns01:
      rfc2136:
        nameserver: 192.0.2.53:53        # host[:port], [v6]:port; port 53 by default
        tsigKeyName: certop-key
        tsigAlgorithm: HMACSHA256        # HMACMD5 (cert-manager's default), HMACSHA1,
                                         # HMACSHA224, HMACSHA256, HMACSHA384, HMACSHA512
        tsigSecretSecretRef: {name: tsig, key: secret}   # the base64 secret, as tsig-keygen
        zone: example.test               # optional: else found by an SOA query

A value is *added* to the TXT record set (an UPDATE "add" of that one record: another value
stays), and removal deletes that one record; both are no-ops when already done, as DNS
UPDATE defines them. The zone is the owner of the SOA the nameserver answers for the name.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from certop.core.errors import ConfigError, PermanentError, TemporaryError
from solvers.dns01.provider import SecretLookup, Where

TTL = 60
ALGORITHMS = {
    "HMACMD5": dns.tsig.HMAC_MD5, "HMACSHA1": dns.tsig.HMAC_SHA1,
    "HMACSHA224": dns.tsig.HMAC_SHA224, "HMACSHA256": dns.tsig.HMAC_SHA256,
    "HMACSHA384": dns.tsig.HMAC_SHA384, "HMACSHA512": dns.tsig.HMAC_SHA512,
}
"""cert-manager's names -> the TSIG algorithm."""


def parse_nameserver(text: str) -> tuple[str, int]:
    """"host", "host:port", "[v6]:port" or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "53"
    if not port.isdigit() or not 0 < int(port) < 65536 or not _host(host):
        raise ValueError(text)
    return host, int(port)


def _host(text: str) -> bool:
    """An IP address or a DNS host name."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                            r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?", text) is not None
    return True


class Rfc2136Provider:
    def __init__(self, host: str, port: int, key_name: str, algorithm: dns.name.Name,
                 secret: bytes, where: Where, zone: str | None = None,
                 timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.key_name = key_name
        self.keyring = {dns.name.from_text(key_name): dns.tsig.Key(key_name, secret,
                                                                   algorithm)}
        self.algorithm = algorithm
        self.where = where
        self.zone = zone.rstrip(".") if zone else None
        self.timeout = timeout

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    async def present(self, fqdn: str, value: str) -> None:
        await self._update(fqdn, value, add=True)

    async def cleanup(self, fqdn: str, value: str) -> None:
        await self._update(fqdn, value, add=False)

    async def zone_of(self, fqdn: str) -> str:
        """The zone `fqdn` is in, as the nameserver says (the owner of its SOA)."""
        if self.zone:
            return self.zone
        query = dns.message.make_query(fqdn.rstrip(".") + ".", dns.rdatatype.SOA)
        response = await self._send(query, "asking for the zone of " + fqdn)
        for section in (response.answer, response.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return str(rrset.name).rstrip(".")
        raise PermanentError(
            f"{self.where.issuer}: {self.where.field}.nameserver: {self.server} names no zone "
            f"for {fqdn} (rcode {dns.rcode.to_text(response.rcode())}): is it authoritative "
            "for it? Set the zone with `zone`")

    async def _update(self, fqdn: str, value: str, add: bool) -> None:
        zone = await self.zone_of(fqdn)
        update = dns.update.UpdateMessage(zone + ".", keyring=self.keyring,
                                          keyname=dns.name.from_text(self.key_name),
                                          keyalgorithm=self.algorithm)
        name = dns.name.from_text(fqdn.rstrip(".") + ".")
        if add:
            update.add(name, TTL, dns.rdatatype.TXT, f'"{value}"')
        else:
            update.delete(name, dns.rdatatype.TXT, f'"{value}"')
        what = f"{'adding' if add else 'removing'} TXT {fqdn} in zone {zone}"
        response = await self._send(update, what)
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        text = dns.rcode.to_text(rcode)
        if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.NOTZONE):
            raise PermanentError(
                f"{self.where.issuer}: {self.where.field}: {self.server} refused {what} "
                f"({text}): may TSIG key {self.key_name} update zone {zone} there?")
        raise TemporaryError(f"{self.where.issuer}: {self.where.field}: {self.server} "
                             f"answered {text} to {what}")

    async def _send(self, message: dns.message.Message, what: str) -> dns.message.Message:
        field = f"{self.where.issuer}: {self.where.field}"
        try:
            return await dns.asyncquery.tcp(message, self.host, port=self.port,
                                            timeout=self.timeout)
        except dns.tsig.PeerBadKey as exc:
            raise PermanentError(f"{field}.tsigKeyName: {self.server} does not know TSIG key "
                                 f"{self.key_name} ({what})") from exc
        except (dns.tsig.PeerBadSignature, dns.tsig.BadSignature) as exc:
            raise PermanentError(f"{field}.tsigSecretSecretRef: {self.server} rejected the "
                                 f"signature of key {self.key_name}: a wrong secret or "
                                 f"algorithm ({what})") from exc
        except dns.tsig.PeerError as exc:
            raise PermanentError(f"{field}: {self.server} rejected TSIG key {self.key_name}: "
                                 f"{exc} ({what})") from exc
        except (OSError, dns.exception.DNSException) as exc:
            raise TemporaryError(f"{field}.nameserver: {self.server}: {what}: "
                                 f"{exc or type(exc).__name__}") from exc


def provider(block: Mapping[str, Any], where: Where, secrets: SecretLookup) -> Rfc2136Provider:
    """The `rfc2136` block -> a provider; ConfigError naming the field when it is wrong."""

    def bad(field: str, expected: str) -> ConfigError:
        return ConfigError(where.issuer, "", f"{where.field}.{field}", expected)

    try:
        host, port = parse_nameserver(str(block.get("nameserver") or ""))
    except ValueError:
        raise bad("nameserver", "host[:port] of the DNS server that takes the updates, e.g. "
                  "192.0.2.53:53") from None
    key_name = str(block.get("tsigKeyName") or "")
    if not key_name:
        raise bad("tsigKeyName", "the name of the TSIG key (as the nameserver knows it)")
    algorithm_text = str(block.get("tsigAlgorithm") or "HMACMD5").upper().replace("-", "")
    algorithm = ALGORITHMS.get(algorithm_text)
    if algorithm is None:
        raise bad("tsigAlgorithm", f"one of {', '.join(ALGORITHMS)}, not "
                  f"{block.get('tsigAlgorithm')!r}")
    ref = block.get("tsigSecretSecretRef")
    if not isinstance(ref, Mapping) or not ref.get("name") or not ref.get("key"):
        raise bad("tsigSecretSecretRef", "{name, key} of the Secret that holds the TSIG "
                  "secret (base64, as tsig-keygen prints it)")
    found = secrets(str(ref["name"]), str(ref["key"]))
    if found is None:
        raise bad("tsigSecretSecretRef", f"Secret {ref['name']} with key {ref['key']}: "
                  "not found")
    try:
        secret = base64.b64decode(found.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise bad("tsigSecretSecretRef", f"Secret {ref['name']} key {ref['key']}: a base64 "
                  "TSIG secret") from None
    zone = block.get("zone")
    return Rfc2136Provider(host, port, key_name, algorithm, secret, where,
                           str(zone) if zone else None)

"""Several solvers in one order, against real Pebble: each identifier is solved by the solver of
the issuer's block selected for it. The DNS-01 solver here is a third-party one registered into
the registry (certop ships none yet); it writes TXT records into pebble-challtestsrv, which
Pebble asks. A wildcard and its apex share `_acme-challenge.<name>`: each cleanup gets the
value it must remove."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pebblectl
from cryptography import x509

from certop.acme.accounts import Account
from certop.acme.orders import OrderSession
from certop.core import issuers
from certop.core.models import CertificateSpec, Fqdn, SecretName
from certop.proxy.server import Proxy
from certop.proxy.tls import CertBook
from certop.store.memory import MemoryAccountStore, MemoryOrderJournal
from solvers.base import Challenge, SolverContext
from solvers.http01 import TokenStore
from solvers.registry import SolverRegistry


class ChallTestSrvDns:
    """DNS-01 through pebble-challtestsrv's management API (`/set-txt`, `/clear-txt`)."""

    challenge_type = "dns-01"
    made: list[ChallTestSrvDns] = []

    def __init__(self, spec: Any, context: SolverContext) -> None:
        block = spec.config["challtestsrv"]
        self.api = block["management"]
        self.dns = ("127.0.0.1", int(block["port"]))
        self.records: dict[str, list[str]] = {}
        self.presented: list[Challenge] = []
        self.cleaned: list[Challenge] = []
        ChallTestSrvDns.made.append(self)

    def _post(self, path: str, body: dict[str, str]) -> None:
        request = urllib.request.Request(self.api + path, json.dumps(body).encode(),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    def _publish(self, name: str) -> None:
        self._post("/clear-txt", {"host": name + "."})
        for value in self.records.get(name, []):
            self._post("/set-txt", {"host": name + ".", "value": value})

    def txt(self, name: str) -> set[str]:
        query = dns.message.make_query(name + ".", dns.rdatatype.TXT)
        answer = dns.query.udp(query, self.dns[0], port=self.dns[1], timeout=5)
        return {b"".join(r.strings).decode() for rrset in answer.answer for r in rrset}

    def present(self, challenge: Challenge) -> None:
        # Added beside the values already served (challtestsrv keeps a list per name), never
        # cleared and set again: the CA may be validating the apex's value on the same name
        # while the wildcard's is presented.
        values = self.records.setdefault(challenge.dns01_record_name, [])
        if challenge.dns01_txt_value not in values:
            values.append(challenge.dns01_txt_value)
            self._post("/set-txt", {"host": challenge.dns01_record_name + ".",
                                    "value": challenge.dns01_txt_value})
        self.presented.append(challenge)

    def check(self, challenge: Challenge) -> bool:
        return challenge.dns01_txt_value in self.txt(challenge.dns01_record_name)

    def cleanup(self, challenge: Challenge) -> None:
        values = self.records.get(challenge.dns01_record_name, [])
        if challenge.dns01_txt_value in values:
            values.remove(challenge.dns01_txt_value)
        self._publish(challenge.dns01_record_name)
        self.cleaned.append(challenge)


def issuer(pebble: pebblectl.PebbleInfo) -> Any:
    return issuers.parse_issuer({
        "apiVersion": "certop.dev/v1", "kind": "ClusterIssuer", "metadata": {"name": "two"},
        "spec": {"acme": {"server": pebble.directory_url, "solvers": [
            {"http01": {"ingress": {}}},
            {"selector": {"dnsZones": ["dns.solvers.test"]},
             "dns01": {"challtestsrv": {"management": pebble.challtestsrv_url,
                                        "port": str(pebble.dns_port)}}}]}}},
        "issuer.yaml", lambda namespace, name: None)


def spec(hosts: list[str]) -> CertificateSpec:
    return CertificateSpec(namespace="default", secret_name=SecretName("two-tls"),
                           hosts=tuple(Fqdn(h) for h in hosts), issuer="two")


def drive(session: OrderSession, deadline: float) -> bytes:
    """The order's steps, each next look when the session schedules it (as the runners do)."""
    while time.monotonic() < deadline:
        step = session.step()
        if step.done:
            assert step.fullchain_pem is not None
            return step.fullchain_pem
        time.sleep(step.after)  # the CA's poll interval, as the runners wait for it
    raise AssertionError("the order did not complete in time")


async def test_one_order_is_solved_by_the_solver_selected_for_each_identifier(
        pebble: pebblectl.PebbleInfo) -> None:
    hosts = ["web.solvers.test", "dns.solvers.test", "*.dns.solvers.test"]
    ChallTestSrvDns.made.clear()
    registry = SolverRegistry()  # the installed entry points (http-01)
    registry.register("dns-01.challtestsrv", ChallTestSrvDns)
    tokens = TokenStore()
    proxy = Proxy(CertBook(), tokens)
    await proxy.start("127.0.0.1", pebble.http_port, None)
    try:
        account = Account(issuer(pebble), MemoryAccountStore(), verify=pebble.api_ca)
        bound = registry.bind(SolverContext(tokens, ("127.0.0.1", pebble.http_port)))
        session = OrderSession(spec(hosts), account, bound, MemoryOrderJournal(),
                               poll_min=0.05, poll_max=0.5)
        fullchain = await asyncio.to_thread(drive, session, time.monotonic() + 60)
    finally:
        await proxy.close(grace=0.5)
    cert = x509.load_pem_x509_certificate(fullchain)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == sorted(hosts)

    (dns01,) = ChallTestSrvDns.made
    presented = {c.identifier: c for c in dns01.presented}
    assert set(presented) == {"dns.solvers.test", "*.dns.solvers.test"}  # not web.: HTTP-01
    apex, wildcard = presented["dns.solvers.test"], presented["*.dns.solvers.test"]
    assert apex.dns01_record_name == wildcard.dns01_record_name == \
        "_acme-challenge.dns.solvers.test"
    assert apex.dns01_txt_value != wildcard.dns01_txt_value
    assert {c.dns01_txt_value for c in dns01.cleaned} == {apex.dns01_txt_value,
                                                         wildcard.dns01_txt_value}
    assert dns01.txt("_acme-challenge.dns.solvers.test") == set()
    assert len(tokens) == 0  # the HTTP-01 token of web. is cleaned up too

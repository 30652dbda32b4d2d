"""The propagation check against real nameservers: a primary BIND that takes the updates and
a second BIND serving a stale copy of the same zone (a secondary that never gets the record);
CNAME delegation into a second zone."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import bindctl
import pebblectl
import pytest

from certop.core.errors import ConfigError
from certop.core.models import SolverSpec
from solvers.base import Challenge, SolverContext
from solvers.dns01 import propagation
from solvers.dns01.provider import Where
from solvers.dns01.rfc2136 import Rfc2136Provider
from solvers.dns01.rfc2136 import provider as rfc2136
from solvers.dns01.solver import Dns01Solver, build
from solvers.http01.tokens import TokenStore

ZONE, DELEGATED = "example.test", "delegated.test"
KEY, OTHER_KEY = "certop-key", "delegate-key"
SECRETS = {KEY: os.urandom(32), OTHER_KEY: os.urandom(32)}
WHERE = Where("Issuer dns", "spec.acme.solvers[0].dns01.rfc2136")
BLOCK = Where("Issuer dns", "spec.acme.solvers[0].dns01")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[bindctl.BindInfo, bindctl.BindInfo]]:
    zones = [bindctl.Zone(ZONE, KEY, records=[
                 "_acme-challenge.app 60 CNAME _acme-challenge.app.delegated.test.",
                 "_acme-challenge.loop 60 CNAME _acme-challenge.loop2.example.test.",
                 "_acme-challenge.loop2 60 CNAME _acme-challenge.loop.example.test."]),
             bindctl.Zone(DELEGATED, OTHER_KEY)]
    with bindctl.running(tmp_path_factory.mktemp("primary"), zones, SECRETS) as primary, \
            bindctl.running(tmp_path_factory.mktemp("stale"), zones, SECRETS) as stale:
        yield primary, stale


def update(bind: bindctl.BindInfo, key: str = KEY) -> Rfc2136Provider:
    return rfc2136({"nameserver": bind.nameserver, "tsigKeyName": key,
                    "tsigAlgorithm": "HMACSHA256",
                    "tsigSecretSecretRef": {"name": "tsig", "key": "secret"}}, WHERE,
                   lambda name, k: base64.b64encode(SECRETS[key]))


def server(bind: bindctl.BindInfo) -> propagation.Server:
    return bind.host, bind.port


def test_a_value_is_seen_on_every_server_or_the_lagging_one_is_named(
        servers: tuple[bindctl.BindInfo, bindctl.BindInfo]) -> None:
    primary, stale = servers
    name = f"_acme-challenge.web.{ZONE}"

    async def run() -> None:
        before = await propagation.check([server(primary)], name, "v1")
        assert not before.visible
        assert before.detail == (f"nameserver {primary.nameserver} serves no TXT value at "
                                 f"{name}")
        await update(primary).present(name, "v1")
        await update(primary).present(name, "other")
        assert (await propagation.check([server(primary)], name, "v1")).visible
        both = await propagation.check([server(primary), server(stale)], name, "v1")
        assert not both.visible and both.detail.startswith(f"nameserver {stale.nameserver}")
        await update(primary).cleanup(name, "v1")
        gone = await propagation.check([server(primary)], name, "v1")
        assert gone.detail.endswith(f'serves only "other" at {name}')
        await update(primary).cleanup(name, "other")

    asyncio.run(run())


def test_a_nameserver_that_does_not_answer_is_named_with_why(
        servers: tuple[bindctl.BindInfo, bindctl.BindInfo]) -> None:
    import pebblectl

    port = pebblectl.free_udp_tcp_port()
    seen = asyncio.run(propagation.check([("127.0.0.1", port)], f"_acme-challenge.{ZONE}",
                                         "v", timeout=0.3))
    assert not seen.visible and seen.detail.startswith(f"nameserver 127.0.0.1:{port} serves "
                                                       "no answer")


def test_cnames_are_followed_into_the_delegated_zone_and_loops_refused(
        servers: tuple[bindctl.BindInfo, bindctl.BindInfo]) -> None:
    primary, _ = servers

    async def run() -> None:
        target = await propagation.follow_cname(server(primary),
                                                f"_acme-challenge.app.{ZONE}")
        assert target == f"_acme-challenge.app.{DELEGATED}"
        # Only the delegated zone's key may write there; the value shows at the target.
        await update(primary, OTHER_KEY).present(target, "delegated")
        assert (await propagation.check([server(primary)], target, "delegated")).visible
        await update(primary, OTHER_KEY).cleanup(target, "delegated")
        plain = f"_acme-challenge.plain.{ZONE}"
        assert await propagation.follow_cname(server(primary), plain) == plain
        with pytest.raises(ValueError, match="CNAME loop"):
            await propagation.follow_cname(server(primary), f"_acme-challenge.loop.{ZONE}")

    asyncio.run(run())


def _solver(primary: bindctl.BindInfo, checked: tuple[propagation.Server, ...] = (),
            follow: bool = False, key: str = KEY) -> Dns01Solver:
    spec = SolverSpec("dns-01", provider="rfc2136", config={
        "cnameStrategy": "Follow" if follow else "None",
        "rfc2136": {"nameserver": primary.nameserver, "tsigKeyName": key,
                    "tsigAlgorithm": "HMACSHA256",
                    "tsigSecretSecretRef": {"name": "tsig", "key": "secret"}}})
    context = SolverContext(tokens=TokenStore(), dns01_nameservers=checked,
                            secrets=lambda name, k: base64.b64encode(SECRETS[key]))
    return build(spec, context, BLOCK, {"rfc2136": rfc2136})


def test_the_solver_presents_checks_against_every_server_and_cleans_up(
        servers: tuple[bindctl.BindInfo, bindctl.BindInfo]) -> None:
    primary, stale = servers
    challenge = Challenge("*.shop.example.test", "dns-01", "tok", "tok.thumb")
    name = challenge.dns01_record_name
    # By default the update server itself is asked.
    solver = _solver(primary)
    solver.present(challenge)
    assert solver.check(challenge) and solver.last_check == ""
    # Given both servers, the stale one is named with what it serves.
    both = _solver(primary, (server(primary), server(stale)))
    assert not both.check(challenge)
    assert both.last_check == f"nameserver {stale.nameserver} serves no TXT value at {name}"
    solver.cleanup(challenge)
    solver.cleanup(challenge)
    assert not solver.check(challenge)


def test_the_solver_follows_a_cname_into_a_zone_its_key_may_update(
        servers: tuple[bindctl.BindInfo, bindctl.BindInfo]) -> None:
    primary, _ = servers
    challenge = Challenge("app.example.test", "dns-01", "tok2", "tok2.thumb")
    solver = _solver(primary, follow=True, key=OTHER_KEY)
    solver.present(challenge)
    target = f"_acme-challenge.app.{DELEGATED}"
    assert asyncio.run(propagation.served(server(primary), target)) == \
        {challenge.dns01_txt_value}
    assert solver.check(challenge)
    solver.cleanup(challenge)
    assert asyncio.run(propagation.served(server(primary), target)) == set()


def test_an_unknown_provider_or_strategy_names_the_field(
        servers: tuple[bindctl.BindInfo, bindctl.BindInfo]) -> None:
    context = SolverContext(tokens=TokenStore())
    with pytest.raises(ConfigError, match="a DNS provider certop has \\(rfc2136\\), not "
                                          "'route99'"):
        build(SolverSpec("dns-01", provider="route99", config={"route99": {}}), context,
              BLOCK, {"rfc2136": rfc2136})
    primary, _ = servers
    spec = SolverSpec("dns-01", provider="rfc2136", config={
        "cnameStrategy": "Sometimes",
        "rfc2136": {"nameserver": primary.nameserver, "tsigKeyName": KEY,
                    "tsigSecretSecretRef": {"name": "tsig", "key": "secret"}}})
    secrets = SolverContext(tokens=TokenStore(),
                            secrets=lambda name, k: base64.b64encode(SECRETS[KEY]))
    with pytest.raises(ConfigError) as info:
        build(spec, secrets, BLOCK, {"rfc2136": rfc2136})
    assert info.value.field == f"{BLOCK.field}.cnameStrategy"


def test_an_exec_hook_runs_only_if_the_operator_allows_its_program(
        servers: tuple[bindctl.BindInfo, bindctl.BindInfo]) -> None:
    """A hook runs with certop's rights: an issuer alone cannot make certop run a program
    (a tenant's Issuer in a cluster never: its context allows nothing)."""
    from solvers.dns01.command import provider as exec_provider

    primary, _ = servers
    spec = SolverSpec("dns-01", provider="exec",
                      config={"exec": {"command": ["/bin/sh", "-c", "touch /tmp/pwned"]}})
    factories = {"exec": exec_provider}
    tenant = SolverContext(tokens=TokenStore(), dns01_nameservers=(server(primary),))
    with pytest.raises(ConfigError) as info:
        build(spec, tenant, BLOCK, factories)
    assert info.value.field == f"{BLOCK.field}.exec.command"
    assert "--dns01-exec-allow" in info.value.expected
    allowed = SolverContext(tokens=TokenStore(), dns01_nameservers=(server(primary),),
                            exec_allowed=("/bin/sh",))
    assert build(spec, allowed, BLOCK, factories).provider is not None


NS_ZONE = "ns.test"


@pytest.fixture(scope="module")
def ns_set(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[bindctl.BindInfo, bindctl.BindInfo]]:
    """A hidden primary that takes the updates, and zone ns.test's NS set: ns1 (127.0.0.1,
    served by a second BIND holding a stale copy: it never gets the updates) and ns3
    (127.0.0.3, where nothing answers). The NS set's servers are asked on the second BIND's
    port, as NS records name servers on port 53."""
    zone = bindctl.Zone(NS_ZONE, KEY, records=["@ 60 NS ns3.ns.test.", "ns3 60 A 127.0.0.3"])
    with bindctl.running(tmp_path_factory.mktemp("hidden"), [zone], SECRETS) as primary, \
            bindctl.running(tmp_path_factory.mktemp("ns1"), [zone], SECRETS) as stale:
        yield primary, stale


def test_the_update_server_and_the_servers_its_ns_set_names_that_answer_are_checked(
        ns_set: tuple[bindctl.BindInfo, bindctl.BindInfo]) -> None:
    """Without --dns01-nameservers: the update server, plus every server of the zone's NS
    set that answers for the zone (ns3 does not: left out); the stale one is named."""
    from solvers.dns01.authorities import Authorities

    primary, stale = ns_set
    name = f"_acme-challenge.app.{NS_ZONE}"
    authorities = Authorities(update_server=server(primary), port=stale.port, timeout=0.5)
    assert asyncio.run(authorities.servers(name)) == (server(primary), server(stale))
    solver = Dns01Solver(update(primary), authorities)
    challenge = Challenge(f"app.{NS_ZONE}", "dns-01", "tok3", "tok3.thumb")
    solver.present(challenge)
    try:
        assert not solver.check(challenge)
        assert solver.last_check == (f"nameserver {stale.nameserver} serves no TXT value at "
                                     f"{name}")
    finally:
        solver.cleanup(challenge)
    assert asyncio.run(propagation.served(server(primary), name)) == set()


def test_without_an_update_server_the_resolver_finds_the_zones_servers(
        ns_set: tuple[bindctl.BindInfo, bindctl.BindInfo]) -> None:
    """The last resort (a provider with an HTTP API): the zone by SOA, its NS set and their
    addresses through the resolver (here the loopback BIND: no query leaves loopback), then
    those that answer; none answering is a clear error asking for --dns01-nameservers."""
    from certop.core.errors import TemporaryError
    from solvers.dns01.authorities import Authorities

    primary, stale = ns_set
    name = f"_acme-challenge.app.{NS_ZONE}"
    authorities = Authorities(resolver=[server(primary)], port=stale.port, timeout=0.5)
    assert asyncio.run(authorities.servers(name)) == (server(stale),)
    port = pebblectl.free_udp_tcp_port()
    nobody = Authorities(resolver=[server(primary)], port=port, timeout=0.5)
    with pytest.raises(TemporaryError) as refused:
        asyncio.run(nobody.servers(name))
    assert str(refused.value) == (
        f"no authoritative nameserver of zone {NS_ZONE} answers from here (asked: "
        f"127.0.0.1:{port}, 127.0.0.3:{port}); give the nameservers to check with "
        "--dns01-nameservers")


@pytest.mark.slow
def test_an_order_whose_value_a_secondary_never_serves_fails_naming_it_and_leaves_no_record(
        tmp_path: Path, ns_set: tuple[bindctl.BindInfo, bindctl.BindInfo]) -> None:
    """The order driver against Pebble: the value never reaches ns1 (the stale secondary),
    so the self-check rounds end (bounded) in an error naming that server and what it
    serves, the CA is never asked to validate, and the records are removed from the
    primary after the failure."""
    from certop.acme.accounts import Account
    from certop.acme.orders import OrderSession
    from certop.core import issuers
    from certop.core.errors import ChallengeFailed
    from certop.core.models import CertificateSpec, Fqdn, SecretName
    from certop.store.memory import MemoryAccountStore, MemoryOrderJournal
    from solvers.dns01.authorities import Authorities
    from solvers.registry import SolverRegistry

    primary, stale = ns_set
    record = f"_acme-challenge.{NS_ZONE}"
    with pebblectl.running(tmp_path / "pebble", http_port=pebblectl.free_port(),
                           dns_server=primary.nameserver) as pebble:
        issuer = issuers.parse_issuer({
            "apiVersion": "certop.dev/v1", "kind": "ClusterIssuer", "metadata": {"name": "dns"},
            "spec": {"acme": {"server": pebble.directory_url, "solvers": [{"dns01": {
                "rfc2136": {}}}]}}}, "issuer.yaml", lambda namespace, name: None)

        def solver(spec: SolverSpec, context: SolverContext) -> Dns01Solver:
            return Dns01Solver(update(primary), Authorities(
                update_server=server(primary), port=stale.port, timeout=0.5))

        spec = CertificateSpec(namespace="default", secret_name=SecretName("ns-tls"),
                               hosts=(Fqdn(f"*.{NS_ZONE}"), Fqdn(NS_ZONE)), issuer="dns")
        session = OrderSession(
            spec, Account(issuer, MemoryAccountStore(), verify=pebble.api_ca),
            SolverRegistry({"dns-01": solver}).bind(SolverContext(TokenStore())),
            MemoryOrderJournal(), poll_min=0.05, poll_max=0.2)
        try:
            with pytest.raises(ChallengeFailed) as failed:
                while not (step := session.step()).done:
                    time.sleep(step.after)  # the order's next check, as the runners do
        finally:
            session.cleanup()
        assert (f"self-check failed: the dns-01 challenge is not visible: nameserver "
                f"{stale.nameserver} serves no TXT value at {record}") in str(failed.value)
        assert asyncio.run(propagation.served(server(primary), record)) == set()

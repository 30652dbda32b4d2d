"""The solver seam: the Challenge value, the registry of solver factories and its entry points."""

from __future__ import annotations

from importlib import metadata

import josepy as jose
import pytest
from acme import challenges
from cryptography.hazmat.primitives.asymmetric import ec

from certop.core.models import SolverSelector, SolverSpec
from solvers.base import Challenge, ClusterContext, SolverContext
from solvers.dns01.factory import dns01_solver
from solvers.http01 import Http01Solver, TokenStore
from solvers.http01.factory import http01_solver
from solvers.http01.ingress import IngressSolver
from solvers.registry import ENTRY_POINT_GROUP, SolverRegistry

JWK = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def test_a_dns01_challenge_names_its_record_and_txt_value_as_rfc_8555_says() -> None:
    """Checked against the `acme` library's own DNS-01 computation (RFC 8555 section 8.4)."""
    chall = challenges.DNS01(token=b"\x01" * 32)
    key_authorization = chall.key_authorization(JWK)
    apex = Challenge("example.com", "dns-01", chall.encode("token"), key_authorization)
    assert apex.dns01_txt_value == chall.validation(JWK)
    assert apex.dns01_record_name == chall.validation_domain_name("example.com")
    assert "=" not in apex.dns01_txt_value


def test_a_wildcard_and_its_apex_share_the_record_but_not_the_value() -> None:
    wildcard = Challenge("*.example.com", "dns-01", "tok1", "tok1.thumb")
    apex = Challenge("example.com", "dns-01", "tok2", "tok2.thumb")
    assert wildcard.dns01_record_name == apex.dns01_record_name == "_acme-challenge.example.com"
    assert wildcard.dns01_txt_value != apex.dns01_txt_value


class ThirdPartyDns:
    """A solver class as a third-party package would register it: (spec, context) -> solver."""

    challenge_type = "dns-01"

    def __init__(self, spec: SolverSpec, context: SolverContext) -> None:
        self.spec = spec
        self.context = context

    def present(self, challenge: Challenge) -> None: ...

    def check(self, challenge: Challenge) -> bool:
        return True

    def cleanup(self, challenge: Challenge) -> None: ...


RFC2136 = SolverSpec("dns-01", SolverSelector(dns_zones=("example.com",)), provider="rfc2136",
                     config={"rfc2136": {"nameserver": "127.0.0.1:53"}})


def test_a_registered_third_party_solver_class_is_built_for_its_block_with_its_config() -> None:
    registry = SolverRegistry({})
    bound = registry.bind(SolverContext(TokenStore()))
    assert bound.solver(RFC2136) is None  # nothing for dns-01 yet
    registry.register("dns-01.rfc2136", ThirdPartyDns)
    solver = bound.solver(RFC2136)
    assert isinstance(solver, ThirdPartyDns)
    assert solver.spec.config == {"rfc2136": {"nameserver": "127.0.0.1:53"}}
    assert bound.solver(RFC2136) is solver  # one solver per block and certificate
    assert registry.challenge_types == ("dns-01",)


def test_the_most_specific_name_wins() -> None:
    class Generic(ThirdPartyDns):
        pass

    registry = SolverRegistry({"dns-01": Generic})
    other = SolverSpec("dns-01", provider="cloudflare")
    assert type(registry.bind(SolverContext(TokenStore())).solver(RFC2136)) is Generic
    registry.register("dns-01.rfc2136", ThirdPartyDns)
    bound = registry.bind(SolverContext(TokenStore()))
    assert type(bound.solver(RFC2136)) is ThirdPartyDns
    assert type(bound.solver(other)) is Generic


def test_http01_is_found_through_its_entry_point() -> None:
    (entry,) = [e for e in metadata.entry_points(group=ENTRY_POINT_GROUP) if e.name == "http-01"]
    assert entry.load() is http01_solver
    registry = SolverRegistry()  # the installed entry points
    assert "http-01" in registry.challenge_types
    assert "dns-01" in registry.challenge_types
    (dns,) = [e for e in metadata.entry_points(group=ENTRY_POINT_GROUP) if e.name == "dns-01"]
    assert dns.load() is dns01_solver
    tokens = TokenStore()
    solver = registry.bind(SolverContext(tokens, None)).solver(SolverSpec())
    assert isinstance(solver, Http01Solver)
    challenge = Challenge("a.test", "http-01", "tok", "tok.thumb")
    solver.present(challenge)
    assert tokens.get("tok") == "tok.thumb"
    assert solver.check(challenge)
    solver.cleanup(challenge)
    assert tokens.get("tok") is None


def test_in_cluster_http01_gets_the_blocks_class_and_path_type() -> None:
    from kubernetes import client

    from certop.core.models import PathType

    cluster = ClusterContext(client.ApiClient(), "team", "certop-solver", 8089, "asked")
    context = SolverContext(TokenStore(), None, cluster)
    picked = http01_solver(SolverSpec(http01_path_type=PathType.IMPLEMENTATION_SPECIFIC,
                                      http01_ingress_class="picked"), context)
    default = http01_solver(SolverSpec(), context)
    assert isinstance(picked, IngressSolver) and isinstance(default, IngressSolver)
    assert (picked.ingress_class, picked.path_type) == ("picked", "ImplementationSpecific")
    assert (default.ingress_class, default.path_type) == ("asked", "Exact")
    assert picked.namespace == "team" and picked.port == 8089


def test_a_solver_that_does_not_load_is_left_out(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    broken = metadata.EntryPoint("tls-alpn-01", "no_such_module_certop:Solver",
                                 ENTRY_POINT_GROUP)
    real = metadata.entry_points

    def entry_points(**kwargs: str) -> metadata.EntryPoints:
        return metadata.EntryPoints([*real(**kwargs), broken])

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    registry = SolverRegistry()
    assert registry.challenge_types == ("dns-01", "http-01")
    assert "tls-alpn-01" in caplog.text and "could not be loaded" in caplog.text


def test_a_wildcard_for_http01_or_a_name_no_selector_matches_is_refused_before_ordering() -> None:
    """RFC 8555 section 7.1.3: a CA validates a wildcard through DNS only. certop refuses one
    its issuer gives to an http01 block before the CA counts an order, naming the block; so
    is a name that no block's selector matches."""
    from certop.acme.accounts import Account
    from certop.acme.orders import OrderSession
    from certop.core.errors import ConfigError
    from certop.core.models import AcmeIssuer, CertificateSpec, Fqdn, ObjectRef, SecretName
    from certop.store.memory import MemoryAccountStore, MemoryOrderJournal

    ref = ObjectRef("ClusterIssuer", "", "ca", "issuer.yaml")
    only_zone = SolverSpec(selector=SolverSelector(dns_zones=("example.com",)))
    cases = [
        ((SolverSpec(),), "*.example.com", "spec.acme.solvers: a solver for *.example.com: "
         "a wildcard host (*.example.com) needs a DNS-01 solver; solvers[0], selected for it, "
         "is http-01"),
        ((only_zone,), "web.other.test", "spec.acme.solvers: a solver for web.other.test: "
         "no selector matches web.other.test"),
    ]
    registry = SolverRegistry()
    for blocks, host, message in cases:
        issuer = AcmeIssuer(ref, "https://127.0.0.1:1/dir", None, solvers=blocks)
        spec = CertificateSpec(namespace="default", secret_name=SecretName("t-tls"),
                               hosts=(Fqdn("www.example.com"), Fqdn(host)), issuer="ca")
        session = OrderSession(spec, Account(issuer, MemoryAccountStore(), verify=False),
                               registry.bind(SolverContext(TokenStore())),
                               MemoryOrderJournal())
        session.step()  # the key
        with pytest.raises(ConfigError) as refused:
            session.step()
        assert str(refused.value) == f"issuer.yaml: {ref}: {message}"
        assert not session.placed


def test_the_order_driver_refuses_a_block_no_registered_solver_answers() -> None:
    """Found by the registry, before the CA counts an order: a host the issuer gives to a
    block of a challenge type certop has no solver for is refused; one given to a dns01 block
    with bad settings is refused with the field named."""
    from certop.acme.accounts import Account
    from certop.acme.orders import OrderSession
    from certop.core.errors import ConfigError
    from certop.core.models import AcmeIssuer, CertificateSpec, Fqdn, ObjectRef, SecretName
    from certop.store.memory import MemoryAccountStore, MemoryOrderJournal

    alpn = SolverSpec("tls-alpn-01", SolverSelector(dns_zones=("example.com",)))
    issuer = AcmeIssuer(ObjectRef("ClusterIssuer", "", "ca", "issuer.yaml"),
                        "https://127.0.0.1:1/dir", None, solvers=(SolverSpec(), alpn))
    spec = CertificateSpec(namespace="default", secret_name=SecretName("t-tls"),
                           hosts=(Fqdn("web.other.test"), Fqdn("www.example.com")), issuer="ca")
    registry = SolverRegistry()
    session = OrderSession(spec, Account(issuer, MemoryAccountStore(), verify=False),
                           registry.bind(SolverContext(TokenStore())), MemoryOrderJournal())
    session.step()  # the key
    with pytest.raises(ConfigError) as failed:
        session.step()
    assert str(failed.value) == (
        f"issuer.yaml: {issuer.ref}: spec.acme.solvers[1]: a solver certop runs "
        "here (dns-01, http-01) for www.example.com, not tls-alpn-01")
    assert not session.placed
    bad = SolverSpec("dns-01", RFC2136.selector, provider="rfc2136", config=RFC2136.config,
                     origin=("issuer.yaml", "ClusterIssuer ca", "spec.acme.solvers[1].dns01"))
    issuer = AcmeIssuer(issuer.ref, issuer.server, None, solvers=(SolverSpec(), bad))
    session = OrderSession(spec, Account(issuer, MemoryAccountStore(), verify=False),
                           registry.bind(SolverContext(TokenStore())), MemoryOrderJournal())
    session.step()
    with pytest.raises(ConfigError) as refused:
        session.step()
    assert str(refused.value).startswith("issuer.yaml: ClusterIssuer ca: "
                                         "spec.acme.solvers[1].dns01.rfc2136.tsigKeyName: ")
    assert not session.placed

from __future__ import annotations

from typing import Any

from certop.core.models import CertificateSpec, Fqdn, SecretName
from certop.core.shim import Act, Owner, certificate_spec, plan

WEB = Owner("web", "uid-web")
SHOP = Owner("shop", "uid-shop")


def spec(secret: str, *hosts: str) -> CertificateSpec:
    return CertificateSpec("ns", SecretName(secret), tuple(Fqdn(h) for h in sorted(hosts)), "le")


def existing(s: CertificateSpec, *owners: Owner) -> dict[str, Any]:
    return {"metadata": {"name": s.secret_name,
                         "ownerReferences": [o.reference() for o in owners]},
            "spec": certificate_spec(s)}


def test_a_missing_certificate_is_created_owned_by_the_ingress() -> None:
    (action,) = plan(WEB, [spec("web-tls", "a.test")], {})
    assert action.act is Act.CREATE and action.body is not None
    assert action.body["metadata"]["ownerReferences"][0]["uid"] == "uid-web"
    assert action.body["spec"]["dnsNames"] == ["a.test"]
    assert action.body["spec"]["issuerRef"] == {"name": "le", "kind": "ClusterIssuer",
                                                "group": "certop.dev"}


def test_nothing_to_do_when_it_matches() -> None:
    s = spec("web-tls", "a.test")
    assert plan(WEB, [s], {"web-tls": existing(s, WEB)}) == []


def test_an_identical_certificate_of_another_ingress_is_shared() -> None:
    s = spec("web-tls", "a.test")
    (action,) = plan(WEB, [s], {"web-tls": existing(s, SHOP)})
    assert action.act is Act.ADOPT and action.body is not None
    assert [r["uid"] for r in action.body["metadata"]["ownerReferences"]] == ["uid-shop",
                                                                             "uid-web"]


def test_changed_hosts_update_a_certificate_only_this_ingress_owns() -> None:
    (action,) = plan(WEB, [spec("web-tls", "a.test", "b.test")],
                     {"web-tls": existing(spec("web-tls", "a.test"), WEB)})
    assert action.act is Act.UPDATE and action.body is not None
    assert action.body["spec"]["dnsNames"] == ["a.test", "b.test"]


def test_other_hosts_on_a_certificate_another_ingress_owns_is_a_conflict() -> None:
    (action,) = plan(WEB, [spec("web-tls", "b.test")],
                     {"web-tls": existing(spec("web-tls", "a.test"), SHOP)})
    assert action.act is Act.CONFLICT and action.others == ("shop",)
    assert "Ingress shop" in action.message


def test_a_dropped_tls_entry_deletes_or_releases() -> None:
    alone = existing(spec("old-tls", "a.test"), WEB)
    shared = existing(spec("shared-tls", "s.test"), WEB, SHOP)
    foreign = existing(spec("theirs-tls", "t.test"), SHOP)
    actions = plan(WEB, [], {"old-tls": alone, "shared-tls": shared, "theirs-tls": foreign})
    assert [(a.act, a.name) for a in actions] == [(Act.DELETE, "old-tls"),
                                                  (Act.RELEASE, "shared-tls")]
    release = actions[1].body
    assert release is not None
    assert [r["uid"] for r in release["metadata"]["ownerReferences"]] == ["uid-shop"]


def test_the_asking_ingress_class_travels_on_the_certificate() -> None:
    (action,) = plan(WEB, [spec("web-tls", "a.test")], {}, ingress_class="nginx")
    assert action.body is not None
    assert action.body["metadata"]["annotations"] == {"certop.dev/http01-ingress-class": "nginx"}


def test_renew_before_and_rotation_policy_travel_and_a_dropped_one_is_removed() -> None:
    import datetime as dt
    from dataclasses import replace

    plain = spec("web-tls", "a.test")
    asked = replace(plain, renew_before=dt.timedelta(hours=720), reuse_key=True)
    (create,) = plan(WEB, [asked], {})
    assert create.body is not None
    assert create.body["spec"]["renewBefore"] == "720h0m0s"
    assert create.body["spec"]["privateKey"]["rotationPolicy"] == "Never"
    assert plan(WEB, [asked], {"web-tls": existing(asked, WEB)}) == []
    (update,) = plan(WEB, [plain], {"web-tls": existing(asked, WEB)})
    assert update.act is Act.UPDATE and update.body is not None
    assert update.body["spec"]["renewBefore"] is None  # merge patch: removed
    assert update.body["spec"]["privateKey"]["rotationPolicy"] == "Always"

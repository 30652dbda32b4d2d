"""The shim's Certificate cache: newest version wins, the owner index follows every change."""

from __future__ import annotations

from typing import Any

from certop.k8s.cache import CertificateCache


def cert(name: str, rv: str, *owners: str, ns: str = "shop") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                         "managedFields": [{"big": "x" * 100}],
                         "ownerReferences": [{"kind": "Ingress", "name": o, "uid": o}
                                             for o in owners]},
            "spec": {"secretName": name}, "status": {"conditions": []}}


def test_an_older_version_never_replaces_a_newer_one() -> None:
    cache = CertificateCache()
    cache.put(cert("a", "5", "u1"))
    cache.observe("MODIFIED", cert("a", "4"))  # a late event
    assert cache.for_owner("shop", "u1", []) == {"a": cache.get("shop", "a")}
    cache.observe("MODIFIED", cert("a", "6", "u2"))
    assert cache.for_owner("shop", "u1", []) == {}
    assert list(cache.for_owner("shop", "u2", [])) == ["a"]


def test_records_are_compact_and_deletes_unindex() -> None:
    cache = CertificateCache()
    cache.fill("shop", [cert("a", "1", "u1"), cert("b", "2", "u1"), cert("c", "3", "u1",
                                                                        ns="other")])
    assert cache.filled("shop") and not cache.filled("elsewhere")
    record = cache.get("shop", "a")
    assert record is not None and "status" not in record
    assert "managedFields" not in record["metadata"]
    assert sorted(cache.for_owner("shop", "u1", ["z"])) == ["a", "b"]  # not other's, no z
    cache.observe("DELETED", cert("a", "7", "u1"))
    assert sorted(cache.for_owner("shop", "u1", [])) == ["b"]
    assert cache.owns_any("u1")
    cache.remove("shop", "b")
    cache.remove("other", "c")
    assert not cache.owns_any("u1") and len(cache) == 0


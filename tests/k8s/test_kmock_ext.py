"""The emulator subclass behaves like an API server where kopf and certop rely on it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kmock_ext import OPERATOR_TOKEN, OPERATOR_USER, rule_allows, verb_of
from kube import EmulatorThread
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException


@pytest.fixture(scope="module")
def kube() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        yield emulator


def secret(name: str = "", generate: str = "") -> client.V1Secret:
    return client.V1Secret(metadata=client.V1ObjectMeta(name=name or None,
                                                        generate_name=generate or None),
                           data={"k": "dg=="})


def test_create_stamps_identity_and_fills_namespace_and_generate_name(
        kube: EmulatorThread) -> None:
    api = kube.core()
    made = api.create_namespaced_secret("ns-a", secret("one"))
    assert made.metadata.namespace == "ns-a"
    assert made.metadata.uid and made.metadata.creation_timestamp
    assert int(made.metadata.resource_version) > 0
    generated = api.create_namespaced_secret("ns-a", secret(generate="tmp-"))
    assert generated.metadata.name.startswith("tmp-") and len(generated.metadata.name) == 9
    with pytest.raises(ApiException) as info:
        api.create_namespaced_secret("ns-a", secret("one"))
    assert info.value.status == 409


def test_patches_bump_the_version_and_stale_versions_conflict(kube: EmulatorThread) -> None:
    api = kube.core()
    made = api.create_namespaced_secret("ns-b", secret("two"))
    rv = made.metadata.resource_version
    patched = api.patch_namespaced_secret("two", "ns-b", {"metadata": {"resourceVersion": rv},
                                                          "data": {"k": "dw=="}})
    assert int(patched.metadata.resource_version) > int(rv)
    with pytest.raises(ApiException) as info:
        api.patch_namespaced_secret("two", "ns-b", {"metadata": {"resourceVersion": rv},
                                                    "data": {"k": "eA=="}})
    assert info.value.status == 409
    assert api.read_namespaced_secret("two", "ns-b").data == {"k": "dw=="}


def test_a_failed_json_patch_test_is_422(kube: EmulatorThread) -> None:
    api = kube.core()
    made = api.create_namespaced_secret("ns-c", secret("three"))
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "stale"},
           {"op": "replace", "path": "/data/k", "value": "eQ=="}]
    with pytest.raises(ApiException) as info:
        api.patch_namespaced_secret("three", "ns-c", ops)
    assert info.value.status == 422
    ok = [{"op": "test", "path": "/metadata/resourceVersion",
           "value": made.metadata.resource_version},
          {"op": "replace", "path": "/data/k", "value": "eQ=="}]
    patched = api.patch_namespaced_secret("three", "ns-c", ok)
    assert patched.data == {"k": "eQ=="}
    assert int(patched.metadata.resource_version) > int(made.metadata.resource_version)


def test_a_watch_from_a_listed_version_sees_only_what_came_after(kube: EmulatorThread) -> None:
    api = kube.core()
    api.create_namespaced_secret("ns-d", secret("before"))
    listed = api.list_namespaced_secret("ns-d")
    assert [s.metadata.name for s in listed.items] == ["before"]
    seen: list[tuple[str, str]] = []
    started = threading.Event()

    def follow() -> None:
        w = watch.Watch()
        started.set()
        for event in w.stream(api.list_namespaced_secret, "ns-d",
                              resource_version=listed.metadata.resource_version,
                              _request_timeout=10):
            seen.append((event["type"], event["object"].metadata.name))
            if event["object"].metadata.name == "after":
                w.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    started.wait(5)
    # The watch may or may not be connected yet: either way "after" must arrive exactly once.
    api.create_namespaced_secret("ns-d", secret("after"))
    thread.join(15)
    assert seen == [("ADDED", "after")]


def test_the_request_history_stays_bounded(kube: EmulatorThread) -> None:
    api = kube.core()
    for _ in range(50):
        api.list_namespaced_secret("ns-e")
    assert len(kube.emulator._requests) <= 2


def test_core_discovery_names_its_group_version_like_an_api_server(
        kube: EmulatorThread) -> None:
    import json
    import urllib.request

    request = urllib.request.Request(kube.url + "/api/v1",
                                     headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert json.loads(resp.read())["groupVersion"] == "v1"


def test_namespaces_are_objects_of_their_own_and_namespaced_paths_still_work(
        kube: EmulatorThread) -> None:
    api = kube.core()
    made = api.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": "team-a"}})
    assert made.metadata.name == "team-a" and made.metadata.uid
    assert made.metadata.namespace is None
    assert api.read_namespace("team-a").metadata.uid == made.metadata.uid
    assert "team-a" in [n.metadata.name for n in api.list_namespace().items]
    with pytest.raises(ApiException) as info:
        api.read_namespace("team-b")
    assert info.value.status == 404
    # A Secret in the namespace is still under /api/v1/namespaces/team-a/secrets.
    api.create_namespaced_secret("team-a", secret("inside"))
    assert api.read_namespaced_secret("inside", "team-a").metadata.namespace == "team-a"
    api.delete_namespace("team-a")
    with pytest.raises(ApiException) as info:
        api.read_namespace("team-a")
    assert info.value.status == 404


# -- authentication and RBAC, as manifests/base/rbac.yaml grants it ------------------------


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def test_no_or_an_unknown_token_is_401(kube: EmulatorThread) -> None:
    for token in ("", "guessed"):
        api = client.CoreV1Api(kube.api_client(token))
        with pytest.raises(ApiException) as info:
            api.list_namespaced_secret("ns-auth")
        assert info.value.status == 401


def test_the_operator_gets_what_the_manifests_grant_and_403_for_the_rest(
        kube: EmulatorThread) -> None:
    admin = kube.core()
    admin.create_namespaced_secret("ns-rbac", secret("theirs"))
    operator = client.CoreV1Api(kube.operator_client())
    # Granted: Secrets read by name, created, patched, listed and watched (certop asks for
    # its own only, by label: RBAC cannot say so).
    assert operator.read_namespaced_secret("theirs", "ns-rbac").metadata.name == "theirs"
    operator.create_namespaced_secret("ns-rbac", secret("mine"))
    operator.patch_namespaced_secret("mine", "ns-rbac", {"data": {"k": "eQ=="}})
    operator.list_namespaced_secret("ns-rbac", label_selector="certop.dev/managed=true")
    kube.denials_expected = True
    before = len(kube.emulator.denied)
    # Not granted: deleting Secrets, anything on Pods, writing Ingresses.
    for call in (lambda: operator.delete_namespaced_secret("mine", "ns-rbac"),
                 lambda: operator.list_namespaced_pod("ns-rbac"),
                 lambda: client.NetworkingV1Api(kube.operator_client()).patch_namespaced_ingress(
                     "web", "ns-rbac", {"metadata": {"labels": {"a": "b"}}})):
        with pytest.raises(ApiException) as info:
            call()
        assert info.value.status == 403
        status = status_of(info.value)
        assert (status["kind"], status["reason"], status["code"]) == ("Status", "Forbidden",
                                                                      403)
        assert OPERATOR_USER in status["message"]
    assert len(kube.emulator.denied) == before + 3
    assert "cannot delete resource \"secrets\"" in kube.emulator.denied[before]
    assert "cannot list resource \"pods\"" in kube.emulator.denied[before + 1]
    assert "cannot patch resource \"ingresses\"" in kube.emulator.denied[before + 2]
    # Still there: the refused delete changed nothing.
    assert admin.read_namespaced_secret("mine", "ns-rbac").data == {"k": "eQ=="}


def test_subresources_groups_and_role_namespaces_are_told_apart(kube: EmulatorThread) -> None:
    custom = client.CustomObjectsApi(kube.operator_client())
    cert = {"apiVersion": "certop.dev/v1", "kind": "Certificate",
            "metadata": {"name": "c1"}, "spec": {"secretName": "c1", "dnsNames": ["c.test"],
                                                 "issuerRef": {"name": "x"}}}
    custom.create_namespaced_custom_object("certop.dev", "v1", "ns-sub", "certificates", cert)
    custom.patch_namespaced_custom_object_status("certop.dev", "v1", "ns-sub", "certificates",
                                                 "c1", {"status": {"x": 1}})
    # The Lease Role is bound in certop's own namespace only.
    leases = client.CoordinationV1Api(kube.operator_client())
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "l1"}, "spec": {"holderIdentity": "a"}}
    leases.create_namespaced_lease("certop", lease)
    kube.denials_expected = True
    with pytest.raises(ApiException) as info:
        leases.create_namespaced_lease("elsewhere", lease)
    assert info.value.status == 403
    # Issuers are read, never written (their status neither).
    with pytest.raises(ApiException) as info:
        custom.patch_cluster_custom_object("certop.dev", "v1", "clusterissuers", "x",
                                           {"spec": {}})
    assert info.value.status == 403


def test_rule_matching_follows_the_api_servers_rules() -> None:
    rule = {"apiGroups": [""], "resources": ["secrets", "leases/status"], "verbs": ["get"],
            "resourceNames": ["one"]}
    assert rule_allows(rule, "get", "", "secrets", None, "one")
    assert not rule_allows(rule, "get", "", "secrets", None, "two")
    assert not rule_allows(rule, "get", "", "secrets", None, None)  # a list by another name
    assert not rule_allows(rule, "get", "apps", "secrets", None, "one")
    assert not rule_allows(rule, "get", "", "secrets", "status", "one")
    assert not rule_allows(rule, "get", "", "leases", None, "one")
    assert rule_allows(rule, "get", "", "leases", "status", "one")
    wild = {"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]}
    assert rule_allows(wild, "patch", "x.dev", "things", "status", None)
    assert not rule_allows(wild, "patch", "x.dev", "things", None, None)


def test_verbs_come_from_the_method_the_name_and_watch() -> None:
    from types import SimpleNamespace as R

    assert verb_of(R(method="GET", name=None, params={})) == "list"
    assert verb_of(R(method="GET", name="a", params={})) == "get"
    assert verb_of(R(method="GET", name=None, params={"watch": "true"})) == "watch"
    assert verb_of(R(method="GET", name="a", params={"watch": "1"})) == "watch"
    assert verb_of(R(method="POST", name=None, params={})) == "create"
    assert verb_of(R(method="PATCH", name="a", params={})) == "patch"
    assert verb_of(R(method="PUT", name="a", params={})) == "update"
    assert verb_of(R(method="DELETE", name="a", params={})) == "delete"
    assert verb_of(R(method="DELETE", name=None, params={})) == "deletecollection"


def test_label_and_field_selectors_are_honoured_on_list_and_watch(
        kube: EmulatorThread) -> None:
    api = kube.core()
    for name, labels in (("s-a", {"app": "a", "tier": "web"}), ("s-b", {"app": "b"}),
                         ("s-c", {})):
        body = secret(name)
        body.metadata.labels = labels
        api.create_namespaced_secret("ns-sel", body)

    def names(**kwargs: Any) -> list[str]:
        return sorted(s.metadata.name for s in api.list_namespaced_secret("ns-sel",
                                                                          **kwargs).items)

    assert names(label_selector="app=a") == ["s-a"]
    assert names(label_selector="app!=a") == ["s-b", "s-c"]
    assert names(label_selector="app") == ["s-a", "s-b"]
    assert names(label_selector="!app") == ["s-c"]
    assert names(label_selector="app in (a, b),tier notin (db)") == ["s-a", "s-b"]
    assert names(label_selector="app=a,tier=db") == []
    assert names(field_selector="metadata.name=s-b") == ["s-b"]
    listed = api.list_namespaced_secret("ns-sel", label_selector="app=b")
    seen: list[str] = []
    w = watch.Watch()
    for event in w.stream(api.list_namespaced_secret, "ns-sel", label_selector="app=b",
                          resource_version="0", _request_timeout=10):
        seen.append(event["object"].metadata.name)
        if len(seen) == 1:
            later = secret("s-d")
            later.metadata.labels = {"app": "c"}
            api.create_namespaced_secret("ns-sel", later)  # not selected: never seen
            later = secret("s-e")
            later.metadata.labels = {"app": "b"}
            api.create_namespaced_secret("ns-sel", later)
        if event["object"].metadata.name == "s-e":
            w.stop()
    assert seen == ["s-b", "s-e"]
    assert listed.items[0].metadata.name == "s-b"


def test_field_selectors_name_namespace_and_secret_type(kube: EmulatorThread) -> None:
    api = kube.core()
    for namespace, name, kind in (("ns-fa", "t1", "kubernetes.io/tls"), ("ns-fa", "o1", None),
                                  ("ns-fb", "t2", "kubernetes.io/tls")):
        body = secret(name)
        body.type = kind
        api.create_namespaced_secret(namespace, body)

    def names(**kwargs: Any) -> list[str]:
        return sorted(f"{s.metadata.namespace}/{s.metadata.name}" for s in
                      api.list_secret_for_all_namespaces(**kwargs).items
                      if s.metadata.namespace in ("ns-fa", "ns-fb"))

    assert names(field_selector="type=kubernetes.io/tls") == ["ns-fa/t1", "ns-fb/t2"]
    assert names(field_selector="type!=kubernetes.io/tls") == ["ns-fa/o1"]
    assert names(field_selector="metadata.namespace=ns-fb") == ["ns-fb/t2"]
    assert names(field_selector="metadata.namespace!=ns-fb,type==kubernetes.io/tls") == \
        ["ns-fa/t1"]
    assert names(field_selector="metadata.name=t2,metadata.namespace=ns-fa") == []
    with pytest.raises(ApiException) as info:
        api.list_namespaced_secret("ns-fa", field_selector="spec.nodeName=x")
    assert info.value.status == 400
    # `type` is a field of Secrets only.
    with pytest.raises(ApiException) as info:
        client.NetworkingV1Api(kube.api_client()).list_namespaced_ingress(
            "ns-fa", field_selector="type=kubernetes.io/tls")
    assert info.value.status == 400
    seen: list[str] = []
    w = watch.Watch()
    for event in w.stream(api.list_namespaced_secret, "ns-fa",
                          field_selector="type=kubernetes.io/tls", resource_version="0",
                          _request_timeout=10):
        seen.append(event["object"].metadata.name)
        if len(seen) == 1:
            api.create_namespaced_secret("ns-fa", secret("o2"))  # Opaque: never seen
            later = secret("t3")
            later.type = "kubernetes.io/tls"
            api.create_namespaced_secret("ns-fa", later)
        if event["object"].metadata.name == "t3":
            w.stop()
    assert seen == ["t1", "t3"]


# -- the emulator's cost follows what it returns, not what it stores -------------------------


def objects_looked_at(kube: EmulatorThread, call: Callable[[], object]) -> int:
    """How many stored objects the emulator looked at during `call()`: every object its store
    handed out by a scan (kmock's ObjectsArray iterators) or through the index (`touched`)."""
    from kmock._internal import k8s_views

    seen = [0]
    originals = {m: getattr(k8s_views.ObjectsArray, m)
                 for m in ("items", "keys", "values", "__iter__")}
    index = getattr(kube.emulator.objects, "touched", [0])
    before = index[0]

    def counting(self: Any, original: Any) -> Iterator[Any]:
        for item in original(self):
            seen[0] += 1
            yield item

    try:
        for name, original in originals.items():
            setattr(k8s_views.ObjectsArray, name,
                    lambda self, _original=original: counting(self, _original))
        call()
    finally:
        for name, original in originals.items():
            setattr(k8s_views.ObjectsArray, name, original)
    return seen[0] + index[0] - before


def test_a_request_looks_only_at_what_it_returns(kube: EmulatorThread) -> None:
    import kmock

    secrets = kmock.resource("", "v1", "secrets")
    for i in range(2000):  # a big namespace beside a small one
        kube.emulator.objects[secrets, "ns-big", f"b{i}"] = {
            "metadata": {"name": f"b{i}", "namespace": "ns-big", "resourceVersion": "1",
                         "labels": {"n": str(i)}}}
    api = kube.core()
    for name in ("s1", "s2", "s3"):
        api.create_namespaced_secret("ns-small", secret(name))
    custom = kube.custom()
    custom.create_namespaced_custom_object("certop.dev", "v1", "ns-small", "certificates", {
        "apiVersion": "certop.dev/v1", "kind": "Certificate", "metadata": {"name": "c"},
        "spec": {"secretName": "c", "dnsNames": ["c.test"], "issuerRef": {"name": "x"}}})
    calls = {
        "get": lambda: api.read_namespaced_secret("s1", "ns-small"),
        "patch": lambda: api.patch_namespaced_secret("s2", "ns-small", {"data": {"k": "eA=="}}),
        "status": lambda: custom.patch_namespaced_custom_object_status(
            "certop.dev", "v1", "ns-small", "certificates", "c", {"status": {"x": 1}}),
        "create": lambda: api.create_namespaced_secret("ns-small", secret(generate="g-")),
        "list": lambda: api.list_namespaced_secret("ns-small"),
        "by label": lambda: api.list_namespaced_secret("ns-big", label_selector="n=7"),
        "by name": lambda: api.list_namespaced_secret("ns-big",
                                                      field_selector="metadata.name=b9"),
        "watch": lambda: list(watch.Watch().stream(api.list_namespaced_secret, "ns-small",
                                                   timeout_seconds=1, _request_timeout=5)),
    }
    looked = {what: objects_looked_at(kube, call) for what, call in calls.items()}
    assert all(n <= 10 for n in looked.values()), looked


def test_histories_and_the_request_log_stay_bounded(kube: EmulatorThread) -> None:
    api = kube.core()
    api.create_namespaced_secret("ns-hist", secret("h"))
    for i in range(100):
        api.patch_namespaced_secret("h", "ns-hist", {"data": {"k": f"{i:04d}"}})
    api.delete_namespaced_secret("h", "ns-hist")
    import kmock

    obj = kube.emulator.objects[kmock.resource("", "v1", "secrets"), "ns-hist", "h"]
    assert obj.deleted and obj.last.raw["data"] == {"k": "0099"}
    assert len(obj.history) <= 2
    # kmock's reactions each keep every request they served: the emulator keeps none.
    assert sum(len(payload._requests) for payload in kube.emulator._payloads) <= 2


def test_requests_are_counted_per_verb_and_resource_for_rbac_checked_users(
        kube: EmulatorThread) -> None:
    import urllib.error
    import urllib.request
    from collections import Counter

    from kmock_ext import ADMIN_TOKEN

    admin = kube.core()
    admin.create_namespaced_secret("ns-count", secret("theirs"))
    kube.emulator.reset_counts()
    operator = client.CoreV1Api(kube.operator_client())
    custom = client.CustomObjectsApi(kube.operator_client())
    operator.read_namespaced_secret("theirs", "ns-count")
    operator.read_namespaced_secret("theirs", "ns-count")
    operator.create_namespaced_secret("ns-count", secret("mine"))
    operator.patch_namespaced_secret("mine", "ns-count", {"data": {"k": "eQ=="}})
    custom.create_namespaced_custom_object("certop.dev", "v1", "ns-count", "certificates", {
        "apiVersion": "certop.dev/v1", "kind": "Certificate", "metadata": {"name": "c"},
        "spec": {"secretName": "c", "dnsNames": ["c.test"], "issuerRef": {"name": "x"}}})
    custom.patch_namespaced_custom_object_status("certop.dev", "v1", "ns-count",
                                                 "certificates", "c", {"status": {"x": 1}})
    custom.list_namespaced_custom_object("certop.dev", "v1", "ns-other", "certificates")
    events = list(watch.Watch().stream(custom.list_cluster_custom_object, "certop.dev", "v1",
                                       "certificates", timeout_seconds=1, _request_timeout=5))
    assert [e["object"]["metadata"]["name"] for e in events if
            e["object"]["metadata"]["namespace"] == "ns-count"] == ["c"]
    admin.read_namespaced_secret("theirs", "ns-count")  # the admin's are not counted
    expected = Counter({("get", "secrets"): 2, ("create", "secrets"): 1,
                        ("patch", "secrets"): 1, ("create", "certificates"): 1,
                        ("patch", "certificates/status"): 1, ("list", "certificates"): 1,
                        ("watch", "certificates"): 1})
    # One watch, however many events it carried.
    assert kube.emulator.counts == expected
    assert kube.emulator.counts_by_user[OPERATOR_USER] == expected

    def fetch(method: str, token: str) -> Any:
        request = urllib.request.Request(kube.url + "/_emulator/counts", method=method,
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())

    read = fetch("GET", ADMIN_TOKEN)
    assert sorted(map(tuple, read["counts"])) == sorted((v, r, n) for (v, r), n in
                                                        expected.items())
    assert ["get", "secrets", 1] in read["by_user"]["emulator:admin"]
    with pytest.raises(urllib.error.HTTPError) as info:
        fetch("GET", OPERATOR_TOKEN)
    assert info.value.code == 403
    info.value.close()
    fetch("DELETE", ADMIN_TOKEN)
    assert kube.emulator.counts == Counter()
    assert fetch("GET", ADMIN_TOKEN)["counts"] == []


def test_resource_requests_skip_kmocks_filter_matching(kube: EmulatorThread,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """kmock tests each request against every reaction's filters; the emulator routes a
    resource request by its action once it knows the route (no filter is evaluated)."""
    from kmock._internal import dsl

    api = kube.core()
    api.create_namespaced_secret("ns-route", secret("r"))
    api.read_namespaced_secret("r", "ns-route")
    api.list_namespaced_secret("ns-route")
    api.patch_namespaced_secret("r", "ns-route", {"data": {"k": "eQ=="}})
    matched = [0]
    original = dsl.View.__contains__

    def counting(self: Any, item: Any) -> bool:
        matched[0] += 1
        return bool(original(self, item))

    monkeypatch.setattr(dsl.View, "__contains__", counting)
    for _ in range(5):
        api.read_namespaced_secret("r", "ns-route")
        api.list_namespaced_secret("ns-route")
        api.patch_namespaced_secret("r", "ns-route", {"data": {"k": "eA=="}})
    assert matched[0] == 0
    assert api.read_namespaced_secret("r", "ns-route").data == {"k": "eA=="}

"""kmock's KubernetesEmulator, made to behave like an API server where kopf and certop need it.

Stock kmock 0.8 (pinned; this touches its internals, keep it small and tested):
- stamps no `resourceVersion`, `uid`, `creationTimestamp`, `generation`;
- ignores `generateName` and the namespace in the URL on create;
- answers a failed JSON-patch `test` (kopf's optimistic locking) with 500, not 422, and
  ignores a stale `metadata.resourceVersion` in a merge patch (should be 409);
- snapshots objects for a watch, then subscribes: writes in between are lost; it ignores
  `?resourceVersion=` and lists report no resourceVersion;
- keeps every request forever and scans them all on each new one (slow after ~1000);
- calls the core group's version "/v1" in discovery, so kubectl cannot map core kinds;
- parses `/api/v1/namespaces[/NAME]` as a namespace segment, so Namespace objects themselves
  cannot be created, read or listed (its path parser is wrapped below, once, at import);
- ignores label and field selectors on LIST and WATCH;
- authenticates nobody and grants everything: a verb missing from `manifests/base/rbac.yaml` would
  only show on a real cluster.
This subclass fixes those; `tests/k8s/test_kmock_ext.py` proves each fix.

Authentication and RBAC, as an API server does them (the subset certop meets):
- a bearer token names the user: `users` maps tokens to users; `ADMIN_TOKEN` is the test's own
  client and is granted everything (like `system:masters`); no or an unknown token is 401
  (unless `anonymous` names a user); the admin may impersonate (`Impersonate-User`);
- any other user (the operator's `OPERATOR_TOKEN` is `system:serviceaccount:certop:certop`)
  gets exactly what the Roles, ClusterRoles, RoleBindings and ClusterRoleBindings stored in the
  emulator grant it (apply `kube.rbac_documents()` to it: `apply()`), else 403 with a `Status`;
- the verb comes from the method (GET with a name: get, without: list, `?watch=true`: watch;
  POST create, PATCH patch, PUT update, DELETE delete), with the resource, the subresource
  (`certificates/status`), the API group, the namespace and `resourceNames`;
- discovery (`/api`, `/apis/...` without a resource) is open to every authenticated user;
- each refusal is kept in `denied` and logged, so a test can prove that none happened.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import itertools
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import aiobus, apps, enums, k8s, k8s_dicts, k8s_views, parsing, rendering

log = logging.getLogger("kmock_ext")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
ADMIN_TOKEN = "emulator-admin-token"
ADMIN_USER = "emulator:admin"
OPERATOR_TOKEN = "certop-operator-token"
OPERATOR_USER = "system:serviceaccount:certop:certop"
PROXY_TOKEN = "certop-proxy-token"
PROXY_USER = "system:serviceaccount:certop:certop-proxy"
ADMIN_PATH = "/_emulator"
"""The emulator's own paths (the admin's only): `/_emulator/counts`."""
RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_RESOURCES: dict[str, dict[str, Any]] = {
    f"{RBAC_GROUP}/v1/{plural}": {"kind": kind, "namespaced": namespaced,
                                  "verbs": ["get", "list", "watch", "create", "patch",
                                            "delete"]}
    for plural, kind, namespaced in (("clusterroles", "ClusterRole", False),
                                     ("clusterrolebindings", "ClusterRoleBinding", False),
                                     ("roles", "Role", True),
                                     ("rolebindings", "RoleBinding", True))}
"""Discovery for the RBAC kinds (declare them with the rest)."""
_NAMESPACE_SUBRESOURCES = ("status", "finalize")


def _parse_path(path: str, _parse: Any = parsing.parse_path) -> parsing.ParsedPath:
    """kmock's path parser, except that the cluster-scoped Namespace kind is itself a resource:
    `/api/v1/namespaces`, `/api/v1/namespaces/NAME` and its status/finalize subresources."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
            len(parts) in (3, 4) or (len(parts) == 5 and parts[4] in _NAMESPACE_SUBRESOURCES)):
        return parsing.ParsedPath(group="", version="v1", plural="namespaces", namespace=None,
                                  name=parts[3] if len(parts) > 3 else None,
                                  subresource=parts[4] if len(parts) > 4 else None)
    result: parsing.ParsedPath = _parse(path)
    return result


if parsing.parse_path.__name__ != _parse_path.__name__:
    parsing.parse_path = _parse_path


def _split_selector(text: str) -> list[str]:
    return [part.strip() for part in re.split(r",(?![^(]*\))", text) if part.strip()]


def label_matcher(text: str) -> Callable[[Mapping[str, str]], bool]:
    """A label selector (`a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`)."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for part in _split_selector(text):
        found = re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)", part)
        if found:
            key, op = found[1], found[2]
            values = {v.strip() for v in found[3].split(",")}
            if op == "in":
                checks.append(lambda ls, k=key, vs=values: ls.get(k) in vs)
            else:
                checks.append(lambda ls, k=key, vs=values: ls.get(k) not in vs)
        elif "!=" in part:
            key, value = (x.strip() for x in part.split("!=", 1))
            checks.append(lambda ls, k=key, v=value: ls.get(k) != v)
        elif "=" in part:
            key, value = (x.strip() for x in part.replace("==", "=").split("=", 1))
            checks.append(lambda ls, k=key, v=value: ls.get(k) == v)
        elif part.startswith("!"):
            absent = part[1:].strip()
            checks.append(lambda ls, k=absent: k not in ls)
        else:
            checks.append(lambda ls, k=part: k in ls)
    return lambda labels: all(check(labels) for check in checks)


FIELDS: dict[str, tuple[str, ...]] = {"secrets": ("type",)}
"""Field selectors beyond metadata.name and metadata.namespace, per resource plural (what the
API server supports for the kinds certop reads)."""


def field_matcher(text: str, plural: str | None = None) -> Callable[[Mapping[str, Any]], bool]:
    """A field selector (`=`, `==`, `!=`) over `metadata.name`, `metadata.namespace` and the
    resource's own fields in `FIELDS` (`type` on Secrets); any other field is a 400."""
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for part in _split_selector(text):
        negate = "!=" in part
        field, value = (x.strip() for x in part.replace("!=", "=").replace(
            "==", "=").split("=", 1))
        if field in ("metadata.name", "metadata.namespace"):
            attr = field.split(".", 1)[1]
            checks.append(lambda raw, a=attr, v=value, n=negate:
                          ((raw.get("metadata") or {}).get(a) == v) != n)
        elif field in FIELDS.get(plural or "", ()):
            checks.append(lambda raw, f=field, v=value, n=negate: (raw.get(f) == v) != n)
        else:
            raise kmock.KubernetesError(status=400, reason="BadRequest",
                                        message=f'"{field}" is not a known field selector: '
                                                f"only \"metadata.name\", "
                                                f"\"metadata.namespace\"" + "".join(
                                                    f', "{f}"' for f in FIELDS.get(
                                                        plural or "", ())))
    return lambda raw: all(check(raw) for check in checks)


def equal_terms(text: str, key_pattern: str = r"[^\s!=(),]+") -> dict[str, str]:
    """The `key=value` (or `key==value`) terms of a selector: what an index can answer."""
    terms: dict[str, str] = {}
    for part in _split_selector(text):
        found = re.fullmatch(rf"({key_pattern})\s*==?\s*([^\s!=(),]*)", part)
        if found:
            terms[found[1]] = found[2]
    return terms


def selected(request: Any) -> Callable[[Mapping[str, Any]], bool]:
    """The request's `labelSelector` and `fieldSelector` as one test of a raw object."""
    labels = label_matcher(str(request.params.get("labelSelector") or ""))
    plural = request.resource.plural if request.resource is not None else None
    fields = field_matcher(str(request.params.get("fieldSelector") or ""), plural)
    return lambda raw: labels((raw.get("metadata") or {}).get("labels") or {}) and fields(raw)


def verb_of(request: Any) -> str:
    """The RBAC verb of a resource request (as the API server's RequestInfo derives it)."""
    method = str(request.method.value if hasattr(request.method, "value")
                 else request.method).upper()
    if method == "GET":
        if str(request.params.get("watch") or "").lower() in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method, method.lower())


def rule_allows(rule: Mapping[str, Any], verb: str, group: str, resource: str,
                subresource: str | None, name: str | None) -> bool:
    """One PolicyRule against one request (k8s.io/apiserver rbac `RuleAllows`)."""
    verbs, groups = rule.get("verbs") or [], rule.get("apiGroups") or []
    resources, names = rule.get("resources") or [], rule.get("resourceNames") or []
    if "*" not in verbs and verb not in verbs:
        return False
    if "*" not in groups and group not in groups:
        return False
    combined = f"{resource}/{subresource}" if subresource else resource
    if not any(r == "*" or r == combined or (subresource and r == f"*/{subresource}")
               for r in resources):
        return False
    return not names or (name is not None and name in names)


def subject_matches(subject: Mapping[str, Any], user: str, groups: Iterable[str],
                    binding_namespace: str | None) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return bool(name == user)
    if kind == "Group":
        return name in groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user == f"system:serviceaccount:{namespace}:{name}"
    return False


def groups_of(user: str) -> list[str]:
    groups = ["system:authenticated"]
    if user.startswith("system:serviceaccount:"):
        namespace = user.split(":")[2]
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
    return groups


Key = tuple[Any, str | None, str]
"""(resource, namespace or None, name): how kmock keys its stored objects."""


@attrs.frozen(eq=False, order=False)
class IndexedObjects(k8s_views.ObjectsArray):  # type: ignore[misc]
    """kmock's object store (one dict of every object ever stored, soft-deleted ones kept as
    tombstones), plus what lets a request look only at what it returns: the live objects by
    resource, namespace and name, and by each label `key=value`. The emulator calls `refresh`
    for every key it writes (from its buses: a write and its event are one step under the
    lock); tests that store objects directly (`emulator.objects[...] = {...}`) are indexed by
    `__setitem__`. `refresh` also trims each object's history to its current version (and the
    last before a deletion): kmock keeps every version forever otherwise."""

    _live: dict[Any, dict[str | None, dict[str, k8s_dicts.Object]]] = attrs.field(
        factory=dict, init=False)
    _by_label: dict[tuple[Any, str, str], dict[Key, k8s_dicts.Object]] = attrs.field(
        factory=dict, init=False)
    _labels_of: dict[Key, tuple[tuple[str, str], ...]] = attrs.field(factory=dict, init=False)
    touched: list[int] = attrs.field(factory=lambda: [0], init=False)
    """How many objects the index has handed out (tests count what a request looks at)."""

    def __setitem__(self, key: Any, value: Any, /) -> None:
        super().__setitem__(key, value)
        self.refresh((k8s_views._parse_resource(key[0]), key[1], key[2]))

    def __delitem__(self, key: Any, /) -> None:
        super().__delitem__(key)
        self.refresh((k8s_views._parse_resource(key[0]), key[1], key[2]))

    def clear(self) -> None:
        super().clear()
        self._live.clear()
        self._by_label.clear()
        self._labels_of.clear()

    def stored(self, key: Key) -> k8s_dicts.Object | None:
        """The object under `key`, tombstones included (no scan)."""
        found: k8s_dicts.Object | None = self._objects.get(key)
        return found

    def resources(self) -> Iterable[Any]:
        return self._live.keys()

    def refresh(self, key: Key) -> None:
        resource, namespace, name = key
        obj = self._objects.get(key)
        scopes = self._live.setdefault(resource, {})
        for label in self._labels_of.pop(key, ()):
            same = self._by_label.get((resource, *label))
            if same is not None:
                same.pop(key, None)
                if not same:
                    del self._by_label[(resource, *label)]
        if obj is None or obj.deleted:
            names = scopes.get(namespace)
            if names is not None:
                names.pop(name, None)
                if not names:
                    del scopes[namespace]
            if obj is not None and len(obj.history) > 2:
                del obj.history[:-2]
            return
        scopes.setdefault(namespace, {})[name] = obj
        meta = obj.last.raw.get("metadata") or {}
        labels = tuple((str(k), str(v)) for k, v in (meta.get("labels") or {}).items())
        if labels:
            self._labels_of[key] = labels
            for label in labels:
                self._by_label.setdefault((resource, *label), {})[key] = obj
        if len(obj.history) > 1:
            del obj.history[:-1]

    def live(self, resource: Any, namespace: str | None, everywhere: bool, name: str | None,
             labels: Mapping[str, str]) -> list[k8s_dicts.Object]:
        """The live objects of `resource` in `namespace` (every namespace if `everywhere`),
        narrowed by `name` or by one `key=value` label, whichever the request gives: a
        candidate list for the request's selectors, as long as what it can return."""
        scopes = self._live.get(resource) or {}
        found: list[k8s_dicts.Object]
        if name is not None:
            places = scopes.values() if everywhere else [scopes.get(namespace) or {}]
            found = [obj for names in places for obj in [names.get(name)] if obj is not None]
        elif labels:
            candidates = min((self._by_label.get((resource, k, v)) or {}
                              for k, v in labels.items()), key=len)
            found = [obj for (_, ns, _), obj in candidates.items()
                     if everywhere or ns == namespace]
        elif everywhere:
            found = [obj for names in scopes.values() for obj in names.values()]
        else:
            found = list((scopes.get(namespace) or {}).values())
        self.touched[0] += len(found)
        return found


class _IndexingBus(aiobus.Bus[Any]):  # type: ignore[misc]
    """A resource's event bus that refreshes the index for the object of each event it is
    given: kmock publishes every write (under its lock) right after making it."""

    def __init__(self, on_put: Callable[[Mapping[str, Any]], None]) -> None:
        super().__init__()
        self.on_put = on_put

    async def put(self, *items: Any) -> None:
        for item in items:
            if isinstance(item, Mapping):
                self.on_put(item)
        await super().put(*items)


class _Buses(dict[Any, _IndexingBus]):
    def __init__(self, objects: IndexedObjects) -> None:
        super().__init__()
        self.objects = objects

    def __missing__(self, resource: Any) -> _IndexingBus:
        def on_put(event: Mapping[str, Any]) -> None:
            meta = (event.get("object") or {}).get("metadata") or {}
            self.objects.refresh((resource, meta.get("namespace"), meta.get("name")))

        bus = self[resource] = _IndexingBus(on_put)
        return bus


class _RoutedByAction(apps.RawHandler):  # type: ignore[misc]
    """kmock routes each request by testing it against every reaction's filters (about three
    quarters of the emulator's time per request). While the emulator's own fallback reactions
    are the only ones, a resource request goes to the reaction of its action (list, watch,
    fetch, create, update, delete), found once per action the same way; with any other
    reaction registered, kmock routes as it always does."""

    __slots__ = ()

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        routes: dict[Any, Any] | None = getattr(self, "_routes", None)
        own: tuple[int, ...] | None = getattr(self, "_own_payloads", None)
        if routes is None or own is None or request.action is None or \
                request.resource is None or request.resource.plural is None or \
                tuple(map(id, self._payloads)) != own:
            result: aiohttp.web.StreamResponse = await super()._handle(request)
            return result
        payload = routes.get(request.action)
        if payload is None:
            priorities = [tuple(-p for p in payload.priorities) for payload in self._payloads]
            longest = max((len(p) for p in priorities), default=0)
            padded = [p + (0,) * (longest - len(p)) for p in priorities]
            for index in sorted(range(len(padded)), key=lambda i: padded[i]):
                candidate = self._payloads[index]
                if request in candidate._source and not candidate._disabled.is_set():
                    payload = routes[request.action] = candidate
                    break
            else:
                result = await super()._handle(request)
                return result
        served: aiohttp.web.StreamResponse = await payload(request)
        return served


class Emulator(kmock.KubernetesEmulator, _RoutedByAction):  # type: ignore[misc]
    """Use as `kmock_cls = kmock_ext.Emulator` or directly (see tests/helpers/kube.py)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock's store and buses, indexed (see IndexedObjects): set before anything is stored.
        self._objects = IndexedObjects()
        self._buses = _Buses(self._objects)
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        """Requests of every RBAC-checked user (not the admin) by (verb, resource), the
        resource with its subresource (`certificates/status`), namespaces not told apart; a
        watch counts once, when it starts. `reset_counts()` starts again; out of process:
        `GET /_emulator/counts` (see `_serve_admin`)."""
        self.counts_by_user: dict[str, collections.Counter[tuple[str, str]]] = {}
        self._routes: dict[Any, Any] = {}
        self._own_payloads = tuple(map(id, self._payloads))
        self._rv_counter = itertools.count(1)
        self.current_rv = 0
        self.users: dict[str, str] = {ADMIN_TOKEN: ADMIN_USER, OPERATOR_TOKEN: OPERATOR_USER,
                                      PROXY_TOKEN: PROXY_USER}
        """Bearer token -> user name."""
        self.superusers: set[str] = {ADMIN_USER}
        """Users granted everything without RBAC objects."""
        self.unavailable = False
        """While set every request's connection is dropped (an API server that is down);
        `interrupt_watches("cut")` ends the open watches the same way."""
        self._interrupts: set[asyncio.Future[str]] = set()
        """One per open watch: resolved by `interrupt_watches`."""
        self.anonymous: str | None = None
        """Who a request without credentials is (None: 401). kubectl sends no bearer token
        over plain HTTP: its test makes it the admin, and uses `--as` for the operator."""
        self.denied: list[str] = []
        """Every 403 answered, oldest first."""
        self.served: dict[str, int] = {}
        """Requests authenticated per user (a test can see the operator's were checked)."""
        self._grants: dict[str, list[tuple[str | None, Mapping[str, Any]]]] = {}

    def _next_rv(self) -> str:
        self.current_rv = next(self._rv_counter)
        return str(self.current_rv)

    def reset_counts(self) -> None:
        self.counts.clear()
        self.counts_by_user.clear()

    def _count(self, user: str, request: Any) -> None:
        resource = str(request.resource.plural)
        key = (verb_of(request), f"{resource}/{request.subresource}" if request.subresource
               else resource)
        self.counts_by_user.setdefault(user, collections.Counter())[key] += 1
        if user not in self.superusers:
            self.counts[key] += 1

    def _stored(self, request: Any, name: str | None = None) -> Any | None:
        obj = self._objects.stored((request.resource, request.namespace, name or request.name))
        return obj if obj is not None and not obj.deleted else None

    # -- what a request looks at: the index, never a scan of every stored object -----------

    def _KubernetesEmulator__get_objs(self, request: Any, strict: bool) -> list[Any]:
        """kmock's object lookup for every request (by scanning all objects), answered from
        the index: by key for one object (tombstones included, as kmock expects), else the
        live candidates for the request's namespace and selectors."""
        if request.name is not None and (strict or request.namespace is not None):
            obj = self._objects.stored((request.resource, request.namespace, request.name))
            return [obj] if obj is not None else []
        return self._candidates(request, everywhere=not strict and request.namespace is None)

    def _candidates(self, request: Any, everywhere: bool) -> list[Any]:
        params = request.params or {}
        fields = equal_terms(str(params.get("fieldSelector") or ""),
                             r"metadata\.name|metadata\.namespace")
        namespace = request.namespace
        if everywhere and "metadata.namespace" in fields:
            namespace, everywhere = fields["metadata.namespace"], False
        return self._objects.live(request.resource, namespace, everywhere,
                                  request.name or fields.get("metadata.name"),
                                  equal_terms(str(params.get("labelSelector") or "")))

    def _get_resources(self) -> list[Any]:
        # kmock adds the resource of every stored object by scanning them all.
        resources = set(k8s.KubernetesScaffold._get_resources(self))
        resources.update(self._objects.resources())
        return list(resources)

    def interrupt_watches(self, how: str) -> int:
        """End every open watch (on the emulator's loop): `gone` sends the ERROR event of
        410 Gone (the client must list again), `cut` breaks the connection mid-stream.
        Returns how many were open."""
        open_ = list(self._interrupts)
        for interrupt in open_:
            if not interrupt.done():
                interrupt.set_result(how)
        return len(open_)

    async def _handle(self, request: Any) -> Any:
        if self.unavailable:
            # As an API server that went away: the connection is dropped, nothing answered.
            transport = request.transport if hasattr(request, "transport") else None
            if transport is not None:
                transport.abort()
            raise ConnectionResetError("the emulator is unavailable")
        try:
            user = self._authenticate(request)
            if request.url.path.startswith(ADMIN_PATH):
                return self._serve_admin(user, request)
            is_resource = request.resource is not None and request.resource.plural is not None
            if is_resource:
                self._count(user, request)
                self._authorize(user, request)
            if request.resource is not None:
                if request.action == enums.action.CREATE and isinstance(request.data, dict):
                    self._prepare_create(request)
                elif request.action == enums.action.UPDATE and request.name is not None:
                    async with self._lock:
                        self._prepare_update(request)
            try:
                return await super()._handle(request)
            finally:
                if is_resource and request.resource.group == RBAC_GROUP and \
                        verb_of(request) not in ("get", "list", "watch"):
                    self._grants.clear()
        finally:
            # Keep only the current request: kmock scans the whole history on every request,
            # and each of its reactions keeps every request it served.
            del self._requests[:-1]
            for payload in self._payloads:
                del payload._requests[:]

    def _serve_admin(self, user: str, request: Any) -> aiohttp.web.StreamResponse:
        """`GET /_emulator/counts`: the request counts as JSON, `{"counts": [[verb, resource,
        n], ...], "by_user": {user: [[verb, resource, n], ...]}}` (`counts`: every RBAC-checked
        user); `DELETE /_emulator/counts` resets them. The admin's only (else 403)."""
        if user not in self.superusers:
            raise kmock.KubernetesError(status=403, reason="Forbidden",
                                        message=f'User "{user}" cannot read the emulator\'s '
                                                "counts (the admin's only)")
        if request.url.path.rstrip("/") != f"{ADMIN_PATH}/counts":
            raise kmock.KubernetesError(status=404, reason="NotFound",
                                        message=f"no such path: {request.url.path}")
        method = str(getattr(request.method, "value", request.method)).upper()
        if method == "DELETE":
            self.reset_counts()
        elif method != "GET":
            raise kmock.KubernetesError(status=405, reason="MethodNotAllowed",
                                        message=f"{method} {request.url.path}: GET or DELETE")

        def rows(counter: Mapping[tuple[str, str], int]) -> list[list[Any]]:
            return [[verb, resource, n] for (verb, resource), n in sorted(counter.items())]

        return aiohttp.web.json_response({
            "counts": rows(self.counts),
            "by_user": {u: rows(c) for u, c in sorted(self.counts_by_user.items())}})

    # -- authentication and RBAC -----------------------------------------------------------

    def _authenticate(self, request: Any) -> str:
        headers = {k.lower(): v for k, v in (request.headers or {}).items()}
        scheme, _, token = str(headers.get("authorization", "")).partition(" ")
        user = self.users.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None and not headers.get("authorization"):
            user = self.anonymous
        if user is None:
            raise kmock.KubernetesError(status=401, reason="Unauthorized",
                                        message="Unauthorized", details={})
        if headers.get("impersonate-user") and user in self.superusers:
            user = str(headers["impersonate-user"])  # kubectl --as: allowed to the admin only
        self.served[user] = self.served.get(user, 0) + 1
        return user

    def _authorize(self, user: str, request: Any) -> None:
        if user in self.superusers:
            return
        verb = verb_of(request)
        group = request.resource.group or ""
        resource = request.resource.plural
        name = request.name if verb != "create" else None
        if verb in ("list", "watch") and name is None:
            by_name = re.search(r"(?:^|,)\s*metadata\.name\s*==?\s*([^,\s]+)",
                                str(request.params.get("fieldSelector") or ""))
            name = by_name[1] if by_name else None
        for namespace, rule in self._rules_of(user):
            if namespace is not None and namespace != request.namespace:
                continue
            if rule_allows(rule, verb, group, resource, request.subresource, name):
                return
        what = f"{resource}/{request.subresource}" if request.subresource else resource
        named = f' "{name}"' if name else ""
        where = f' in the namespace "{request.namespace}"' if request.namespace else \
            " at the cluster scope"
        message = (f'{resource}{named} is forbidden: User "{user}" cannot {verb} resource '
                   f'"{what}" in API group "{group}"{where}')
        self.denied.append(message)
        log.warning("forbidden: %s", message)
        raise kmock.KubernetesError(status=403, reason="Forbidden", message=message,
                                    details={"name": name or "", "group": group,
                                             "kind": resource})

    def _rules_of(self, user: str) -> list[tuple[str | None, Mapping[str, Any]]]:
        """(namespace or None for everywhere, rule) for every rule bound to `user`."""
        cached = self._grants.get(user)
        if cached is not None:
            return cached
        stored: dict[str, dict[tuple[str | None, str], Mapping[str, Any]]] = {
            "clusterroles": {}, "clusterrolebindings": {}, "roles": {}, "rolebindings": {}}
        for resource in list(self._objects.resources()):
            if resource.group == RBAC_GROUP and resource.plural in stored:
                for obj in self._objects.live(resource, None, True, None, {}):
                    raw = obj.raw
                    meta = raw.get("metadata") or {}
                    stored[resource.plural][(meta.get("namespace"), meta.get("name"))] = raw
        groups = groups_of(user)
        rules: list[tuple[str | None, Mapping[str, Any]]] = []
        for kind, scoped in (("clusterrolebindings", False), ("rolebindings", True)):
            for (namespace, _), binding in stored[kind].items():
                where = namespace if scoped else None
                if not any(subject_matches(subject, user, groups, where)
                           for subject in binding.get("subjects") or []):
                    continue
                ref = binding.get("roleRef") or {}
                if ref.get("kind") == "Role" and scoped:
                    role = stored["roles"].get((namespace, ref.get("name")))
                elif ref.get("kind") == "ClusterRole":
                    role = stored["clusterroles"].get((None, ref.get("name")))
                else:
                    role = None
                rules += [(where, rule) for rule in (role or {}).get("rules") or []]
        self._grants[user] = rules
        return rules

    def _prepare_create(self, request: Any) -> None:
        meta = request.data.setdefault("metadata", {})
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        if not meta.get("name"):
            raise kmock.KubernetesError(status=422, reason="Invalid",
                                        message="metadata.name: Required value")
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        meta["resourceVersion"] = self._next_rv()
        meta.setdefault("generation", 1)
        if request.resource.plural == "secrets" and request.resource.group == "":
            request.data.setdefault("type", "Opaque")  # as the API server defaults it

    def _prepare_update(self, request: Any) -> None:
        obj = self._stored(request)
        if obj is None:
            return  # kmock answers 404
        current = copy.deepcopy(obj.raw)
        rv = self._next_rv()
        if isinstance(request.data, list):
            try:
                jsonpatch.apply_patch(current, request.data, in_place=False)
            except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict,
                    jsonpatch.JsonPointerException) as exc:
                raise kmock.KubernetesError(
                    status=422, reason="Invalid",
                    message=f"the JSON patch does not apply: {exc}") from exc
            # The patch is applied by kmock as it is; the new version travels with it.
            request.data.append({"op": "add", "path": "/metadata/resourceVersion",
                                 "value": rv})
        elif isinstance(request.data, dict):
            wanted = (request.data.get("metadata") or {}).get("resourceVersion")
            have = (current.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != have:
                raise kmock.KubernetesError(
                    status=409, reason="Conflict",
                    message=f"the object has been modified (resourceVersion {have}, "
                            f"patch expects {wanted})")
            request.data.setdefault("metadata", {})["resourceVersion"] = rv
            if "spec" in request.data:
                generation = int((current.get("metadata") or {}).get("generation", 1))
                request.data["metadata"]["generation"] = generation + 1

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        # kmock names the core group's version "/v1"; API servers (and kubectl) say "v1".
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and str(payload.get("groupVersion", "")).startswith("/"):
            payload["groupVersion"] = payload["groupVersion"].lstrip("/")
        return payload

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        resource = request.resource
        assert resource is not None
        if resource not in self._get_resources():
            raise k8s.KubernetesResourceNotFoundError()
        wanted = selected(request)
        async with self._lock:
            objs = self._candidates(request, everywhere=request.namespace is None)
            items = [raw for obj in objs if not obj.deleted for raw in [obj.raw] if wanted(raw)]
            version = self.current_rv
        payload: dict[str, Any] = {"metadata": {"resourceVersion": str(version)},
                                   "items": items}
        kind = self.resources[resource].kind if resource in self.resources else None
        if kind:  # kubectl reads a list's kind (kmock leaves it out)
            payload["kind"] = f"{kind}List"
            payload["apiVersion"] = f"{resource.group}/{resource.version}".lstrip("/")
        return payload

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        assert request.resource is not None
        wanted = selected(request)  # a bad selector is a 400 before the stream starts
        params = request.params or {}
        since = int(params.get("resourceVersion") or 0) if str(
            params.get("resourceVersion") or "0").isdigit() else 0
        timeout = float(params["timeoutSeconds"]) if str(
            params.get("timeoutSeconds") or "").isdigit() else None
        yield b""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        bus = self._buses[request.resource]
        # Subscribe first, then snapshot, both under the write lock: nothing falls between.
        async with self._lock:
            marker = await bus.mark()
            objs = self._candidates(request, everywhere=request.namespace is None)
            snapshot = [raw for obj in objs if not obj.deleted for raw in [obj.raw]
                        if int((raw.get("metadata") or {}).get("resourceVersion") or 0) > since
                        and wanted(raw)]
        events = marker.__aiter__()
        # What this watch has shown as matching: an object that leaves the selectors is
        # DELETED for it, one that enters them ADDED (as an API server's watch cache does).
        shown: set[tuple[Any, Any]] = set()

        def key(raw: Mapping[str, Any]) -> tuple[Any, Any]:
            meta = raw.get("metadata") or {}
            return meta.get("namespace"), meta.get("name")

        interrupt: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._interrupts.add(interrupt)
        try:
            for raw in snapshot:
                shown.add(key(raw))
                yield {"type": "ADDED", "object": copy.deepcopy(raw)}
            while True:
                left = None if deadline is None else \
                    deadline - asyncio.get_running_loop().time()
                if left is not None and left <= 0:
                    return  # timeoutSeconds: the API server ends the stream
                upcoming = asyncio.ensure_future(anext(events))
                try:
                    await asyncio.wait({upcoming, interrupt}, timeout=left,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not upcoming.done():
                        # The generator's pending step ends before it is closed below (also
                        # when this stream is cancelled).
                        upcoming.cancel()
                        await asyncio.wait({upcoming})
                if interrupt.done():
                    if interrupt.result() == "gone":
                        yield {"type": "ERROR", "object": {
                            "kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "code": 410, "reason": "Expired",
                            "message": "too old resource version"}}
                        return
                    raise ConnectionResetError("watch cut by the test")
                if upcoming.cancelled():
                    return  # timeoutSeconds
                event = upcoming.result()
                obj = event.get("object", {})
                meta = obj.get("metadata", {})
                if request.namespace is not None and meta.get("namespace") != \
                        request.namespace:
                    continue
                if request.name is not None and meta.get("name") != request.name:
                    continue
                if not wanted(obj):
                    if key(obj) in shown and event.get("type") != "DELETED":
                        shown.discard(key(obj))
                        yield {**event, "type": "DELETED"}
                    continue
                if event.get("type") == "DELETED":
                    shown.discard(key(obj))
                elif key(obj) not in shown:
                    shown.add(key(obj))
                    event = {**event, "type": "ADDED"}
                yield event
        finally:
            self._interrupts.discard(interrupt)
            with contextlib.suppress(Exception):
                await events.aclose()
            await bus.unmark(marker)


_KINDS = {"ServiceAccount": ("serviceaccounts", True), "Role": ("roles", True),
          "RoleBinding": ("rolebindings", True), "ClusterRole": ("clusterroles", False),
          "ClusterRoleBinding": ("clusterrolebindings", False)}
"""What `apply()` knows how to create: the kinds of the RBAC files of `manifests/`."""


async def apply(emulator: Emulator, docs: Iterable[Mapping[str, Any]]) -> None:
    """Create each object through the emulator's HTTP API as the admin (from the emulator's
    own loop), so the RBAC the emulator enforces is the manifests' own."""
    for doc in docs:
        plural, namespaced = _KINDS[doc["kind"]]
        version = str(doc["apiVersion"])
        base = f"/apis/{version}" if "/" in version else f"/api/{version}"
        namespace = (doc.get("metadata") or {}).get("namespace")
        path = f"{base}/namespaces/{namespace}/{plural}" if namespaced else f"{base}/{plural}"
        async with emulator.post(path, json=doc,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"applying {doc['kind']} {doc['metadata']['name']}: "
                                   f"HTTP {resp.status}: {await resp.text()}")

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
  cannot be created, read or listed (its path parser is wrapped below, once, at import).
This subclass fixes those; `tests/k8s/test_kmock_ext.py` proves each fix.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jsonpatch
import kmock
from kmock._internal import enums, parsing, rendering

_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
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


class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """Use as `kmock_cls = kmock_ext.Emulator` or directly (see tests/helpers/kube.py)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv_counter = itertools.count(1)
        self.current_rv = 0

    def _next_rv(self) -> str:
        self.current_rv = next(self._rv_counter)
        return str(self.current_rv)

    def _stored(self, request: Any, name: str | None = None) -> Any | None:
        key = (request.resource, request.namespace, name or request.name)
        if key in self._objects and not self._objects[key].deleted:
            return self._objects[key]
        return None

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None:
            if request.action == enums.action.CREATE and isinstance(request.data, dict):
                self._prepare_create(request)
            elif request.action == enums.action.UPDATE and request.name is not None:
                async with self._lock:
                    self._prepare_update(request)
        try:
            return await super()._handle(request)
        finally:
            # Keep only the current request: kmock scans the whole history on every request.
            del self._requests[:-1]

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
        payload = await super()._serve_list(request)
        payload["metadata"]["resourceVersion"] = str(self.current_rv)
        return payload

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""
        assert request.resource is not None
        since = int(request.params.get("resourceVersion") or 0) if str(
            request.params.get("resourceVersion") or "0").isdigit() else 0
        bus = self._buses[request.resource]
        # Subscribe first, then snapshot, both under the write lock: nothing falls between.
        async with self._lock:
            marker = await bus.mark()
            objs = self._KubernetesEmulator__get_objs(request, strict=False)
            snapshot = [copy.deepcopy(obj.raw) for obj in objs if not obj.deleted]
        try:
            for raw in snapshot:
                rv = int((raw.get("metadata") or {}).get("resourceVersion") or 0)
                if rv > since:
                    yield {"type": "ADDED", "object": raw}
            async for event in marker:
                obj = event.get("object", {})
                meta = obj.get("metadata", {})
                if request.namespace is not None and meta.get("namespace") != \
                        request.namespace:
                    continue
                if request.name is not None and meta.get("name") != request.name:
                    continue
                yield event
        finally:
            await bus.unmark(marker)

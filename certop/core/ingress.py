"""Parse and check a networking.k8s.io/v1 Ingress given as a plain dict.

Owns the translation from Kubernetes' JSON shape to `models.Ingress`, with errors that name
the file, the object and the field (`spec.rules[0].http.paths[1].pathType`) and say what is
expected. Called by the standalone loader and the operator; never does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from certop.core import annotations as ann
from certop.core import names
from certop.core.errors import ConfigError
from certop.core.models import Ingress as IngressModel
from certop.core.models import (
    IngressPath,
    IngressRule,
    IngressTLS,
    ObjectRef,
    PathType,
    SecretName,
    ServiceBackend,
)

API_VERSION = "networking.k8s.io/v1"
CLASS_ANNOTATION = "kubernetes.io/ingress.class"

# RFC 1123 subdomain, as the API server checks Ingress hosts; "*." allowed as the first label.
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
_NAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_PORT_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def object_ref(
    doc: Mapping[str, Any], source: str, default_namespace: str = "default"
) -> ObjectRef:
    """The kind and namespace/name of a manifest, checked enough to quote in errors."""
    kind = str(doc.get("kind", ""))
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        raise ConfigError(source, kind or "object", "metadata.name", "required, a string")
    # Names become paths in standalone mode (certs/<namespace>/...): as the API server checks.
    problem = names.subdomain_problem(meta["name"])
    if problem is not None:
        raise ConfigError(source, kind or "object", "metadata.name", problem)
    namespace = meta.get("namespace", default_namespace)
    if not isinstance(namespace, str):
        raise ConfigError(source, f"{kind} {meta['name']}", "metadata.namespace", "a string")
    problem = names.label_problem(namespace)
    if problem is not None:
        raise ConfigError(source, f"{kind} {meta['name']}", "metadata.namespace", problem)
    return ObjectRef(kind=kind, namespace=namespace, name=meta["name"], source=source)


class Fields:
    """Helpers that read one field and raise a ConfigError naming it."""

    def __init__(self, ref: ObjectRef) -> None:
        self.ref = ref

    def error(self, field: str, expected: str) -> ConfigError:
        return ConfigError(self.ref.source, str(self.ref), field, expected)

    def mapping(self, value: Any, field: str, *, required: bool = False) -> Mapping[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(field, "required, an object" if value is None else "an object")
        return value

    def sequence(self, value: Any, field: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(field, "a list")
        return value

    def string(self, value: Any, field: str, *, required: bool = True) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(field, "required, a non-empty string")
        return value


def host_problem(value: object) -> str | None:
    """What is wrong with `value` as a host name (Ingress hosts, Certificate dnsNames)."""
    if isinstance(value, str) and _HOST_RE.fullmatch(value) and len(value) <= 253:
        return None
    shown = repr(value) if isinstance(value, str) else names.quoted(value)
    return (f"a DNS name like 'www.example.com' or '*.example.com' (lower case, no port), "
            f"not {shown}")


def _host(f: Fields, value: Any, field: str) -> str:
    host = f.string(value, field)
    assert host is not None
    problem = host_problem(host)
    if problem is not None:
        raise f.error(field, problem)
    return host


def _backend(f: Fields, value: Any, field: str) -> ServiceBackend:
    backend = f.mapping(value, field, required=True)
    if "resource" in backend:
        raise f.error(f"{field}.resource", "not supported: use a service backend")
    service = f.mapping(backend.get("service"), f"{field}.service", required=True)
    name = f.string(service.get("name"), f"{field}.service.name")
    assert name is not None
    if not _NAME_RE.fullmatch(name):
        raise f.error(f"{field}.service.name", f"a Service name, not {name!r}")
    port = f.mapping(service.get("port"), f"{field}.service.port", required=True)
    number, pname = port.get("number"), port.get("name")
    if (number is None) == (pname is None):
        raise f.error(f"{field}.service.port", "exactly one of 'number' or 'name'")
    if number is not None:
        if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
            raise f.error(f"{field}.service.port.number", "an integer from 1 to 65535")
        return ServiceBackend(f.ref.namespace, name, number)
    if not isinstance(pname, str) or not _PORT_NAME_RE.fullmatch(pname):
        raise f.error(f"{field}.service.port.name", "a port name like 'http'")
    return ServiceBackend(f.ref.namespace, name, pname)


def _path(f: Fields, value: Any, field: str) -> IngressPath:
    item = f.mapping(value, field, required=True)
    raw_type = item.get("pathType")
    if raw_type is None:
        raise f.error(f"{field}.pathType", "required: one of Exact, Prefix, ImplementationSpecific")
    try:
        path_type = PathType(raw_type)
    except ValueError:
        raise f.error(
            f"{field}.pathType",
            f"one of Exact, Prefix, ImplementationSpecific, not {raw_type!r}",
        ) from None
    path = item.get("path", "/" if path_type is PathType.IMPLEMENTATION_SPECIFIC else None)
    if not isinstance(path, str) or not path.startswith("/"):
        raise f.error(f"{field}.path", "required, an absolute path starting with '/'")
    return IngressPath(path, path_type, _backend(f, item.get("backend"), f"{field}.backend"))


def parse_ingress(doc: Mapping[str, Any], source: str = "") -> IngressModel:
    """A checked `Ingress` from its manifest; raises ConfigError naming the bad field."""
    ref = object_ref(doc, source)
    f = Fields(ref)
    if doc.get("apiVersion") != API_VERSION:
        raise f.error("apiVersion", f"{API_VERSION!r}, not {doc.get('apiVersion')!r}")
    meta = f.mapping(doc.get("metadata"), "metadata")
    annotations_raw = f.mapping(meta.get("annotations"), "metadata.annotations")
    annotations: dict[str, str] = {}
    for key, val in annotations_raw.items():
        if not isinstance(val, str):
            raise f.error(f"metadata.annotations[{key}]", "a string (quote it in YAML)")
        annotations[str(key)] = val
    try:
        ann.body_limit(annotations)
        ann.hsts(annotations, None)
    except ann.AnnotationError as exc:
        raise f.error(f"metadata.annotations[{exc.key}]", exc.expected) from None
    spec = f.mapping(doc.get("spec"), "spec", required=True)

    rules: list[IngressRule] = []
    for i, raw_rule in enumerate(f.sequence(spec.get("rules"), "spec.rules")):
        rf = f"spec.rules[{i}]"
        rule = f.mapping(raw_rule, rf, required=True)
        host = _host(f, rule["host"], f"{rf}.host") if rule.get("host") is not None else None
        http = f.mapping(rule.get("http"), f"{rf}.http")
        paths = tuple(
            _path(f, p, f"{rf}.http.paths[{j}]")
            for j, p in enumerate(f.sequence(http.get("paths"), f"{rf}.http.paths"))
        )
        if "http" in rule and not paths:
            raise f.error(f"{rf}.http.paths", "at least one path")
        rules.append(IngressRule(host, paths))

    tls: list[IngressTLS] = []
    for i, raw_tls in enumerate(f.sequence(spec.get("tls"), "spec.tls")):
        tf = f"spec.tls[{i}]"
        entry = f.mapping(raw_tls, tf, required=True)
        hosts = tuple(
            _host(f, h, f"{tf}.hosts[{j}]")
            for j, h in enumerate(f.sequence(entry.get("hosts"), f"{tf}.hosts"))
        )
        secret = f.string(entry.get("secretName"), f"{tf}.secretName", required=False)
        problem = names.subdomain_problem(secret) if secret is not None else None
        if problem is not None:
            raise f.error(f"{tf}.secretName", f"a Secret name: {problem}")
        tls.append(IngressTLS(hosts, SecretName(secret) if secret else None))

    default = (
        _backend(f, spec["defaultBackend"], "spec.defaultBackend")
        if spec.get("defaultBackend") is not None
        else None
    )
    if not rules and default is None:
        raise f.error("spec", "at least one of 'rules' or 'defaultBackend'")
    klass = spec.get("ingressClassName")
    if klass is not None and not isinstance(klass, str):
        raise f.error("spec.ingressClassName", "a string")
    creation = meta.get("creationTimestamp", "")
    return IngressModel(
        ref=ref,
        annotations=annotations,
        ingress_class=klass or annotations.get(CLASS_ANNOTATION),
        rules=tuple(rules),
        tls=tuple(tls),
        default_backend=default,
        creation=str(creation or ""),
    )

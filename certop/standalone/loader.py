"""Read the manifests of standalone mode: files or directories of multi-document YAML.

Owns: finding the files, parsing YAML, sorting documents by kind (Ingress, ClusterIssuer/Issuer,
Certificate, Secret) and turning each into checked core values. Every problem is a
`ConfigError` naming the file, the object and the field; so is any other exception raised
while reading a document (a bug must not kill the file watcher or print a traceback). Never
writes anything.

YAML is parsed with bounds (a document is untrusted input): nesting at most `MAX_DEPTH` levels
(aliases included), and aliases may add at most `MAX_ALIAS_NODES` nodes to a document, so a
"billion laughs" file of a few hundred bytes is refused instead of growing to gigabytes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from certop.core import names
from certop.core.certificates import CERTIFICATE_API_VERSIONS, parse_certificate
from certop.core.errors import ConfigError
from certop.core.ingress import parse_ingress
from certop.core.issuers import ISSUER_API_VERSIONS, parse_issuer
from certop.core.models import AcmeIssuer, CertificateSpec, Ingress, ObjectRef

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
KNOWN = "a networking.k8s.io/v1 Ingress, a ClusterIssuer, a Certificate or a v1 Secret"
MAX_DEPTH = 100
"""Deepest nesting of a document (an Ingress needs about 10 levels)."""
MAX_ALIAS_NODES = 10_000
"""Most nodes that aliases (`*name`, `<<: *name`) may add to one document."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents nested too deep or inflated by aliases.

    The composer is recursive (a deep document ends in RecursionError) and an alias is one node
    shared in the tree, which every walk over the data (`str()`, the parsers) expands: both are
    checked while the document is composed, before anything is built from it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open: set[str] = set()
        self._added = 0
        self._measured: dict[int, tuple[int, int]] = {}

    def compose_document(self) -> Any:
        self._added = 0
        self._measured = {}
        return super().compose_document()

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """(nodes, depth) of `node` with every alias in it expanded."""
        found = self._measured.get(id(node))
        if found is None:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            sizes = [self._measure(child) for child in children]
            found = (1 + sum(n for n, _ in sizes), 1 + max((d for _, d in sizes), default=0))
            self._measured[id(node)] = found
        return found

    def _refuse(self, problem: str) -> yaml.composer.ComposerError:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        return yaml.composer.ComposerError(None, None, problem, mark)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) and event.anchor in self.anchors:
            if event.anchor in self._open:
                raise self._refuse(f"no alias inside its own anchor (*{event.anchor})")
            size, depth = self._measure(self.anchors[event.anchor])
            self._added += size
            if self._added > MAX_ALIAS_NODES:
                raise self._refuse(f"aliases expand to more than {MAX_ALIAS_NODES} nodes")
            if self._depth + depth > MAX_DEPTH:
                raise self._refuse(f"nested deeper than {MAX_DEPTH} levels (with aliases)")
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise self._refuse(f"nested deeper than {MAX_DEPTH} levels")
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if anchor is not None:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor or "")


def one_line(exc: BaseException) -> str:
    """An exception as one short line for an error message."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class Manifests:
    ingresses: tuple[Ingress, ...] = ()
    issuers: Mapping[str, AcmeIssuer] = field(default_factory=dict)
    secrets: Mapping[tuple[str, str], Mapping[str, bytes]] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    secret_sources: Mapping[tuple[str, str], str] = field(default_factory=dict)
    certificates: tuple[tuple[ObjectRef, CertificateSpec], ...] = ()
    """Certificate manifests: each object (with the file it was read from) and its spec."""


def manifest_files(paths: Sequence[Path]) -> list[Path]:
    """The files behind `-f` arguments (a directory gives its YAML/JSON files, sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir()
                                if p.suffix in MANIFEST_SUFFIXES and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(str(path), "", "", "a readable file or directory of manifests")
    return found


def _documents(path: Path) -> list[tuple[int, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", "", f"a readable UTF-8 file ({exc})") from None
    try:
        docs = list(yaml.load_all(text, Loader=_BoundedLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(str(path), where, "", f"valid YAML ({problem})") from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. a timestamp out of range
        raise ConfigError(str(path), "", "", f"valid YAML ({one_line(exc)})") from None
    return [(i, d) for i, d in enumerate(docs) if d is not None]


def _secret(doc: Mapping[str, Any], source: str) -> tuple[tuple[str, str], dict[str, bytes]]:
    meta = doc.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str):
        raise ConfigError(source, "Secret", "metadata.name", "required, a string")
    problem = names.subdomain_problem(name)
    if problem is not None:
        raise ConfigError(source, "Secret", "metadata.name", problem)
    namespace = meta.get("namespace", "default")
    problem = names.label_problem(namespace)
    if problem is not None:
        raise ConfigError(source, f"Secret {name}", "metadata.namespace", problem)
    obj = f"Secret {namespace}/{name}"
    data: dict[str, bytes] = {}
    raw = doc.get("data") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(source, obj, "data", "a map of base64 strings")
    for key, value in raw.items():
        try:
            data[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(source, obj, f"data.{key}", "base64 (or use stringData)") from None
    string_data = doc.get("stringData") or {}
    if not isinstance(string_data, Mapping):
        raise ConfigError(source, obj, "stringData", "a map of strings")
    for key, value in string_data.items():
        data[str(key)] = str(value).encode()
    return (str(namespace), name), data


RESOURCE_NAMESPACE = "default"
"""Where the Secrets issuers reference live (EAB keys, DNS providers' credentials): a Secret
manifest without a namespace is in it."""


def load(paths: Sequence[Path], resource_namespace: str = RESOURCE_NAMESPACE) -> Manifests:
    """All manifests behind `paths`; raises ConfigError for the first problem."""
    files = manifest_files(paths)
    raw_issuers: list[tuple[Mapping[str, Any], str]] = []
    ingresses: list[Ingress] = []
    secrets: dict[tuple[str, str], dict[str, bytes]] = {}
    secret_sources: dict[tuple[str, str], str] = {}
    certificates: list[tuple[ObjectRef, CertificateSpec]] = []
    seen: dict[tuple[str, str, str], str] = {}
    for path in files:
        for index, doc in _documents(path):
            source = str(path) if index == 0 else f"{path} (document {index + 1})"
            try:
                ident = _sort(doc, source, ingresses, raw_issuers, secrets, secret_sources,
                              certificates)
            except ConfigError:
                raise
            except Exception as exc:  # a bug must read as a configuration error, not kill
                raise ConfigError(source, "", "", "a manifest certop can read (reading it "
                                  f"failed: {one_line(exc)})") from exc
            if ident in seen:
                raise ConfigError(source, f"{ident[0]} {'/'.join(ident[1:]).lstrip('/')}",
                                  "metadata.name", f"unique; also defined in {seen[ident]}")
            seen[ident] = source
    issuers: dict[str, AcmeIssuer] = {}
    for doc, source in raw_issuers:
        try:
            issuer = parse_issuer(doc, source, lambda ns, n: secrets.get((ns, n)),
                                  resource_namespace)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(source, "", "", "a manifest certop can read (reading it "
                              f"failed: {one_line(exc)})") from exc
        issuers[issuer.ref.name] = issuer
    return Manifests(tuple(ingresses), issuers, secrets, tuple(files), secret_sources,
                     tuple(certificates))


def _sort(doc: Any, source: str, ingresses: list[Ingress],
          raw_issuers: list[tuple[Mapping[str, Any], str]],
          secrets: dict[tuple[str, str], dict[str, bytes]],
          secret_sources: dict[tuple[str, str], str],
          certificates: list[tuple[ObjectRef, CertificateSpec]]) -> tuple[str, str, str]:
    """Parse one document into the list it belongs to; its identity for duplicate checks."""
    if not isinstance(doc, Mapping):
        raise ConfigError(source, "", "", f"{KNOWN}, as a YAML mapping")
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind == "Ingress" and api in ("networking.k8s.io/v1", None):
        ing = parse_ingress(doc, source)
        # A stable "age" for conflict resolution: load order when no timestamp.
        ing = _with_creation(ing, len(ingresses))
        ingresses.append(ing)
        return ("Ingress", ing.ref.namespace, ing.ref.name)
    if kind in ("ClusterIssuer", "Issuer") and api in ISSUER_API_VERSIONS:
        raw_issuers.append((doc, source))
        meta = doc.get("metadata")
        name = meta.get("name", "") if isinstance(meta, Mapping) else ""
        return ("ClusterIssuer", "", name if isinstance(name, str) else "")
    if kind == "Certificate" and api in CERTIFICATE_API_VERSIONS:
        ref, spec = parse_certificate(doc, source)
        certificates.append((ref, spec))
        return ("Certificate", ref.namespace, ref.name)
    if kind == "Secret" and api == "v1":
        key, data = _secret(doc, source)
        secrets[key] = data
        secret_sources[key] = source
        return ("Secret", *key)
    shown = [v if isinstance(v, str) or v is None else names.quoted(v) for v in (api, kind)]
    raise ConfigError(source, f"{kind if isinstance(kind, str) and kind else 'object'}",
                      "apiVersion/kind", f"{KNOWN}, not {shown[0]}/{shown[1]}")


def _with_creation(ing: Ingress, index: int) -> Ingress:
    if ing.creation:
        return ing
    return replace(ing, creation=f"~{index:08d}")

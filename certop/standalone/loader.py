"""Read the manifests of standalone mode: files or directories of multi-document YAML.

Owns: finding the files, parsing YAML, sorting documents by kind (Ingress, ClusterIssuer/Issuer,
Secret) and turning each into checked core values. Every problem is a `ConfigError` naming the
file, the object and the field. Never writes anything.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from certop.core.errors import ConfigError
from certop.core.ingress import parse_ingress
from certop.core.issuers import ISSUER_API_VERSIONS, parse_issuer
from certop.core.models import AcmeIssuer, Ingress

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
KNOWN = "a networking.k8s.io/v1 Ingress, a ClusterIssuer or a v1 Secret"


@dataclass(frozen=True)
class Manifests:
    ingresses: tuple[Ingress, ...] = ()
    issuers: Mapping[str, AcmeIssuer] = field(default_factory=dict)
    secrets: Mapping[tuple[str, str], Mapping[str, bytes]] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    secret_sources: Mapping[tuple[str, str], str] = field(default_factory=dict)


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
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(str(path), where, "", f"valid YAML ({problem})") from None
    return [(i, d) for i, d in enumerate(docs) if d is not None]


def _secret(doc: Mapping[str, Any], source: str) -> tuple[tuple[str, str], dict[str, bytes]]:
    meta = doc.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str):
        raise ConfigError(source, "Secret", "metadata.name", "required, a string")
    namespace = meta.get("namespace", "default")
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


def load(paths: Sequence[Path], resource_namespace: str = "default") -> Manifests:
    """All manifests behind `paths`; raises ConfigError for the first problem."""
    files = manifest_files(paths)
    raw_issuers: list[tuple[Mapping[str, Any], str]] = []
    ingresses: list[Ingress] = []
    secrets: dict[tuple[str, str], dict[str, bytes]] = {}
    secret_sources: dict[tuple[str, str], str] = {}
    seen: dict[tuple[str, str, str], str] = {}
    for path in files:
        for index, doc in _documents(path):
            source = str(path) if index == 0 else f"{path} (document {index + 1})"
            if not isinstance(doc, Mapping):
                raise ConfigError(source, "", "", f"{KNOWN}, as a YAML mapping")
            kind, api = doc.get("kind"), doc.get("apiVersion")
            if kind == "Ingress" and api in ("networking.k8s.io/v1", None):
                ing = parse_ingress(doc, source)
                # A stable "age" for conflict resolution: load order when no timestamp.
                ing = _with_creation(ing, len(ingresses))
                ingresses.append(ing)
                ident = ("Ingress", ing.ref.namespace, ing.ref.name)
            elif kind in ("ClusterIssuer", "Issuer") and api in ISSUER_API_VERSIONS:
                raw_issuers.append((doc, source))
                name = (doc.get("metadata") or {}).get("name", "")
                ident = ("ClusterIssuer", "", str(name))
            elif kind == "Secret" and api == "v1":
                key, data = _secret(doc, source)
                secrets[key] = data
                secret_sources[key] = source
                ident = ("Secret", *key)
            else:
                raise ConfigError(
                    source, f"{kind or 'object'}", "apiVersion/kind",
                    f"{KNOWN}, not {api}/{kind}",
                )
            if ident in seen:
                raise ConfigError(source, f"{ident[0]} {'/'.join(ident[1:]).lstrip('/')}",
                                  "metadata.name", f"unique; also defined in {seen[ident]}")
            seen[ident] = source
    issuers: dict[str, AcmeIssuer] = {}
    for doc, source in raw_issuers:
        issuer = parse_issuer(doc, source, lambda ns, n: secrets.get((ns, n)),
                              resource_namespace)
        issuers[issuer.ref.name] = issuer
    return Manifests(tuple(ingresses), issuers, secrets, tuple(files), secret_sources)


def _with_creation(ing: Ingress, index: int) -> Ingress:
    if ing.creation:
        return ing
    return replace(ing, creation=f"~{index:08d}")

"""The manifest loader treats YAML as untrusted: bounded nesting, bounded alias expansion, and
any exception while reading a document becomes a ConfigError naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from certop.core.errors import ConfigError
from certop.standalone import loader

INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  labels: {labels}
spec:
  defaultBackend: &backend {{service: {{name: web, port: {{number: 80}}}}}}
  rules:
    - host: a.example.test
      http: {{paths: [{{path: /, pathType: Prefix, backend: *backend}}]}}
"""


def _laughs(levels: int) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh"[: levels - 1], "bcdefghi"[: levels - 1], strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "{" + ", ".join(lines) + "}"


def _load(tmp_path: Path, text: str) -> loader.Manifests:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return loader.load([path])


def test_anchors_aliases_and_merge_keys_within_bounds_still_work(tmp_path: Path) -> None:
    text = INGRESS.format(labels="{<<: {app: web}, tier: front}")
    ing = _load(tmp_path, text).ingresses[0]
    assert ing.default_backend == ing.rules[0].paths[0].backend


def test_a_billion_laughs_in_a_field_nobody_reads_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"site.yaml: line \d+, column \d+: valid YAML "
                                          r"\(aliases expand to more than 10000 nodes\)"):
        _load(tmp_path, INGRESS.format(labels=_laughs(9)))


def test_aliases_just_under_the_bound_are_accepted(tmp_path: Path) -> None:
    # 9 + 9 * 10 + 9 * 91 + 9 * 820 = 8298 nodes added by aliases.
    _load(tmp_path, INGRESS.format(labels=_laughs(4)))


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no alias inside its own anchor \(\*loop\)"):
        _load(tmp_path, INGRESS.format(labels="&loop {a: [*loop]}"))


def _nested(depth: int) -> str:
    # The document is a mapping (1), metadata (2), then the labels: `depth` levels in all.
    return INGRESS.format(labels="[" * (depth - 2) + "]" * (depth - 2))


def test_nesting_is_bounded_at_100_levels(tmp_path: Path) -> None:
    _load(tmp_path, _nested(100))
    with pytest.raises(ConfigError, match=r"line 5, column 1\d\d: valid YAML \(nested deeper "
                                          r"than 100 levels\)"):
        _load(tmp_path, _nested(101))


def test_nesting_through_aliases_is_bounded_too(tmp_path: Path) -> None:
    chain = ["&a0 [1]"] + [f"&a{i} [*a{i - 1}]" for i in range(1, 120)]
    labels = "{" + ", ".join(f"k{i}: {v}" for i, v in enumerate(chain)) + "}"
    with pytest.raises(ConfigError, match=r"nested deeper than 100 levels \(with aliases\)"):
        _load(tmp_path, INGRESS.format(labels=labels))


def test_a_value_yaml_cannot_build_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"site.yaml: valid YAML \(ValueError: month must be "):
        _load(tmp_path, INGRESS.format(labels="{since: 2001-13-45 00:00:00}"))


def test_a_bug_while_reading_a_document_is_a_config_error_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(doc: object, source: str = "") -> None:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(loader, "parse_ingress", broken)
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, INGRESS.format(labels="{}"))
    assert str(info.value) == (f"{tmp_path / 'site.yaml'}: a manifest certop can read (reading "
                               "it failed: RuntimeError: a bug over two lines)")

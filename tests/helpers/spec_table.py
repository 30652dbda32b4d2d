"""The Ingress v1 path-matching table (kubernetes.io/docs/concepts/services-networking/ingress,
"Examples"), as cases shared by the pure routing tests and the proxy tests."""

from __future__ import annotations

import pytest

from certop.core.models import PathType

E, P, IS = PathType.EXACT, PathType.PREFIX, PathType.IMPLEMENTATION_SPECIFIC

SPEC_TABLE = [
        pytest.param([("/", P, "a")], "/anything/at/all", "a", id="prefix-root"),
        pytest.param([("/foo", E, "a")], "/foo", "a", id="exact-match"),
        pytest.param([("/foo", E, "a")], "/bar", None, id="exact-other"),
        pytest.param([("/foo", E, "a")], "/foo/", None, id="exact-no-trailing-slash"),
        pytest.param([("/foo/", E, "a")], "/foo", None, id="exact-slash-vs-none"),
        pytest.param([("/foo", P, "a")], "/foo", "a", id="prefix-same"),
        pytest.param([("/foo", P, "a")], "/foo/", "a", id="prefix-trailing"),
        pytest.param([("/foo/", P, "a")], "/foo", "a", id="prefix-rule-trailing"),
        pytest.param([("/foo/", P, "a")], "/foo/", "a", id="prefix-both-trailing"),
        pytest.param([("/aaa/bb", P, "a")], "/aaa/bbb", None, id="prefix-partial-element"),
        pytest.param([("/aaa/bbb", P, "a")], "/aaa/bbb", "a", id="prefix-exact-elements"),
        pytest.param([("/aaa/bbb", P, "a")], "/aaa/bbb/", "a", id="prefix-ignores-slash"),
        pytest.param([("/aaa/bbb", P, "a")], "/aaa/bbb/ccc", "a", id="prefix-subpath"),
        pytest.param([("/aaa/bbb", P, "a")], "/aaa/bbbxyz", None, id="prefix-not-string"),
        pytest.param([("/", P, "a"), ("/aaa", P, "b")], "/aaa/ccc", "b", id="longest-wins"),
        pytest.param([("/", P, "a"), ("/aaa", P, "b"), ("/aaa/bbb", P, "c")], "/aaa/bbb", "c",
                     id="longest-of-three"),
        pytest.param([("/", P, "a"), ("/aaa", P, "b"), ("/aaa/bbb", P, "c")], "/ccc", "a",
                     id="falls-back-to-root"),
        pytest.param([("/aaa", P, "a")], "/ccc", None, id="no-match-no-default"),
        pytest.param([("/foo", P, "a"), ("/foo", E, "b")], "/foo", "b", id="exact-beats-prefix"),
        pytest.param([("/foo", IS, "a")], "/foo/bar", "a", id="implementation-specific-prefix"),
        pytest.param([("/FOO", P, "a")], "/foo", None, id="case-sensitive"),
    ]

"""Kubernetes object names, checked the way the API server checks them.

Rules (k8s.io/apimachinery `pkg/util/validation`, as applied by the API server):

- A namespace is a DNS-1123 label (`ValidateNamespaceName` = `NameIsDNSLabel`): lower-case
  letters, digits and '-', starting and ending with a letter or digit, at most 63 characters.
- The names of Ingresses, Secrets and custom resources (ClusterIssuer, Issuer, Certificate), and
  the Secret names an object refers to (`spec.tls[].secretName`,
  `spec.acme.privateKeySecretRef.name`), are DNS-1123 subdomains (`NameIsDNSSubdomain`):
  such labels joined by '.', at most 253 characters.

In standalone mode these names become paths under `--state-dir` (`certs/<namespace>/<secret>`),
so nothing else may pass: no '/', no '..', no absolute path, no control character. Pure: the
functions say what is wrong (or None) and the parsers turn that into a `ConfigError` naming the
file, the object and the field.
"""

from __future__ import annotations

import re

LABEL_MAX = 63
SUBDOMAIN_MAX = 253
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_SUBDOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_QUOTE_MAX = 64

LABEL_EXPECTED = (f"a DNS-1123 label (lower-case letters, digits and '-', starting and ending "
                  f"with a letter or digit, at most {LABEL_MAX} characters, e.g. 'my-name')")
SUBDOMAIN_EXPECTED = (f"a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', each "
                      f"part starting and ending with a letter or digit, at most "
                      f"{SUBDOMAIN_MAX} characters, e.g. 'example.com')")


def quoted(value: object) -> str:
    """`value` for an error message: on one line, and short."""
    if isinstance(value, str):
        if len(value) > _QUOTE_MAX:
            return f"{value[:_QUOTE_MAX]!r}... ({len(value)} characters)"
        return repr(value)
    return f"a {type(value).__name__}"


def label_problem(value: object) -> str | None:
    """None when `value` is a DNS-1123 label (a namespace); else what is expected instead."""
    if isinstance(value, str) and len(value) <= LABEL_MAX and _LABEL_RE.fullmatch(value):
        return None
    return f"{LABEL_EXPECTED}, not {quoted(value)}"


def subdomain_problem(value: object) -> str | None:
    """None when `value` is a DNS-1123 subdomain (an object or Secret name); else what is
    expected instead."""
    if isinstance(value, str) and len(value) <= SUBDOMAIN_MAX \
            and _SUBDOMAIN_RE.fullmatch(value):
        return None
    return f"{SUBDOMAIN_EXPECTED}, not {quoted(value)}"

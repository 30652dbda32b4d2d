"""The kubernetes-sigs ingress-controller-conformance scenarios (../shared/notes/anchors.md
section 4b), shared by the file-fed proxy tests (tests/proxy/test_conformance.py) and the
API-fed ones (tests/k8s/test_proxy_conformance.py): the Ingresses, the echo Services they
name, and a plain-HTTP client that sends exactly the request asked for."""

from __future__ import annotations

import http.client
import json

SERVICES = ["echo-service", "wildcard-foo-com", "foo-bar-com", "foo-exact", "foo-prefix",
            "aaa-slash-bbb-prefix", "aaa-prefix", "aaa-slash-bbb-slash-prefix",
            "foo-slash-exact"]


def backend(name: str, port: str = "number: 8080") -> str:
    return f"backend: {{service: {{name: {name}, port: {{{port}}}}}}}"


MANIFESTS = f"""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: host-rules, namespace: conformance}}
spec:
  rules:
    - host: "*.foo.com"
      http:
        paths: [{{path: /, pathType: Prefix, {backend("wildcard-foo-com")}}}]
    - host: foo.bar.com
      http:
        paths: [{{path: /, pathType: Prefix, {backend("foo-bar-com", "name: http")}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: path-rules, namespace: conformance}}
spec:
  rules:
    - host: exact-path-rules
      http:
        paths: [{{path: /foo, pathType: Exact, {backend("foo-exact")}}}]
    - host: prefix-path-rules
      http:
        paths:
          - {{path: /foo, pathType: Prefix, {backend("foo-prefix")}}}
          - {{path: /aaa/bbb, pathType: Prefix, {backend("aaa-slash-bbb-prefix")}}}
          - {{path: /aaa, pathType: Prefix, {backend("aaa-prefix")}}}
    - host: mixed-path-rules
      http:
        paths:
          - {{path: /foo, pathType: Prefix, {backend("foo-prefix")}}}
          - {{path: /foo, pathType: Exact, {backend("foo-exact")}}}
    - host: trailing-slash-path-rules
      http:
        paths:
          - {{path: /aaa/bbb/, pathType: Prefix, {backend("aaa-slash-bbb-slash-prefix")}}}
          - {{path: /foo/, pathType: Exact, {backend("foo-slash-exact")}}}
"""

DEFAULT_BACKEND = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: default-backend, namespace: conformance}
spec:
  defaultBackend: {service: {name: echo-service, port: {number: 8080}}}
"""


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, host: str | None, path: str, method: str = "GET"
                ) -> tuple[int, dict[str, object] | None, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_host=True)
            if host is not None:
                conn.putheader("Host", host)
            conn.putheader("User-Agent", "Go-http-client/1.1")
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            data = json.loads(body) if resp.getheader("Content-Type") == "application/json" \
                else None
            return resp.status, data, resp
        finally:
            conn.close()




HOST_CASES = [
    ("foo.bar.com", "/", "foo-bar-com", "host-exact"),
    ("subdomain.bar.com", "/", None, "host-unknown"),
    ("bar.foo.com", "/", "wildcard-foo-com", "host-wildcard"),
    ("baz.bar.foo.com", "/", None, "host-wildcard-two-labels"),
    ("foo.com", "/", None, "host-wildcard-apex"),
    ("exact-path-rules", "/foo", "foo-exact", "exact"),
    ("exact-path-rules", "/foo/", None, "exact-trailing-slash"),
    ("exact-path-rules", "/FOO", None, "exact-case"),
    ("exact-path-rules", "/bar", None, "exact-other"),
    ("prefix-path-rules", "/foo", "foo-prefix", "prefix"),
    ("prefix-path-rules", "/foo/", "foo-prefix", "prefix-trailing"),
    ("prefix-path-rules", "/FOO", None, "prefix-case"),
    ("prefix-path-rules", "/aaa/bbb", "aaa-slash-bbb-prefix", "prefix-long"),
    ("prefix-path-rules", "/aaa/bbb/ccc", "aaa-slash-bbb-prefix", "prefix-subpath"),
    ("prefix-path-rules", "/aaa/ccc", "aaa-prefix", "prefix-shorter"),
    ("prefix-path-rules", "/aaaccc", None, "prefix-not-element"),
    ("mixed-path-rules", "/foo", "foo-exact", "mixed-exact-wins"),
    ("trailing-slash-path-rules", "/aaa/bbb", "aaa-slash-bbb-slash-prefix",
     "trailing-rule-without"),
    ("trailing-slash-path-rules", "/aaa/bbb/", "aaa-slash-bbb-slash-prefix",
     "trailing-rule-with"),
    ("trailing-slash-path-rules", "/foo", None, "exact-slash-rule"),
]
"""(host, path, the service expected or None for a 404, id): the host and path rules."""

METHOD_CASES = [("GET", "my-host", "/"), ("GET", "my-host", "/sub-path"),
                ("POST", "some-host", "/"), ("PUT", "127.0.0.1", "/resource"),
                ("DELETE", "some-host", "/resource"), ("PATCH", "my-host", "/resource")]
"""(method, host, path): requests the default backend answers."""

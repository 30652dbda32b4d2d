"""The one Ingress-YAML builder of the tests (bench/ keeps its own, it runs without tests/)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def ingress_yaml(name: str, hosts: str | Sequence[str],
                 annotations: dict[str, str] | None = None, tls: bool = True,
                 service: str = "web", secret: str | None = None) -> str:
    """One Ingress in the default namespace routing each of `hosts` / to `service`:80; with
    `tls`, one tls entry for all the hosts with Secret `secret` (default NAME-tls)."""
    hosts = [hosts] if isinstance(hosts, str) else list(hosts)
    ann = "".join(f'\n    {k}: "{v}"' for k, v in (annotations or {}).items()) or " {}"
    tls_block = (f"\n  tls: [{{hosts: [{', '.join(hosts)}], "
                 f"secretName: {secret or name + '-tls'}}}]") if tls else ""
    rules = "".join(f"""
    - host: {host}
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {{service: {{name: {service}, port: {{number: 80}}}}}}""" for host in hosts)
    return f"""apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: default
  annotations:{ann}
spec:{tls_block}
  rules:{rules}
"""


def write_ingress(path: Path, name: str, hosts: list[str], secret: str,
                  service: str = "web", extra_annotations: dict[str, str] | None = None,
                  issuer: str | None = "default") -> Path:
    """`path` holding an Ingress for `hosts` with one tls entry (Secret `secret`), issued by
    the ClusterIssuer `issuer` (certop.dev/cluster-issuer; None: no such annotation)."""
    annotations = {"certop.dev/cluster-issuer": issuer} if issuer is not None else {}
    annotations.update(extra_annotations or {})
    path.write_text(ingress_yaml(name, hosts, annotations, service=service, secret=secret))
    return path

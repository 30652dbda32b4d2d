"""The Ingress shim's decisions: which Certificate objects an Ingress needs, given what exists.

Pure: takes the Ingress's desired specs (`desired.certificate_specs`) and the Certificates in
its namespace, returns the actions. The kopf handler in `certop/k8s/shim.py` carries them out.

Rules (cert-manager's ingress-shim, without its tug of war):
- one Certificate per `spec.tls[]` Secret, named after the Secret, owned by the Ingress;
- an identical Certificate that exists already is shared: the Ingress is added as an owner;
- a Certificate with the same name but other hosts or issuer that another Ingress owns is a
  conflict: nothing is changed, both sides are told;
- a Certificate this Ingress owns and no longer needs is deleted when no other Ingress owns
  it, else this Ingress lets go of it.
Ownership is explicit (ownerReferences), and never relies on garbage collection to be right.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certop.core.certificates import certificate_spec
from certop.core.models import CertificateSpec

API_VERSION = "certop.dev/v1"
SHIM_LABEL = "certop.dev/ingress-shim"
CLASS_ANNOTATION = "certop.dev/http01-ingress-class"
"""The IngressClass of the Ingress that asked, for its temporary HTTP-01 Ingresses."""


@dataclass(frozen=True)
class Owner:
    """The Ingress the shim acts for."""

    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": self.name,
                "uid": self.uid, "controller": False, "blockOwnerDeletion": False}


class Act(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    ADOPT = "adopt"
    RELEASE = "release"
    DELETE = "delete"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Action:
    act: Act
    name: str
    body: dict[str, Any] | None = None
    """The whole object (create) or a merge patch (update, adopt, release)."""
    message: str = ""
    others: tuple[str, ...] = ()
    """For a conflict: the other Ingresses that own the Certificate."""


def _same(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    have = existing.get("spec") or {}
    return bool(
        have.get("secretName") == wanted["secretName"]
        and sorted(have.get("dnsNames") or []) == wanted["dnsNames"]
        and (have.get("issuerRef") or {}).get("name") == wanted["issuerRef"]["name"]
        and (have.get("issuerRef") or {}).get("kind", "ClusterIssuer")
        == wanted["issuerRef"]["kind"]
        and (have.get("privateKey") or {}) == wanted["privateKey"]
        and have.get("renewBefore") == wanted.get("renewBefore")
    )


def _owners(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return [r for r in refs if r.get("kind") == "Ingress"]


def plan(owner: Owner, desired: Sequence[CertificateSpec],
         existing: Mapping[str, Mapping[str, Any]],
         ingress_class: str | None = None) -> list[Action]:
    """The actions that make the namespace's Certificates match what `owner` needs."""
    actions: list[Action] = []
    wanted_names: set[str] = set()
    for spec in desired:
        name = spec.secret_name
        wanted_names.add(name)
        wanted = certificate_spec(spec)
        obj = existing.get(name)
        if obj is None:
            actions.append(Action(Act.CREATE, name, {
                "apiVersion": API_VERSION, "kind": "Certificate",
                "metadata": {"name": name, "namespace": spec.namespace,
                             "labels": {SHIM_LABEL: "true"},
                             "annotations": {CLASS_ANNOTATION: ingress_class}
                             if ingress_class else {},
                             "ownerReferences": [owner.reference()]},
                "spec": wanted,
            }))
            continue
        owners = _owners(obj)
        mine = any(r.get("uid") == owner.uid for r in owners)
        others = tuple(sorted(r.get("name", "?") for r in owners if r.get("uid") != owner.uid))
        if _same(obj, wanted):
            if not mine:
                refs = [*((obj.get("metadata") or {}).get("ownerReferences") or []),
                        owner.reference()]
                actions.append(Action(Act.ADOPT, name, {"metadata": {"ownerReferences": refs}}))
            continue
        if others:
            actions.append(Action(
                Act.CONFLICT, name,
                message=f"Certificate {name} (Secret {name}) is already requested by Ingress "
                        f"{', '.join(others)} with other hosts or issuer; not changing it",
                others=others))
            continue
        # A merge patch: an explicit null removes a renewBefore the Ingress no longer asks for.
        actions.append(Action(Act.UPDATE, name, {"spec": {"renewBefore": None, **wanted}}))
    for old_name, old in sorted(existing.items()):
        if old_name in wanted_names:
            continue
        if not any(r.get("uid") == owner.uid for r in _owners(old)):
            continue
        rest = [r for r in (old.get("metadata") or {}).get("ownerReferences") or []
                if r.get("uid") != owner.uid]
        if any(r.get("kind") == "Ingress" for r in rest):
            actions.append(Action(Act.RELEASE, old_name,
                                  {"metadata": {"ownerReferences": rest}}))
        else:
            actions.append(Action(Act.DELETE, old_name))
    return actions

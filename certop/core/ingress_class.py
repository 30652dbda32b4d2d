"""Which Ingresses an Ingress controller serves: the IngressClass rules.

An Ingress whose `spec.ingressClassName` names an IngressClass of this controller
(`spec.controller`) is served; one whose field names any other class, or a class that does
not exist, never is. Without the field, the deprecated `kubernetes.io/ingress.class`
annotation is compared with the controller's class name (as ingress-nginx does); without
either, the Ingress is served when an IngressClass of this controller is marked
`ingressclass.kubernetes.io/is-default-class: "true"`. The field wins over the annotation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"


@dataclass(frozen=True)
class IngressClass:
    name: str
    controller: str
    default: bool = False


def parse_class(raw: Mapping[str, Any]) -> IngressClass:
    meta = raw.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return IngressClass(str(meta.get("name") or ""),
                        str((raw.get("spec") or {}).get("controller") or ""),
                        str(annotations.get(DEFAULT_CLASS_ANNOTATION, "")).lower() == "true")


@dataclass(frozen=True)
class Claim:
    """How an Ingress says which controller should serve it."""

    field: str | None
    """spec.ingressClassName."""
    annotation: str | None
    """The deprecated kubernetes.io/ingress.class annotation."""

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Claim:
        field = (raw.get("spec") or {}).get("ingressClassName")
        annotation = ((raw.get("metadata") or {}).get("annotations") or {}).get(
            CLASS_ANNOTATION)
        return cls(field if isinstance(field, str) and field else None,
                   annotation if isinstance(annotation, str) and annotation else None)


def serves(claim: Claim, classes: Mapping[str, IngressClass], controller: str,
           class_name: str) -> bool:
    """Does the controller `controller` (whose own class is named `class_name`) serve an
    Ingress that claims `claim`, given the cluster's IngressClasses?"""
    if claim.field is not None:
        found = classes.get(claim.field)
        return found is not None and found.controller == controller
    if claim.annotation is not None:
        return claim.annotation == class_name
    return any(c.default and c.controller == controller for c in classes.values())

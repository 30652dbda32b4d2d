"""The storage ports. Files (standalone), Secrets (cluster) and memory (tests) implement them.

Rules every adapter keeps: a write is atomic (a reader sees the old or the new value, never a
mix, even across a crash); private keys are readable by the owner only; a save never silently
replaces something certop does not own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class StoredCert:
    fullchain_pem: bytes
    key_pem: bytes


class CertStore(Protocol):
    def load(self, namespace: str, name: str) -> StoredCert | None:
        """The pair stored under namespace/name, or None. Never raises for missing data."""
        ...

    def save(self, namespace: str, name: str, cert: StoredCert) -> None:
        """Store the pair atomically (cert and key together)."""
        ...

    def version(self, namespace: str, name: str) -> str | None:
        """An opaque token that changes whenever the stored pair does (None: nothing stored).
        Cheap, for processes that only serve what another one stores."""
        ...


class AccountStore(Protocol):
    def load_account(self, account_id: str) -> tuple[bytes, dict[str, Any]] | None:
        """(key PEM, registration info) of an ACME account, or None."""
        ...

    def save_account_key(self, account_id: str, key_pem: bytes) -> None:
        """Persist the key before it is ever used, so it cannot be lost."""
        ...

    def save_account_info(self, account_id: str, info: dict[str, Any]) -> None:
        ...


class OrderJournal(Protocol):
    """In-flight orders, so a restart resumes an order instead of placing a new one."""

    def load(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def save(self, namespace: str, name: str, entry: dict[str, Any]) -> None: ...

    def clear(self, namespace: str, name: str) -> None: ...


class FailureRecords(Protocol):
    """Failed issuance attempts since the last certificate, per certificate (standalone mode;
    cluster mode keeps them on the Certificate's status): `{"failures": n, "last": iso}`."""

    def load(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def save(self, namespace: str, name: str, entry: dict[str, Any]) -> None: ...

    def clear(self, namespace: str, name: str) -> None: ...

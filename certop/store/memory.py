"""In-memory adapters: the same contract as the file and Secret stores, for tests and tools."""

from __future__ import annotations

import copy
from typing import Any

from certop.store.ports import StoredCert


class MemoryCertStore:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], StoredCert] = {}
        self.versions: dict[tuple[str, str], int] = {}

    def version(self, namespace: str, name: str) -> str | None:
        found = self.versions.get((namespace, name))
        return None if found is None else str(found)

    def load(self, namespace: str, name: str) -> StoredCert | None:
        return self.items.get((namespace, name))

    def save(self, namespace: str, name: str, cert: StoredCert) -> None:
        self.items[(namespace, name)] = cert
        self.versions[(namespace, name)] = self.versions.get((namespace, name), 0) + 1


class MemoryAccountStore:
    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.infos: dict[str, dict[str, Any]] = {}

    def load_account(self, account_id: str) -> tuple[bytes, dict[str, Any]] | None:
        if account_id not in self.keys:
            return None
        return self.keys[account_id], dict(self.infos.get(account_id, {}))

    def save_account_key(self, account_id: str, key_pem: bytes) -> None:
        if account_id in self.keys:
            raise FileExistsError(f"account {account_id}: an account key is never overwritten")
        self.keys[account_id] = key_pem

    def save_account_info(self, account_id: str, info: dict[str, Any]) -> None:
        self.infos[account_id] = dict(info)


class MemoryOrderJournal:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}

    def load(self, namespace: str, name: str) -> dict[str, Any] | None:
        entry = self.entries.get((namespace, name))
        return copy.deepcopy(entry) if entry is not None else None

    def save(self, namespace: str, name: str, entry: dict[str, Any]) -> None:
        self.entries[(namespace, name)] = copy.deepcopy(entry)

    def clear(self, namespace: str, name: str) -> None:
        self.entries.pop((namespace, name), None)


class MemoryFailureRecords(MemoryOrderJournal):
    """Failed attempts per certificate, in memory."""

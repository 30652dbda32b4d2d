"""File adapters for standalone mode: everything under one `--state-dir`.

Layout (all written atomically; keys and journal entries 0600, directories 0700):

    accounts/<account-id>/key.pem, account.json
    certs/<namespace>/<name>/current -> v<N>/   (tls.crt = leaf + chain, tls.key)
    orders/<namespace>/<name>.json               (in-flight order: URL, hosts, its fresh key)

A certificate and its key change together: a new version directory is written in full, then the
`current` symlink is replaced in one rename, so a crash leaves the old pair or the new pair.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from certop.store.ports import StoredCert

KEEP_VERSIONS = 2


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` in one rename; the file never exists with other permissions."""
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class FileCertStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, namespace: str, name: str) -> Path:
        """The directory whose `current/tls.crt` and `current/tls.key` users can point at."""
        return self.root / "certs" / namespace / name

    def version(self, namespace: str, name: str) -> str | None:
        """Which version is current (cheap: one readlink), for processes that only serve."""
        try:
            return os.readlink(self.path(namespace, name) / "current")
        except OSError:
            return None

    def load(self, namespace: str, name: str) -> StoredCert | None:
        current = self.path(namespace, name) / "current"
        try:
            return StoredCert(
                (current / "tls.crt").read_bytes(), (current / "tls.key").read_bytes()
            )
        except (FileNotFoundError, NotADirectoryError):
            return None

    def save(self, namespace: str, name: str, cert: StoredCert) -> None:
        base = ensure_dir(self.path(namespace, name))
        versions = sorted(
            (int(p.name[1:]) for p in base.glob("v*") if p.name[1:].isdigit()), reverse=True
        )
        version = f"v{(versions[0] + 1) if versions else 1}"
        new = base / version
        if new.exists():
            shutil.rmtree(new)
        ensure_dir(new)
        write_atomic(new / "tls.key", cert.key_pem, 0o600)
        write_atomic(new / "tls.crt", cert.fullchain_pem, 0o644)
        link_tmp = base / f".current.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            link_tmp.unlink()
        link_tmp.symlink_to(version)
        os.replace(link_tmp, base / "current")
        _fsync_dir(base)
        for old in versions[KEEP_VERSIONS - 1 :]:
            shutil.rmtree(base / f"v{old}", ignore_errors=True)


class FileAccountStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, account_id: str) -> Path:
        return self.root / "accounts" / account_id

    def load_account(self, account_id: str) -> tuple[bytes, dict[str, Any]] | None:
        d = self._dir(account_id)
        try:
            key = (d / "key.pem").read_bytes()
        except FileNotFoundError:
            return None
        try:
            info = json.loads((d / "account.json").read_text())
        except (FileNotFoundError, ValueError):
            info = {}
        return key, info

    def save_account_key(self, account_id: str, key_pem: bytes) -> None:
        path = self._dir(account_id) / "key.pem"
        if path.exists():
            raise FileExistsError(f"{path} exists: an account key is never overwritten")
        write_atomic(path, key_pem, 0o600)

    def save_account_info(self, account_id: str, info: dict[str, Any]) -> None:
        write_atomic(self._dir(account_id) / "account.json",
                     json.dumps(info, indent=2).encode(), 0o600)


class FileOrderJournal:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, namespace: str, name: str) -> Path:
        return self.root / "orders" / namespace / f"{name}.json"

    def load(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path(namespace, name).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save(self, namespace: str, name: str, entry: dict[str, Any]) -> None:
        write_atomic(self._path(namespace, name), json.dumps(entry).encode(), 0o600)

    def clear(self, namespace: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(namespace, name).unlink()

"""File adapters for standalone mode: everything under one `--state-dir`.

Layout (all written atomically; keys and journal entries 0600, directories 0700):

    accounts/<account-id>/key.pem, account.json
    certs/<namespace>/<name>/current -> v<N>/   (tls.crt = leaf + chain, tls.key)
    orders/<namespace>/<name>.json               (in-flight order: URL, hosts, its fresh key)
    ca/<issuer>.pem                              (an issuer's caBundle, for its ACME server)

A certificate and its key change together: a new version directory is written in full, then the
`current` symlink is replaced in one rename, so a crash leaves the old pair or the new pair.

Rules: every path is built from the state directory and names that are each one plain path
component (no '/', '.', '..', NUL, nothing empty), so no name can leave the state directory
whatever the caller checked. Writes, removals and reads never go through a symlink below the
state directory (the state directory itself may be one: the user chose it); the only symlinks
certop follows are its own `current -> v<N>`. Every directory created is 0700, missing parents
of the state directory included, and directories an older certop left open are closed to 0700.
These checks assume nobody else writes inside the state directory while certop runs (it is
0700 and certop's own); they stop a name or a planted symlink from steering certop's writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from certop.core.errors import ConfigError
from certop.store.ports import StoredCert

KEEP_VERSIONS = 2
STORE_DIRS = ("accounts", "certs", "orders", "ca", "challenges")
"""Where certop writes below the state directory."""


class UnsafePath(ConfigError):
    """A path below the state directory that would leave it or go through a symlink."""

    def __init__(self, path: Path | str, expected: str) -> None:
        super().__init__(str(path), "", "", expected)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> Path:
    """`path` as a directory; it and every missing parent are created 0700."""
    missing: list[Path] = []
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    return path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` in one rename; the file never exists with other permissions."""
    ensure_dir(path.parent)
    _write_in(path.parent, path.name, data, mode)


def _write_in(directory: Path, name: str, data: bytes, mode: int) -> None:
    path = directory / name
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
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
    _fsync_dir(directory)


class StateDir:
    """Paths below `--state-dir`, checked: one plain component per name, no symlink on the way."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _outside(self, path: Path | str, why: str) -> UnsafePath:
        return UnsafePath(path, f"a path inside the state directory {self.root} ({why})")

    def path(self, *parts: str) -> Path:
        """root/parts..., each part checked to be one plain path component."""
        for part in parts:
            if not isinstance(part, str) or part in ("", ".", "..") or "/" in part \
                    or "\0" in part:
                joined = "/".join(str(p) for p in parts)
                raise self._outside(self.root, f"{joined!r}: {part!r} is not one plain file "
                                               "name")
        return self.root.joinpath(*parts)

    def _symlink(self, path: Path, what: str) -> UnsafePath:
        target = os.readlink(path)
        shown = target if target.isprintable() else repr(target)
        return UnsafePath(path, f"{what} inside the state directory {self.root}, not a symlink "
                                f"(to {shown}): certop never writes through one")

    def _directory(self, path: Path, create: bool) -> bool:
        """Whether `path` is a real directory (not a symlink); created 0700 when missing and
        `create`. Refuses a symlink or another kind of file."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                return False
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise self._symlink(path, "a directory")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(path, "a directory, as certop left it")
        if create and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o700)  # left open by an older certop: keys live below
        return True

    def directory(self, *parts: str, create: bool = True) -> Path:
        """root/parts... as a directory every component of which is a real directory below the
        state directory (created 0700 when missing and `create`)."""
        target = self.path(*parts)
        if create:
            ensure_dir(self.root)
        elif not self.root.is_dir():
            return target
        current = self.root
        for part in parts:
            current = current / part
            if not self._directory(current, create):
                break
        return target

    def file(self, *parts: str, link: bool = False) -> Path:
        """root/parts... to read: its directories must be real ones (missing is fine), and
        it no symlink unless `link` (certop's own `current`)."""
        path = self.path(*parts)
        self.directory(*parts[:-1], create=False)
        if not link and os.path.islink(path):
            raise self._symlink(path, "a file")
        return path

    def write(self, parts: tuple[str, ...], data: bytes, mode: int = 0o600) -> Path:
        """Write a file atomically at root/parts..., creating its directories 0700."""
        directory = self.directory(*parts[:-1])
        name = self.path(*parts).name
        _write_in(directory, name, data, mode)
        return directory / name

    def remove(self, *parts: str) -> None:
        """Remove root/parts... (a file, a symlink itself, or a directory tree); never follows
        a symlink on the way or inside."""
        path = self.file(*parts, link=True)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # symlink-safe: it does not follow links inside the tree
        else:
            path.unlink()

    def check(self) -> None:
        """Refuse a state directory with a symlink below it other than certop's `current`
        links (a symlink planted to steer writes out); for start-up, before anything runs."""
        for top in STORE_DIRS:
            start = self.root / top
            if not os.path.lexists(start):
                continue
            self._directory(start, create=False)
            for dirpath, dirnames, filenames in os.walk(start):
                for name in dirnames + filenames:
                    path = Path(dirpath) / name
                    if not os.path.islink(path):
                        continue
                    target = os.readlink(path)
                    if name == "current" and target.startswith("v") and target[1:].isascii() \
                            and target[1:].isdigit():
                        continue
                    raise self._symlink(path, "a directory" if path.is_dir() else "a file")


class FileCertStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = StateDir(root)

    def path(self, namespace: str, name: str) -> Path:
        """The directory whose `current/tls.crt` and `current/tls.key` users can point at."""
        return self.state.path("certs", namespace, name)

    def version(self, namespace: str, name: str) -> str | None:
        """Which version is current (cheap: one readlink), for processes that only serve."""
        current = self.state.file("certs", namespace, name, "current", link=True)
        try:
            return os.readlink(current)
        except OSError:
            return None

    def load(self, namespace: str, name: str) -> StoredCert | None:
        version = self.version(namespace, name)
        if version is None:
            return None
        # `current` is certop's own link to a sibling version directory: read through nothing
        # else (the version and its files are checked like every other path).
        try:
            return StoredCert(
                self.state.file("certs", namespace, name, version, "tls.crt").read_bytes(),
                self.state.file("certs", namespace, name, version, "tls.key").read_bytes(),
            )
        except (FileNotFoundError, NotADirectoryError):
            return None

    def save(self, namespace: str, name: str, cert: StoredCert) -> None:
        base = self.state.directory("certs", namespace, name)
        versions = sorted(
            (int(p.name[1:]) for p in base.glob("v*")
             if p.name[1:].isascii() and p.name[1:].isdigit()), reverse=True
        )
        version = f"v{(versions[0] + 1) if versions else 1}"
        self.state.remove("certs", namespace, name, version)
        new = self.state.directory("certs", namespace, name, version)
        _write_in(new, "tls.key", cert.key_pem, 0o600)
        _write_in(new, "tls.crt", cert.fullchain_pem, 0o644)
        link_tmp = base / f".current.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            link_tmp.unlink()
        link_tmp.symlink_to(version)
        os.replace(link_tmp, base / "current")
        _fsync_dir(base)
        for old in versions[KEEP_VERSIONS - 1 :]:
            with contextlib.suppress(OSError):
                self.state.remove("certs", namespace, name, f"v{old}")


class FileAccountStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = StateDir(root)

    def load_account(self, account_id: str) -> tuple[bytes, dict[str, Any]] | None:
        try:
            key = self.state.file("accounts", account_id, "key.pem").read_bytes()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(self.state.file("accounts", account_id, "account.json")
                              .read_text())
        except (FileNotFoundError, ValueError):
            info = {}
        return key, info

    def save_account_key(self, account_id: str, key_pem: bytes) -> None:
        path = self.state.file("accounts", account_id, "key.pem")
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists: an account key is never overwritten")
        self.state.write(("accounts", account_id, "key.pem"), key_pem, 0o600)

    def save_account_info(self, account_id: str, info: dict[str, Any]) -> None:
        self.state.write(("accounts", account_id, "account.json"),
                         json.dumps(info, indent=2).encode(), 0o600)


class _JsonRecords:
    """One small JSON document per certificate under `<root>/<directory>/<namespace>/`."""

    directory = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = StateDir(root)

    def _parts(self, namespace: str, name: str) -> tuple[str, str, str]:
        self.state.path(self.directory, namespace, name)  # `name` is one plain component
        return (self.directory, namespace, f"{name}.json")

    def load(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state.file(*self._parts(namespace, name)).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save(self, namespace: str, name: str, entry: dict[str, Any]) -> None:
        self.state.write(self._parts(namespace, name), json.dumps(entry).encode(), 0o600)

    def clear(self, namespace: str, name: str) -> None:
        self.state.remove(*self._parts(namespace, name))


class FileOrderJournal(_JsonRecords):
    directory = "orders"


class FileFailureRecords(_JsonRecords):
    """Failed attempts since the last certificate (`failures/<namespace>/<name>.json`), so a
    restart continues the backoff instead of starting it over."""

    directory = "failures"

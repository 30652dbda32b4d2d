"""Certificates the user brings: `--certificate SECRET=CERT.pem,KEY.pem` and `kubernetes.io/tls`
Secrets in the manifest files. A `spec.tls[]` entry whose Secret is supplied gets no ACME order.

Every pair is checked when loaded (PEM, key matches); a bad one is a ConfigError naming the
flag or Secret and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from certop import crypto
from certop.core.errors import ConfigError
from certop.store.ports import StoredCert

SecretKey = tuple[str, str]
DEFAULT_NAMESPACE = "default"


def parse_certificate_flag(value: str) -> tuple[SecretKey, Path, Path]:
    name, sep, files = value.partition("=")
    cert, comma, key = files.partition(",")
    if not sep or not name or not comma or not cert or not key:
        raise ConfigError("--certificate", value, "",
                          "SECRETNAME=CERT.pem,KEY.pem (SECRETNAME may be namespace/name)")
    namespace, slash, secret = name.rpartition("/")
    return (namespace if slash else DEFAULT_NAMESPACE, secret), Path(cert), Path(key)


def read_pair(cert: Path, key: Path, where: str) -> StoredCert:
    try:
        pair = StoredCert(cert.read_bytes(), key.read_bytes())
    except OSError as exc:
        raise ConfigError(where, "", "", f"readable PEM files ({exc.strerror}: "
                                         f"{exc.filename})") from None
    check(pair, where, "")
    return pair


def check(pair: StoredCert, where: str, obj: str) -> None:
    try:
        crypto.load_pair(pair.fullchain_pem, pair.key_pem)
    except crypto.CertificateUnreadable as exc:
        raise ConfigError(where, obj, "", f"a PEM certificate chain and its key ({exc})") from None


class Supplied:
    """The pairs that loaded, and (when not strict) why others did not."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.pairs: dict[SecretKey, StoredCert] = {}
        self.broken: dict[SecretKey, str] = {}

    def _add(self, key: SecretKey, load: Callable[[], StoredCert]) -> None:
        try:
            self.pairs[key] = load()
        except ConfigError as exc:
            if self.strict:
                raise
            # While running, a broken file keeps the last good certificate for its hosts
            # (the CertBook is simply not given a new pair) and touches nothing else.
            self.broken[key] = str(exc)

    def from_flags(self, flags: Iterable[str]) -> Supplied:
        for flag in flags:
            key, cert, keyfile = parse_certificate_flag(flag)
            self._add(key, lambda c=cert, k=keyfile, f=flag: read_pair(  # type: ignore[misc]
                c, k, f"--certificate {f}"))
        return self

    def from_secrets(self, secrets: Mapping[SecretKey, Mapping[str, bytes]],
                     sources: Mapping[SecretKey, str]) -> Supplied:
        """Secrets holding both `tls.crt` and `tls.key` (type kubernetes.io/tls)."""
        for key, data in secrets.items():
            if "tls.crt" in data and "tls.key" in data:
                pair = StoredCert(data["tls.crt"], data["tls.key"])

                def load(p: StoredCert = pair, k: SecretKey = key) -> StoredCert:
                    check(p, sources.get(k, ""), f"Secret {k[0]}/{k[1]}")
                    return p

                self._add(key, load)
        return self


def flag_files(flags: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for flag in flags:
        _, cert, key = parse_certificate_flag(flag)
        files += [cert, key]
    return files

"""One registry of ACME accounts for both modes: one Account per issuer and account settings.

Accounts are keyed by `acme.accounts.issuer_key()` (the issuer's kind, namespace and name plus a
fingerprint of every setting that decides the account), so an issuer never lends its key, CA
trust or `skipTLSVerify` to another that names the same server and email, and a changed issuer
gets a new Account. The mode supplies where account keys live (`store_for`: the state
directory's files, or Secrets) and where CA bundles are written for `requests`, which wants a
file: `CaBundles` (the state directory's `ca/`, or a temporary directory removed at close).
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from certop.acme.accounts import Account, issuer_key
from certop.core.models import AcmeIssuer
from certop.store.files import StateDir
from certop.store.ports import AccountStore


class CaBundles:
    """Where issuers' CA bundles are written: `state`'s `ca/` directory (kept), or, without
    one, a temporary directory made when first needed and removed by `close()`."""

    def __init__(self, state: StateDir | None = None) -> None:
        self._state = state
        self._temp: StateDir | None = None

    def write(self, name: str, pem: bytes) -> Path:
        if self._state is not None:
            return self._state.write(("ca", f"{name}.pem"), pem, 0o644)
        if self._temp is None:
            self._temp = StateDir(Path(tempfile.mkdtemp(prefix="certop-ca-")))
        return self._temp.write((f"{name}.pem",), pem, 0o644)

    @staticmethod
    def remove(path: Path) -> None:
        path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._temp is not None:
            self._temp.remove()
            self._temp = None


class AccountRegistry:
    """The Account for an issuer (`get`), made once and reused until the issuer's account
    settings change (then its old CA bundle file goes)."""

    def __init__(self, store_for: Callable[[AcmeIssuer, str], AccountStore],
                 bundles: CaBundles | None = None,
                 trust: Callable[[AcmeIssuer], str | None] | None = None) -> None:
        self._store_for = store_for
        """The account store for (issuer, the namespace its key lives in)."""
        self.bundles = bundles or CaBundles()
        self._trust = trust
        """A CA bundle path for an issuer without its own (standalone's --acme-ca-bundle)."""
        self._accounts: dict[tuple[str, str, str], tuple[str, Account, Path | None]] = {}
        """The issuer's identity -> (fingerprint of its settings, Account, its bundle file)."""
        self._lock = threading.Lock()

    def get(self, issuer: AcmeIssuer, namespace: str) -> Account:
        """`issuer`'s own Account, its key kept in `namespace` (cluster mode: the issuer's
        namespace or the cluster resource namespace; standalone: where the issuer is)."""
        ident, fingerprint = issuer_key(issuer, namespace)
        with self._lock:
            cached = self._accounts.get(ident)
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
            verify: bool | str = not issuer.skip_tls_verify
            written: Path | None = None
            if issuer.ca_bundle_pem:
                name = hashlib.sha256(repr((ident, fingerprint)).encode()).hexdigest()[:32]
                written = self.bundles.write(name, issuer.ca_bundle_pem)
                verify = str(written)
            elif self._trust is not None:
                verify = self._trust(issuer) or verify
            if cached is not None and cached[2] is not None and cached[2] != written:
                self.bundles.remove(cached[2])  # the issuer's old bundle
            account = Account(issuer, self._store_for(issuer, namespace), verify)
            self._accounts[ident] = (fingerprint, account, written)
            return account

    def close(self) -> None:
        """Remove the CA bundle files this registry made in a temporary directory."""
        self.bundles.close()

"""ACME accounts: one per issuer, key persisted before first use and reused forever.

Who calls: the order driver, to get a `ClientV2` bound to a registered account. Registration
happens once per process and issuer (`Account.ensure_registered`); a crash between saving the
key and registering is healed by RFC 8555 section 7.3.1: registering an existing key answers
with that account's URL.

An account belongs to its issuer: callers that keep Accounts key them by `issuer_key()`
(the issuer's kind, namespace and name plus every setting that decides the account), never by
server and email alone, so an Issuer in a tenant's namespace cannot lend its key, CA bundle or
`skipTLSVerify` to a ClusterIssuer that merely names the same server and email.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import threading
from typing import Any

from acme import client, errors, messages
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from certop import crypto
from certop.acme import ari
from certop.acme.network import RetryingNetwork
from certop.core.errors import CertopError, TemporaryError
from certop.core.models import AcmeIssuer, KeyAlgorithm
from certop.store.ports import AccountStore

log = logging.getLogger(__name__)
USER_AGENT = "certop/0.1"


def _utc(when: datetime.datetime) -> datetime.datetime:
    """The acme library mixes aware and naive local datetimes: make them aware UTC."""
    return when.astimezone(datetime.UTC)


def account_id(server: str, email: str | None) -> str:
    digest = hashlib.sha256(f"{server}\n{email or ''}".encode()).hexdigest()[:16]
    return digest


def issuer_key(issuer: AcmeIssuer, store_namespace: str) -> tuple[tuple[str, str, str], str]:
    """(the issuer's identity, a fingerprint of its account settings): a cached Account is
    reused only for the same issuer with the same fingerprint (server, email, key Secret and
    the namespace it lives in, CA bundle, TLS verification, EAB)."""
    eab = issuer.eab
    parts = [issuer.server, issuer.email or "", issuer.account_key_secret or "",
             store_namespace, hashlib.sha256(issuer.ca_bundle_pem or b"").hexdigest(),
             str(issuer.skip_tls_verify), eab.key_id if eab else "",
             hashlib.sha256(eab.hmac_key_b64.encode()).hexdigest() if eab else ""]
    fingerprint = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
    return (issuer.ref.kind, issuer.ref.namespace, issuer.ref.name), fingerprint


class Account:
    """A registered ACME account; `client()` gives a fresh ClientV2 for one issuance."""

    def __init__(self, issuer: AcmeIssuer, store: AccountStore, verify: bool | str,
                 timeout: int = 30) -> None:
        self.issuer = issuer
        self.store = store
        self.verify = verify
        self.timeout = timeout
        self.id = account_id(issuer.server, issuer.email)
        self._lock = threading.Lock()
        self._jwk: JWKEC | None = None
        self._regr: messages.RegistrationResource | None = None
        self._directory: messages.Directory | None = None

    def _network(self, jwk: JWK) -> RetryingNetwork:
        return RetryingNetwork(
            key=jwk, alg=ES256, verify_ssl=self.verify, user_agent=USER_AGENT,
            timeout=self.timeout,
        )

    def _load_or_create_key(self) -> tuple[JWKEC, dict[str, Any]]:
        found = self.store.load_account(self.id)
        if found is not None:
            key_pem, info = found
            key = crypto.key_from_pem(key_pem)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise crypto.CertificateUnreadable("the ACME account key is not an ECDSA key")
            return JWKEC(key=key), info
        key = crypto.generate_key(KeyAlgorithm.ECDSA_P256)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.store.save_account_key(self.id, crypto.key_to_pem(key))
        return JWKEC(key=key), {}

    def ensure_registered(self) -> None:
        """Load or create the key and the registration; network only on first use."""
        with self._lock:
            if self._regr is not None:
                return
            jwk, info = self._load_or_create_key()
            net = self._network(jwk)
            directory = client.ClientV2.get_directory(self.issuer.server, net)
            uri = info.get("uri")
            if uri and info.get("server") == self.issuer.server:
                regr = messages.RegistrationResource(uri=uri, body=messages.Registration())
            else:
                regr = self._register(client.ClientV2(directory, net), jwk, directory)
                self.store.save_account_info(
                    self.id, {"uri": regr.uri, "server": self.issuer.server,
                              "email": self.issuer.email},
                )
                log.info("registered ACME account %s at %s", regr.uri, self.issuer.server)
            self._jwk, self._regr, self._directory = jwk, regr, directory

    def _register(self, acme: client.ClientV2, jwk: JWK,
                  directory: messages.Directory) -> messages.RegistrationResource:
        eab = None
        if self.issuer.eab is not None:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=jwk.public_key(),
                kid=self.issuer.eab.key_id,
                hmac_key=self.issuer.eab.hmac_key_b64,
                directory=directory,
            )
        reg = messages.NewRegistration.from_data(
            email=self.issuer.email,
            terms_of_service_agreed=True,
            external_account_binding=eab,
        )
        try:
            return acme.new_account(reg)
        except errors.ConflictError as exc:
            # The key is already registered (a crash after saving it): reuse that account.
            return messages.RegistrationResource(uri=exc.location, body=messages.Registration())

    def client(self) -> client.ClientV2:
        """A ClientV2 with its own network (nonce pool, session) for one issuance."""
        self.ensure_registered()
        assert self._jwk is not None and self._directory is not None
        net = self._network(self._jwk)
        net.account = self._regr
        return client.ClientV2(self._directory, net)

    def renewal_info(self, cert_pem: bytes) -> tuple[datetime.datetime | None, float]:
        """ARI (RFC 9773): (when to renew, UTC-aware; seconds until asking again). The first
        is None when the CA offers no `renewalInfo` (then the lifetime policy applies). The
        second is relative (the CA's Retry-After), so that callers schedule it on their own
        clock, never comparing the CA's wall time with an injected one."""
        self.ensure_registered()
        assert self._directory is not None
        if not ari.offered(self._directory):  # no network session just to learn that
            return None, 6 * 3600.0
        acme = self.client()
        try:
            when, again = acme.renewal_time(cert_pem)
        except errors.ARIError as exc:
            cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            raise TemporaryError(f"renewal information unavailable ({exc}{cause})") from exc
        except CertopError:
            raise
        except Exception as exc:  # a malformed answer, a certificate it cannot name, ...
            raise TemporaryError("the CA's renewal information could not be used: "
                                 f"{type(exc).__name__}: {exc}") from exc
        # The library adds the Retry-After to the real wall time: take it off the same clock.
        wait = (_utc(again) - datetime.datetime.now(datetime.UTC)).total_seconds()
        return _utc(when) if when else None, wait

    @property
    def jwk(self) -> JWKEC:
        assert self._jwk is not None, "ensure_registered() first"
        return self._jwk

    def key_authorization(self, chall: messages.ChallengeBody) -> str:
        return str(chall.chall.key_authorization(self.jwk))

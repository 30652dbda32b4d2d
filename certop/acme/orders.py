"""One certificate order, driven one bounded step at a time (RFC 8555 section 7.4).

`OrderSession.step()` does one round of network work and returns either the issued chain or
when to look again; the caller schedules that next look (it never sleeps here). The work comes
in stages (`Stage`); a step that completes one says so, so that the caller can stop cleanly
between two stages. State that must survive a crash goes to the `OrderJournal` before it
matters, and each stage is idempotent when re-entered after a restart:

1. `KEY`: a fresh private key is made (or the journalled order's key taken up again);
2. `ORDER`: the key, the hosts and the order URL are journalled in one write right after
   `newOrder` answers (the key is used only later, in the CSR: a crash before this write
   leaves an order at the CA that expires unused, and loses nothing);
3. `CHALLENGES`: every pending authorization's challenge is presented, self-checked, answered;
4. `FINALIZE`: the CSR (journalled key) is sent once the order is `ready`;
5. `CERTIFICATE`: the chain is downloaded. The journal is kept until the caller has stored the
   certificate and calls `finish()`: a crash in between downloads the same certificate again
   instead of ordering a second one. With `clear_finished=False`, `finish()` writes nothing:
   the caller records elsewhere whether an order is in flight (cluster mode: the
   Certificate's status) and asks to `resume` only then; the next order overwrites the
   entry.

On restart a journalled order is fetched and continued (`pending` -> challenges, `ready` ->
finalize, `processing` -> poll, `valid` -> download), so no second certificate is issued for the
same identifiers; an `invalid` order is abandoned cleanly.

An order never waits for ever. Some CAs leave an order `pending` after one of its
authorizations became `invalid` (RFC 8555 section 7.1.6 says the order becomes invalid too), so
while an order is pending its authorizations are looked at as well: an authorization that is
`invalid`, `deactivated`, `expired` or `revoked`, or a challenge answered `invalid`, fails the
attempt at once with the CA's detail and drops the order from the journal, so that the next
attempt (after the caller's backoff) places a new order instead of resuming a dead one. The
validation phase has a deadline (`validation_timeout`), after which the order is dropped too.

Polling starts at `poll_min` and grows by half each time up to `poll_max`, honouring the CA's
Retry-After: the library's own 1 s floor does not apply.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from acme import challenges, client, messages
from acme import errors as acme_errors

from certop import crypto
from certop.acme import ari
from certop.acme.accounts import Account
from certop.acme.network import parse_retry_after
from certop.core import solvers
from certop.core.errors import (
    CertopError,
    ChallengeFailed,
    ConfigError,
    OrderFailed,
    TemporaryError,
)
from certop.core.models import AcmeIssuer, CertificateSpec, SolverSpec
from certop.store.ports import OrderJournal, StoredCert
from solvers.base import Challenge, Solver, SolverLookup

log = logging.getLogger(__name__)
SELF_CHECK_TRIES = 20
VALIDATION_TIMEOUT = 600.0
"""Seconds an order may stay `pending` once its challenges are answered (or it is resumed)."""
STATUS_EXPIRED = messages.Status.POSSIBLE_NAMES.get("expired") or messages.Status("expired")
"""RFC 8555 section 7.1.6's `expired` authorization state, which the pinned `acme` does not know
(it refuses to read an authorization in that state); creating the constant registers it."""
_DEAD = frozenset({messages.STATUS_INVALID, messages.STATUS_DEACTIVATED, STATUS_EXPIRED,
                   messages.STATUS_REVOKED})
"""Authorization states from which an order can never become ready (RFC 8555 section 7.1.6)."""


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of `url` (the port filled in for https and http)."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        port = -1
    return parts.scheme, (parts.hostname or ""), port


def status_word(status: object) -> str:
    """`invalid`, not `Status(invalid)`: the word the CA used."""
    return str(getattr(status, "name", status))


def _problem_text(error: messages.Error | None) -> str:
    if error is None:
        return "the CA gave no detail"
    return str(error.detail or error.description or error.typ or "the CA gave no detail")


class Stage(enum.Enum):
    """The stages of one order, in order; each is safe to re-enter after a restart."""

    KEY = "key"
    ORDER = "order"
    CHALLENGES = "challenges"
    FINALIZE = "finalize"
    CERTIFICATE = "certificate"


@dataclass(frozen=True)
class Step:
    """Result of one step: the chain when done, else seconds until the next step; `stage` when
    the step completed one."""

    fullchain_pem: bytes | None = None
    key_pem: bytes | None = None
    after: float = 0.0
    stage: Stage | None = None

    @property
    def done(self) -> bool:
        return self.fullchain_pem is not None


class OrderSession:
    def __init__(self, spec: CertificateSpec, account: Account, solvers: SolverLookup,
                 journal: OrderJournal, *, poll_min: float = 0.02, poll_max: float = 2.0,
                 stored: StoredCert | None = None, labels: Mapping[str, str] | None = None,
                 solver_specs: Sequence[SolverSpec] | None = None,
                 validation_timeout: float = VALIDATION_TIMEOUT,
                 monotonic: Callable[[], float] = time.monotonic, resume: bool = True,
                 clear_finished: bool = True) -> None:
        self.spec = spec
        self.resume = resume
        """Look in the journal for an order to resume (else a new order is placed)."""
        self.clear_finished = clear_finished
        """`finish()` empties the journal (else the entry is left for the next order to
        overwrite: one journal write per order)."""
        self.labels = dict(labels or {})
        """The Certificate's labels, for the issuer's solver selectors (matchLabels)."""
        self.solver_specs = tuple(solver_specs if solver_specs is not None
                                  else account.issuer.solvers)
        """The issuer's solvers as it is now (the account may have been made before an
        edit)."""
        self.stored_key_pem = stored.key_pem if stored is not None else None
        """The key of the certificate in store: a journalled order with this key is one whose
        certificate was stored already (a stop between storing and clearing the journal)."""
        self.replaces: str | None = None
        """The ARI identifier of the certificate this order renews (sent when the CA offers
        renewal information)."""
        if stored is not None:
            with contextlib.suppress(ValueError):  # not a readable certificate: nothing named
                self.replaces = ari.cert_id(stored.fullchain_pem)
        self.account = account
        self.solvers = solvers
        """The solver of each of the issuer's solver blocks (several may serve one order)."""
        self.journal = journal
        self.poll_min = poll_min
        self.poll_max = poll_max
        self._interval = poll_min
        self._acme: client.ClientV2 | None = None
        self._entry: dict[str, Any] | None = None
        self._presented: dict[tuple[str, str], tuple[Challenge, Solver]] = {}
        """(identifier, token) -> what was presented and by which solver."""
        self._answered: set[str] = set()
        self._self_checks: dict[str, int] = {}
        self.resumed = False
        self.placed = False
        """True once this session placed or resumed an order."""
        self._look_at_authorizations = False
        self._new_authorizations: list[messages.AuthorizationResource] | None = None
        self.validation_timeout = validation_timeout
        self._monotonic = monotonic
        self._validating_since: float | None = None
        """When this session started waiting for the CA to validate (monotonic seconds)."""
        self._valid_authorizations: set[str] = set()
        self._journalled_dns01: list[Challenge] = []
        """DNS-01 records a crashed run of this order may have left: removed at cleanup."""

    # -- helpers -------------------------------------------------------------------------

    @property
    def acme(self) -> client.ClientV2:
        if self._acme is None:
            self._acme = self.account.client()
        return self._acme

    @property
    def order_url(self) -> str | None:
        """The order being worked on (None before `newOrder`)."""
        return self._entry.get("order_url") if self._entry else None

    @property
    def requests_sent(self) -> int:
        net = self._acme.net if self._acme else None
        return int(getattr(net, "requests_sent", 0))

    def _save(self, entry: dict[str, Any]) -> None:
        self._entry = entry
        self.journal.save(self.spec.namespace, self.spec.secret_name, entry)

    def _abandon(self) -> None:
        self._entry = None
        self.journal.clear(self.spec.namespace, self.spec.secret_name)

    def _poll(self, retry_after: float | None = None, stage: Stage | None = None) -> Step:
        after = self._interval
        self._interval = min(self._interval * 1.5, self.poll_max)
        if retry_after is not None:
            after = max(after, min(retry_after, 60.0))
        return Step(after=after, stage=stage)

    def _start_entry(self) -> dict[str, Any]:
        """The journalled order for this spec, or a new entry with a fresh key (journalled
        with its order URL, at `ORDER`)."""
        entry = self.journal.load(self.spec.namespace, self.spec.secret_name) \
            if self.resume else None
        # (Not with rotationPolicy Never: there every order of this certificate has that key.)
        if entry and self.stored_key_pem is not None and not self.spec.reuse_key and \
                str(entry.get("key_pem", "")).encode() == self.stored_key_pem:
            log.info("%s: the journalled order %s is stored already", self.spec,
                     entry.get("order_url"))
            entry = None
        if entry and entry.get("order_url") and \
                _origin(str(entry["order_url"])) != _origin(self.account.issuer.server):
            # The journal lives where a tenant may write (a Secret in its namespace): never
            # send a request signed with the issuer's account anywhere but to the CA.
            log.warning("%s: the journalled order %s is not on the CA's server %s: ignored",
                        self.spec, entry["order_url"], self.account.issuer.server)
            entry = None
        if (
            entry
            and entry.get("hosts") == list(self.spec.hosts)
            and entry.get("server") == self.account.issuer.server
            and entry.get("account") == self.account.id
            and entry.get("key_algorithm") == self.spec.key_algorithm.value
            and entry.get("key_pem")
        ):
            if entry.get("order_url"):
                self.resumed = self._look_at_authorizations = self.placed = True
                log.info("%s: resuming order %s", self.spec, entry["order_url"])
                self._journalled_dns01 = [
                    Challenge(str(r[0]), "dns-01", str(r[1]), str(r[2]))
                    for r in entry.get("dns01") or []
                    if isinstance(r, list) and len(r) == 3]
            return entry
        key = self._kept_key() or crypto.generate_key(self.spec.key_algorithm)
        entry = {
            "hosts": list(self.spec.hosts),
            "server": self.account.issuer.server,
            "account": self.account.id,
            "key_algorithm": self.spec.key_algorithm.value,
            "key_pem": crypto.key_to_pem(key).decode(),
            "order_url": None,
        }
        return entry

    def _kept_key(self) -> crypto.PrivateKey | None:
        """With rotationPolicy Never, the stored certificate's key when it is of the wanted
        algorithm (a changed algorithm needs a new key anyway)."""
        if not self.spec.reuse_key or self.stored_key_pem is None:
            return None
        try:
            key = crypto.key_from_pem(self.stored_key_pem)
        except (ValueError, crypto.CertificateUnreadable):
            return None
        if crypto.key_algorithm_of(key) is not self.spec.key_algorithm:
            return None
        log.info("%s: keeping the current private key (rotationPolicy Never)", self.spec)
        return key

    def _csr(self) -> bytes:
        assert self._entry is not None
        return crypto.make_csr(crypto.key_from_pem(self._entry["key_pem"].encode()),
                               self.spec.hosts)

    # -- the step ------------------------------------------------------------------------

    def step(self) -> Step:
        if self._entry is None:
            self._entry = self._start_entry()
            if not self._entry.get("order_url"):
                return Step(stage=Stage.KEY)
        entry = self._entry
        if not entry.get("order_url"):
            orderr = self._new_order()
            # What DNS-01 will put in DNS goes into the same write: a run that resumes the
            # order after a crash removes it even if it has nothing left to present.
            self._save({**entry, "order_url": orderr.uri,
                        "dns01": self._dns01_records(orderr.authorizations)})
            self.placed = True
            log.info("%s: placed order %s", self.spec, orderr.uri)
            self._new_authorizations = orderr.authorizations
            return Step(stage=Stage.ORDER)
        if self._new_authorizations is not None:
            authorizations, self._new_authorizations = self._new_authorizations, None
            return self._challenges(authorizations)
        return self._advance(entry["order_url"])

    def _solver_for(self, identifier: str) -> Solver:
        return solver_for(self.account.issuer, self.solver_specs, identifier, self.labels,
                          self.solvers)

    def _new_order(self) -> messages.OrderResource:
        for host in self.spec.hosts:  # before the CA counts an order
            self._solver_for(host)
        identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=host)
                       for host in self.spec.hosts]
        replaces = self.replaces if ari.offered(self.acme.directory) else None
        try:
            response = self.acme._post(self.acme.directory["newOrder"],
                                       ari.NewOrder(identifiers=identifiers, replaces=replaces))
        except (CertopError, acme_errors.ConflictError) as exc:
            # `acme` turns every 409 (alreadyReplaced, conflict) into a bare ConflictError.
            problem = exc.__cause__ if isinstance(exc, CertopError) else exc
            if replaces is None or not (
                    isinstance(problem, acme_errors.ConflictError) or (
                        isinstance(problem, messages.Error)
                        and problem.code in ari.REFUSED_REPLACES)):
                if isinstance(exc, acme_errors.ConflictError):
                    raise TemporaryError(f"newOrder for {', '.join(self.spec.hosts)}: the CA "
                                         "answered 409 Conflict") from exc
                raise
            log.info("%s: the CA refused to replace %s (%s): ordering without it", self.spec,
                     replaces, problem)
            response = self.acme._post(self.acme.directory["newOrder"],
                                       ari.NewOrder(identifiers=identifiers))
        body = messages.Order.from_json(response.json())
        return messages.OrderResource(
            body=body, uri=response.headers.get("Location"), csr_pem=self._csr(),
            authorizations=[self._fetch_authz(url) for url in body.authorizations])

    def finish(self) -> None:
        """The caller has stored the certificate: the journalled order is done with."""
        if self.clear_finished:
            self._abandon()
        else:
            self._entry = None

    def _challenges(self, authorizations: list[messages.AuthorizationResource]) -> Step:
        self._work_authorizations(authorizations)
        # A failed self-check leaves the stage open: the next look repeats it.
        return self._poll(stage=None if self._look_at_authorizations else Stage.CHALLENGES)

    def _fetch_order(self, url: str) -> tuple[messages.Order, float | None]:
        response = self.acme._post_as_get(url)
        return (messages.Order.from_json(response.json()),
                parse_retry_after(response.headers.get("Retry-After")))

    def _fetch_authz(self, url: str) -> messages.AuthorizationResource:
        return self.acme._authzr_from_response(self.acme._post_as_get(url), uri=url)

    def _advance(self, url: str) -> Step:
        body, retry_after = self._fetch_order(url)
        status = body.status
        if status == messages.STATUS_PENDING:
            if self._look_at_authorizations:
                # A resumed order, or a self-check to repeat: present and answer what is pending.
                self._look_at_authorizations = False
                return self._challenges([self._fetch_authz(u) for u in body.authorizations])
            self._check_pending(body)
            return self._poll(retry_after)
        if status == messages.STATUS_READY:
            orderr = messages.OrderResource(body=body, uri=url, csr_pem=self._csr())
            self.acme.begin_finalization(orderr)
            self._interval = self.poll_min
            return self._poll(stage=Stage.FINALIZE)
        if status == messages.STATUS_PROCESSING:
            return self._poll(retry_after)
        if status == messages.STATUS_VALID and body.certificate:
            fullchain = self.acme._post_as_get(body.certificate).text.encode()
            assert self._entry is not None
            key_pem = self._entry["key_pem"].encode()
            self.cleanup()
            return Step(fullchain_pem=fullchain, key_pem=key_pem, stage=Stage.CERTIFICATE)
        if status == messages.STATUS_VALID:
            return self._poll(retry_after)
        # invalid (or unknown): find out why, then start over next time.
        error = self._failure(body)
        self._drop()
        raise error

    def _drop(self) -> None:
        """This order can never complete: remove the tokens and forget it, so the next attempt
        places a new order."""
        self.cleanup()
        self._abandon()

    def _check_pending(self, body: messages.Order) -> None:
        """Look at the authorizations of a pending order whose challenges are answered; raise
        (dropping the order) when one can never become valid, or when the order has been
        pending for longer than `validation_timeout`."""
        now = self._monotonic()
        if self._validating_since is None:
            self._validating_since = now
        waiting: list[str] = []
        for url in body.authorizations:
            if url in self._valid_authorizations:
                continue
            authzr = self._fetch_authz(url)
            if authzr.body.status == messages.STATUS_VALID:
                self._valid_authorizations.add(url)
                continue
            failed = self._dead(authzr)
            if failed is not None:
                self._drop()
                raise failed
            waiting.append(f"{authzr.body.identifier.value} {status_word(authzr.body.status)}")
        if now - self._validating_since > self.validation_timeout:
            self._drop()
            still = ", ".join(waiting) or "every authorization valid, the order pending"
            raise OrderFailed(
                f"order for {', '.join(self.spec.hosts)}: the CA did not finish validating "
                f"within {self.validation_timeout:g} s ({still}); a new order is placed at "
                "the next attempt")

    @staticmethod
    def _dead(authzr: messages.AuthorizationResource) -> ChallengeFailed | None:
        """Why this authorization can never become valid, or None while it still may."""
        authz = authzr.body
        identifier = authz.identifier.value
        for challb in authz.challenges:
            if challb.status == messages.STATUS_INVALID:
                return ChallengeFailed(identifier, f"{challb.chall.typ} challenge invalid: "
                                       f"{_problem_text(challb.error)}")
        if authz.status in _DEAD:
            detail = next((_problem_text(c.error) for c in authz.challenges if c.error), None)
            return ChallengeFailed(identifier, f"authorization is {status_word(authz.status)}"
                                   + (f": {detail}" if detail else " (the CA gave no detail)"))
        return None

    def _failure(self, body: messages.Order) -> Exception:
        for authz_url in body.authorizations:
            try:
                authzr = self._fetch_authz(authz_url)
            except TemporaryError:
                continue
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    return ChallengeFailed(authzr.body.identifier.value,
                                           _problem_text(challb.error))
        if body.error is not None:
            return OrderFailed(f"order for {', '.join(self.spec.hosts)} failed: "
                               f"{_problem_text(body.error)}")
        return OrderFailed(f"order for {', '.join(self.spec.hosts)} became "
                           f"{status_word(body.status)} (the CA gave no detail)")

    def _work_authorizations(self, authzrs: list[messages.AuthorizationResource]) -> None:
        for authzr in authzrs:
            authz = authzr.body
            identifier = authz.identifier.value
            if authz.status == messages.STATUS_VALID:
                self._valid_authorizations.add(authzr.uri)
                continue  # reused authorization (Pebble's AUTHZREUSE, Let's Encrypt's reuse)
            failed = self._dead(authzr)
            if failed is None and authz.status != messages.STATUS_PENDING:
                failed = ChallengeFailed(identifier, "authorization is "
                                         f"{status_word(authz.status)}")
            if failed is not None:
                # A resumed order whose authorization died: never resume it again.
                self._drop()
                raise failed
            identifier = _identifier(authz)
            solver = self._solver_for(identifier)
            kind = solver.challenge_type
            challb = _challenge(authz, kind)
            if challb is None:
                raise ChallengeFailed(identifier, f"the CA offers no {kind} challenge")
            challenge = Challenge(identifier, kind, challb.chall.encode("token"),
                                  self.account.key_authorization(challb))
            solver.present(challenge)
            self._presented[(challenge.identifier, challenge.token)] = (challenge, solver)
            log.info("%s: presented %s for %s", self.spec, kind, identifier)
            if challb.status != messages.STATUS_PENDING or challb.uri in self._answered:
                self._answered.add(challb.uri)
                continue
            if not solver.check(challenge):
                tries = self._self_checks.get(identifier, 0) + 1
                self._self_checks[identifier] = tries
                if tries >= SELF_CHECK_TRIES:
                    # A solver may say what its last check saw (DNS-01: the nameserver
                    # that lags and what it serves).
                    seen = str(getattr(solver, "last_check", "") or "")
                    where = ("certop's own HTTP listener does not serve the challenge token"
                             if kind == "http-01" else
                             f"the {kind} challenge is not visible" + (f": {seen}" if seen
                                                                       else ""))
                    raise ChallengeFailed(identifier, f"self-check failed: {where}")
                self._look_at_authorizations = True
                continue
            answered = self.acme.answer_challenge(challb, challb.chall.response(self.account.jwk))
            self._answered.add(challb.uri)
            if answered.body.status == messages.STATUS_INVALID:
                self._drop()
                raise ChallengeFailed(identifier, f"{challb.chall.typ} challenge invalid: "
                                      f"{_problem_text(answered.body.error)}")

    def cleanup(self) -> None:
        """Remove every presented token, and the DNS-01 records the journal says an earlier
        run of this order presented; safe to call on every exit path, more than once."""
        for challenge, solver in list(self._presented.values()):
            solver.cleanup(challenge)
        self._presented.clear()
        leftover, self._journalled_dns01 = self._journalled_dns01, []
        for challenge in leftover:
            try:
                self._solver_for(challenge.identifier).cleanup(challenge)
            except CertopError as exc:
                log.warning("%s: a DNS-01 record of the resumed order could not be removed "
                            "(%s): %s", self.spec, challenge.dns01_record_name, exc)

    def _dns01_records(self, authzrs: list[messages.AuthorizationResource]
                       ) -> list[list[str]]:
        """[identifier, token, key authorization] of each DNS-01 challenge the order's
        authorizations will have presented (as `_work_authorizations` selects them)."""
        found = []
        for authzr in authzrs:
            identifier = _identifier(authzr.body)
            challb = _challenge(authzr.body, "dns-01")
            if challb is not None and self._solver_for(identifier).challenge_type == "dns-01":
                found.append([identifier, challb.chall.encode("token"),
                              self.account.key_authorization(challb)])
        return found


def _identifier(authz: messages.Authorization) -> str:
    """The identifier an authorization is for, `*.`-prefixed for a wildcard (the CA names a
    wildcard's authorization bare)."""
    identifier = str(authz.identifier.value)
    if authz.wildcard and not identifier.startswith("*."):
        identifier = "*." + identifier
    return identifier


def _challenge(authz: messages.Authorization, kind: str) -> messages.ChallengeBody | None:
    """The authorization's challenge of type `kind`, if the CA offers one."""
    return next((c for c in authz.challenges
                 if isinstance(c.chall, challenges.KeyAuthorizationChallenge)
                 and c.chall.typ == kind), None)


def solver_for(issuer: AcmeIssuer, specs: Sequence[SolverSpec], identifier: str,
               labels: Mapping[str, str] | None, lookup: SolverLookup) -> Solver:
    """The solver of the issuer's block selected for `identifier`, built (which checks its
    settings). A ConfigError naming the issuer and field when there is none certop can use:
    no block's selector matches, the block is of a type certop has no solver for, a wildcard
    name is given to a block that is not dns01 (RFC 8555 section 7.1.3: a CA validates a
    wildcard through DNS only), or the block's settings are wrong. Called for every name
    before an order is placed, and by the modes when they check their configuration."""
    where = (issuer.ref.source, str(issuer.ref))
    refused = solvers.refusal(specs, identifier, labels)
    if refused is not None:
        raise ConfigError(*where, "spec.acme.solvers", f"a solver for {identifier}: {refused}")
    chosen = solvers.select(specs, identifier, labels)
    assert chosen is not None
    field = f"spec.acme.solvers[{specs.index(chosen)}]"
    solver = lookup.solver(chosen)
    if solver is None:
        raise ConfigError(*where, field, f"a solver certop runs here "
                          f"({', '.join(lookup.challenge_types)}) for {identifier}, not "
                          f"{chosen.challenge_type}")
    return solver

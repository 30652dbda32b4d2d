"""OpenSSL settings Python's `ssl` module does not expose, made on an `ssl.SSLContext`'s own
SSL_CTX through ctypes: the key exchange groups a server offers (`SSL_CTX_set1_groups_list`;
Python gains `SSLContext.set_groups` only in 3.15) and the session-ticket keys
(`SSL_CTX_set_tlsext_ticket_keys`), so that every worker process encrypts and decrypts tickets
with the same rotating keys. Both are set once per context: nothing here runs per handshake
(a Python ticket callback doubled the server's CPU per resumed handshake).

Calls go to the libssl/libcrypto the interpreter's `_ssl` module is linked with (found through
that module's handle), so the structures are the ones `ssl` uses. The SSL_CTX pointer is read
from the context object (CPython's `PySSLContext` holds `SSL_CTX *ctx` right after the object
header) and checked before use: CPython only, and OpenSSL must report the options `ssl`
reports for that context. When any of this is unavailable (OpenSSL linked statically, another
interpreter) `available()` is False with the reason and callers fall back to what `ssl` offers.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import hmac
import logging
import os
import ssl
import sys
import threading
import time
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

SSL_CTRL_SET_GROUPS_LIST = 92
"""`SSL_CTX_set1_groups_list` is a macro over `SSL_CTX_ctrl` with this command (1.1.1, 3.x)."""
SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
"""`SSL_CTX_set_tlsext_ticket_keys` is a macro over `SSL_CTX_ctrl` with this command."""
NAME_LEN = 16
"""Ticket key name length (bytes)."""
TICKET_KEYS_LEN = 80
"""Name (16), HMAC key (32) and AES key (32), the layout OpenSSL 1.1.1 and 3.x expect."""


class _Lib:
    def __init__(self) -> None:
        import _ssl

        if sys.implementation.name != "cpython" or \
                ssl.SSLContext.__basicsize__ <= object.__basicsize__:
            raise OSError("not CPython's ssl.SSLContext")
        lib = ctypes.CDLL(_ssl.__file__)
        self.lib = lib
        lib.OpenSSL_version_num.restype = ctypes.c_ulong
        if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
            raise OSError("the OpenSSL found is not the one `ssl` uses")
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long,
                                     ctypes.c_void_p]

    def pointer(self, ctx: ssl.SSLContext) -> int:
        """The SSL_CTX of `ctx`, checked."""
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not ptr or self.lib.SSL_CTX_get_options(ptr) != ctx.options:
            raise OSError("cannot find the SSL_CTX of an ssl.SSLContext")
        return ptr


@functools.cache
def _load() -> tuple[_Lib | None, str]:
    try:
        return _Lib(), ""
    except (OSError, AttributeError, ImportError) as exc:
        return None, str(exc)


def available() -> tuple[bool, str]:
    """Whether the OpenSSL settings here can be made; else why not."""
    lib, why = _load()
    return lib is not None, why


def set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """Offer exactly `groups` (OpenSSL names, colon-separated) for key exchange, TLS 1.2 and
    1.3. Raises OSError when it cannot be done."""
    lib, why = _load()
    if lib is None:
        raise OSError(why)
    if lib.lib.SSL_CTX_ctrl(lib.pointer(ctx), SSL_CTRL_SET_GROUPS_LIST, 0,
                            groups.encode()) != 1:
        raise OSError(f"OpenSSL refused the groups {groups}")


class TicketKeys:
    """Session-ticket keys shared by every process made from this one by fork, rotated by the
    clock, with no Python code run per handshake.

    The keys are OpenSSL's own static ticket keys (`SSL_CTX_set_tlsext_ticket_keys`: a 16-byte
    name, a 32-byte HMAC key and a 32-byte AES key), set on the listening context. They come
    from a 32-byte secret made once, in memory only, before the workers are forked, and they
    change every `period` seconds by a one-way ratchet: the secret of period n+1 is
    SHA-256("certop ticket ratchet" || secret of period n), and the old one is dropped. Every
    worker computes the same keys for the same period with no message between them; a memory
    dump of a worker yields the current and later keys, never an earlier one, so tickets of past
    periods cannot be decrypted from it (forward secrecy across periods).

    OpenSSL holds one key at a time: after a rotation, tickets issued before it are refused
    and those clients make one full handshake (then resume again). Tickets from before a
    restart are refused too, as with nginx without `ssl_session_ticket_key`. `rotate()` is
    cheap when nothing is due; the book calls it for every TLS handshake."""

    def __init__(self, period: float = 12 * 3600.0, secret: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.period = period
        self._clock = clock
        self._n = int(clock() // period)
        """The period whose keys are set."""
        self._secret = secret or os.urandom(32)
        """The secret of period `_n` (never written anywhere)."""
        self._contexts: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
        self._lock = threading.Lock()

    @property
    def name(self) -> bytes:
        """The current key's name (as OpenSSL puts it in tickets)."""
        return self._material()[:NAME_LEN]

    def _material(self) -> bytes:
        def part(label: bytes) -> bytes:
            return hmac.digest(self._secret, b"certop ticket " + label, hashlib.sha256)

        return part(b"name")[:NAME_LEN] + part(b"hmac") + part(b"aes")

    def install(self, ctx: ssl.SSLContext) -> bool:
        """Encrypt and decrypt `ctx`'s tickets with these keys (kept current by `rotate()`);
        False when OpenSSL cannot be reached (each process then keeps OpenSSL's own random
        keys)."""
        lib, _ = _load()
        if lib is None:
            return False
        with self._lock:
            self._advance(int(self._clock() // self.period))
            ok = self._set(lib, ctx)
            if ok:
                self._contexts.add(ctx)
            return ok

    def rotate(self) -> None:
        """Move to the current period's keys when a period has passed since the last look."""
        n = int(self._clock() // self.period)
        if n <= self._n:
            return
        lib, _ = _load()
        with self._lock:
            if n <= self._n or lib is None:
                return
            self._advance(n)
            for ctx in list(self._contexts):
                if not self._set(lib, ctx):
                    log.warning("could not rotate the session-ticket keys")

    def _advance(self, n: int) -> None:
        while self._n < n:
            self._secret = hashlib.sha256(b"certop ticket ratchet" + self._secret).digest()
            self._n += 1

    def _set(self, lib: _Lib, ctx: ssl.SSLContext) -> bool:
        keys = ctypes.create_string_buffer(self._material(), TICKET_KEYS_LEN)
        try:
            ptr = lib.pointer(ctx)
        except OSError:
            return False
        done = int(lib.lib.SSL_CTX_ctrl(ptr, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, TICKET_KEYS_LEN,
                                        keys)) == 1
        ctypes.memset(keys, 0, TICKET_KEYS_LEN)
        return done

"""OpenSSL settings Python's `ssl` module does not expose, made on an `ssl.SSLContext`'s own
SSL_CTX through ctypes: the key exchange groups a server offers (`SSL_CTX_set1_groups_list`;
Python gains `SSLContext.set_groups` only in 3.15) and a session-ticket key callback, so that
every worker process encrypts and decrypts tickets with the same rotating keys.

Calls go to the libssl/libcrypto the interpreter's `_ssl` module is linked with (found through
that module's handle), so the structures are the ones `ssl` uses. The SSL_CTX pointer is read
from the context object (CPython's `PySSLContext` holds `SSL_CTX *ctx` right after the object
header) and checked before use: OpenSSL must report the options `ssl` reports for that context.
When any of this is unavailable (OpenSSL linked statically, another interpreter) `available()`
is False with the reason and callers fall back to what `ssl` offers.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import hmac
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

SSL_CTRL_SET_GROUPS_LIST = 92
"""`SSL_CTX_set1_groups_list` is a macro over `SSL_CTX_ctrl` with this command (1.1.1, 3.x)."""
NAME_LEN = 16
"""Ticket key name length OpenSSL passes to the callback (bytes)."""
IV_LEN = 16
"""AES-CBC IV, the EVP_MAX_IV_LENGTH-sized buffer OpenSSL passes to the callback (bytes)."""

_TicketCb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_ubyte),
                             ctypes.POINTER(ctypes.c_ubyte), ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_int)


class _Param(ctypes.Structure):
    """OpenSSL 3's OSSL_PARAM."""

    _fields_ = [("key", ctypes.c_char_p), ("data_type", ctypes.c_uint),
                ("data", ctypes.c_void_p), ("data_size", ctypes.c_size_t),
                ("return_size", ctypes.c_size_t)]


class _Lib:
    def __init__(self) -> None:
        import _ssl

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
        self.tickets = hasattr(lib, "SSL_CTX_set_tlsext_ticket_key_evp_cb")  # OpenSSL >= 3.0
        if self.tickets:
            lib.SSL_CTX_set_tlsext_ticket_key_evp_cb.restype = ctypes.c_int
            lib.SSL_CTX_set_tlsext_ticket_key_evp_cb.argtypes = [ctypes.c_void_p, _TicketCb]
            lib.RAND_bytes.restype = ctypes.c_int
            lib.RAND_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int]
            lib.EVP_aes_256_cbc.restype = ctypes.c_void_p
            for name in ("EVP_EncryptInit_ex", "EVP_DecryptInit_ex"):
                fn = getattr(lib, name)
                fn.restype = ctypes.c_int
                fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_char_p, ctypes.c_void_p]
            lib.EVP_MAC_CTX_set_params.restype = ctypes.c_int
            lib.EVP_MAC_CTX_set_params.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.OSSL_PARAM_construct_utf8_string.restype = _Param
            lib.OSSL_PARAM_construct_utf8_string.argtypes = [ctypes.c_char_p, ctypes.c_char_p,
                                                             ctypes.c_size_t]
            lib.OSSL_PARAM_construct_octet_string.restype = _Param
            lib.OSSL_PARAM_construct_octet_string.argtypes = [ctypes.c_char_p,
                                                              ctypes.c_void_p, ctypes.c_size_t]
            lib.OSSL_PARAM_construct_end.restype = _Param
            self.aes_256_cbc = lib.EVP_aes_256_cbc()

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


@dataclass(frozen=True)
class _Key:
    name: bytes
    aes: bytes
    hmac: bytes
    params: ctypes.Array[_Param]
    """OSSL_PARAMs for the ticket HMAC (SHA-256 with `hmac`); they point into `_keep`."""
    _keep: tuple[object, ...]


class TicketKeys:
    """Session-ticket keys shared by every process made from this one by fork.

    Keys come from a random secret made once (in memory only, never written) and the number of
    the current period: key(n) = HMAC-SHA256(secret, label || n) for the name, AES-256 and
    HMAC-SHA256 parts. Every worker computes the same key for the same period, with no message
    between them, and a new key takes over every `period` seconds without a restart. Tickets
    are issued under the current key; the previous period's key still decrypts (and such a
    ticket is replaced by a fresh one), so a ticket stays usable for at least one period.
    Tickets from before a restart are refused (a full handshake), as nginx without
    `ssl_session_ticket_key` does."""

    def __init__(self, period: float = 12 * 3600.0, secret: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.period = period
        self._secret = secret or os.urandom(32)
        self._clock = clock
        self._keys: dict[int, _Key] = {}
        self._lock = threading.Lock()
        self._cb = _TicketCb(self._callback)

    def install(self, ctx: ssl.SSLContext) -> bool:
        """Encrypt and decrypt `ctx`'s tickets with these keys; False when OpenSSL cannot
        (before 3.0: each process then keeps OpenSSL's own random keys)."""
        lib, _ = _load()
        if lib is None or not lib.tickets:
            return False
        return bool(lib.lib.SSL_CTX_set_tlsext_ticket_key_evp_cb(lib.pointer(ctx), self._cb))

    def key(self, n: int) -> _Key:
        with self._lock:
            key = self._keys.get(n)
            if key is None:
                key = self._keys[n] = self._derive(n)
                for old in [k for k in self._keys if k < n - 1]:
                    del self._keys[old]
            return key

    def _lookup(self, name: bytes, n: int) -> tuple[_Key, int] | None:
        """The key named `name` among period `n`'s and the one before, and 1 (current) or 2
        (previous: renew the ticket); None for a name from elsewhere or from longer ago."""
        for m, renew in ((n, 1), (n - 1, 2)):
            key = self.key(m)
            if hmac.compare_digest(key.name, name):
                return key, renew
        return None

    def _derive(self, n: int) -> _Key:
        def part(label: bytes) -> bytes:
            return hmac.digest(self._secret, b"certop ticket " + label + n.to_bytes(8, "big"),
                               hashlib.sha256)

        name, aes, mac = part(b"name")[:NAME_LEN], part(b"aes"), part(b"hmac")
        lib, _ = _load()
        assert lib is not None
        digest_key, digest, key_key = ctypes.c_char_p(b"digest"), ctypes.c_char_p(b"SHA256"), \
            ctypes.c_char_p(b"key")
        mac_buf = ctypes.create_string_buffer(mac, len(mac))
        params = (_Param * 3)(
            lib.lib.OSSL_PARAM_construct_utf8_string(digest_key, digest, 0),
            lib.lib.OSSL_PARAM_construct_octet_string(key_key, mac_buf, len(mac)),
            lib.lib.OSSL_PARAM_construct_end())
        return _Key(name, aes, mac, params, (digest_key, digest, key_key, mac_buf))

    def _callback(self, _ssl: int, key_name: ctypes._Pointer[ctypes.c_ubyte],
                  iv: ctypes._Pointer[ctypes.c_ubyte], cipher_ctx: int, mac_ctx: int,
                  enc: int) -> int:
        """OpenSSL's ticket key callback: 1 done, 2 done and renew the ticket, 0 no ticket
        (encrypt) or not ours (decrypt: a full handshake), -1 error."""
        try:
            lib, _ = _load()
            assert lib is not None
            n = int(self._clock() // self.period)
            if enc:
                key = self.key(n)
                if lib.lib.RAND_bytes(iv, IV_LEN) != 1:
                    return -1
                ctypes.memmove(key_name, key.name, NAME_LEN)
                init = lib.lib.EVP_EncryptInit_ex
                renew = 1
            else:
                name = ctypes.string_at(key_name, NAME_LEN)
                found = self._lookup(name, n)
                if found is None:
                    return 0
                key, renew = found
                init = lib.lib.EVP_DecryptInit_ex
            if lib.lib.EVP_MAC_CTX_set_params(mac_ctx, key.params) != 1 or \
                    init(cipher_ctx, lib.aes_256_cbc, None, key.aes, iv) != 1:
                return -1
            return renew
        except Exception:  # never let an exception unwind through OpenSSL
            log.exception("session ticket key callback failed")
            return -1 if enc else 0

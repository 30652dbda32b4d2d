"""The `cloudflare` DNS provider, over Cloudflare's v4 API, configured as cert-manager's is.

    dns01:
      cloudflare:
        apiTokenSecretRef: {name: cloudflare-api-token, key: api-token}   # Zone:DNS:Edit
        # or the legacy global key:
        # email: ops@example.com
        # apiKeySecretRef: {name: cloudflare-api-key, key: api-key}

The zone is the longest suffix of the name that `GET /zones?name=` finds; a value is a TXT
record of its own (`POST /zones/{id}/dns_records`), so values sit beside each other;
removal deletes the records with that name and content only. Both are idempotent (a record
with the same content is not created twice).

The endpoint is the operator's choice, never an issuer's (a tenant's Issuer could aim
certop's requests anywhere): `CERTOP_CLOUDFLARE_API_URL` in certop's environment (tests: a
local fake of the documented API), else Cloudflare's. Redirects are not followed. An error
carries Cloudflare's error codes and messages, never a raw response body, and never the
credentials (a token with a line break in it is refused when the provider is built).
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from certop.core.errors import ConfigError, PermanentError, TemporaryError
from solvers.dns01.provider import SecretLookup, Where

API_URL = "https://api.cloudflare.com/client/v4"
API_URL_ENV = "CERTOP_CLOUDFLARE_API_URL"
TTL = 120
TIMEOUT = 30.0


class CloudflareProvider:
    def __init__(self, headers: Mapping[str, str], where: Where, api_url: str = API_URL,
                 timeout: float = TIMEOUT) -> None:
        self.headers = dict(headers)
        self.where = where
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._zones: dict[str, str] = {}

    async def present(self, fqdn: str, value: str) -> None:
        await asyncio.to_thread(self._present, fqdn.rstrip("."), value)

    async def cleanup(self, fqdn: str, value: str) -> None:
        await asyncio.to_thread(self._cleanup, fqdn.rstrip("."), value)

    # -- blocking ----------------------------------------------------------------------------

    def _present(self, fqdn: str, value: str) -> None:
        zone = self._zone(fqdn)
        if self._records(zone, fqdn, value):
            return
        self._call("POST", f"/zones/{zone}/dns_records",
                   {"type": "TXT", "name": fqdn, "content": value, "ttl": TTL})

    def _cleanup(self, fqdn: str, value: str) -> None:
        zone = self._zone(fqdn)
        for record in self._records(zone, fqdn, value):
            self._call("DELETE", f"/zones/{zone}/dns_records/{record['id']}")

    def _records(self, zone: str, fqdn: str, value: str) -> list[Mapping[str, Any]]:
        query = urllib.parse.urlencode({"type": "TXT", "name": fqdn})
        found = self._call("GET", f"/zones/{zone}/dns_records?{query}")
        return [r for r in found if isinstance(r, Mapping) and r.get("content") in
                (value, f'"{value}"')]

    def _zone(self, fqdn: str) -> str:
        labels = fqdn.split(".")
        for i in range(len(labels) - 1):
            candidate = ".".join(labels[i:])
            if candidate in self._zones:
                return self._zones[candidate]
            query = urllib.parse.urlencode({"name": candidate})
            found = self._call("GET", f"/zones?{query}")
            if found:
                self._zones[candidate] = str(found[0]["id"])
                return self._zones[candidate]
        raise PermanentError(f"{self.where.issuer}: {self.where.field}: no Cloudflare zone "
                             f"this token can see holds {fqdn}")

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api_url + path, data=data, method=method,
                                         headers={**self.headers,
                                                  "Content-Type": "application/json"})
        what = f"{method} {path.split('?')[0]}"
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = _errors(exc.read())
            message = (f"{self.where.issuer}: {self.where.field}: Cloudflare answered "
                       f"{exc.code} to {what}" + (f": {detail}" if detail else ""))
            if exc.code in (400, 401, 403, 404):
                raise PermanentError(message) from exc
            raise TemporaryError(message) from exc
        except OSError as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
            raise TemporaryError(f"{self.where.issuer}: {self.where.field}: Cloudflare "
                                 f"({self.api_url}): {what}: {reason}") from exc
        except ValueError as exc:  # its message may quote a header: not shown
            raise TemporaryError(f"{self.where.issuer}: {self.where.field}: Cloudflare "
                                 f"({self.api_url}): {what}: not an answer certop can "
                                 "read") from exc
        if not isinstance(answer, Mapping) or not answer.get("success", False):
            raise TemporaryError(f"{self.where.issuer}: {self.where.field}: Cloudflare "
                                 f"refused {what}: {_errors(json.dumps(answer).encode())}")
        return answer.get("result")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is answered as an error, never followed


_OPENER = urllib.request.build_opener(_NoRedirect)


def _errors(raw: bytes) -> str:
    """Cloudflare's `errors` (codes and messages): never the raw body."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return ""
    errors = doc.get("errors") if isinstance(doc, Mapping) else None
    return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors or []
                     if isinstance(e, Mapping))


def provider(block: Mapping[str, Any], where: Where,
             secrets: SecretLookup) -> CloudflareProvider:
    def secret(field: str) -> str:
        ref = block.get(field)
        if not isinstance(ref, Mapping) or not ref.get("name") or not ref.get("key"):
            raise ConfigError(where.issuer, "", f"{where.field}.{field}",
                              "{name, key} of the Secret that holds it")
        found = secrets(str(ref["name"]), str(ref["key"]))
        if not found:
            raise ConfigError(where.issuer, "", f"{where.field}.{field}",
                              f"Secret {ref['name']} with key {ref['key']}: not found")
        value = found.decode(errors="replace").strip()
        if not value or any(ord(c) < 33 or ord(c) > 126 for c in value):
            raise ConfigError(where.issuer, "", f"{where.field}.{field}",
                              f"Secret {ref['name']} key {ref['key']}: one credential, "
                              "printable, without spaces or line breaks")
        return value

    if block.get("apiTokenSecretRef") is not None:
        headers = {"Authorization": f"Bearer {secret('apiTokenSecretRef')}"}
    elif block.get("apiKeySecretRef") is not None:
        email = block.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise ConfigError(where.issuer, "", f"{where.field}.email",
                              "the account's email address (with apiKeySecretRef)")
        headers = {"X-Auth-Email": email, "X-Auth-Key": secret("apiKeySecretRef")}
    else:
        raise ConfigError(where.issuer, "", f"{where.field}.apiTokenSecretRef",
                          "an API token Secret (or apiKeySecretRef and email)")
    return CloudflareProvider(headers, where, os.environ.get(API_URL_ENV) or API_URL)

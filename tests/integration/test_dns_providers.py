"""One contract for every DNS provider, against the real server it talks to (rfc2136: BIND on
loopback), checked by asking that server directly: values are added beside others, removed
one by one, both idempotent; and bad input or a refusal is one clear error naming the field
or the server."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bindctl
import dns.message
import dns.query
import dns.rdatatype
import pytest
from cloudflare_fake import CloudflareFake

from certop.core.errors import ConfigError, PermanentError, TemporaryError
from solvers.dns01 import provider as providers
from solvers.dns01.cloudflare import provider as cloudflare_provider
from solvers.dns01.command import provider as exec_provider
from solvers.dns01.provider import DnsProvider, Where
from solvers.dns01.rfc2136 import provider as rfc2136

ZONE = "example.test"
OTHER = "delegated.test"
KEY, OTHER_KEY = "certop-key", "delegate-key"
WHERE = Where("ClusterIssuer dns", "spec.acme.solvers[0].dns01.rfc2136")
EXEC = Where("ClusterIssuer dns", "spec.acme.solvers[0].dns01.exec")
CF = Where("ClusterIssuer dns", "spec.acme.solvers[0].dns01.cloudflare")


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bindctl.BindInfo]:
    keys = {KEY: os.urandom(32), OTHER_KEY: os.urandom(32)}
    zones = [bindctl.Zone(ZONE, KEY), bindctl.Zone(OTHER, OTHER_KEY)]
    with bindctl.running(tmp_path_factory.mktemp("bind"), zones, keys) as info:
        yield info


def txt(bind: bindctl.BindInfo, name: str) -> set[str]:
    """The TXT values at `name`, as BIND serves them now."""
    response = dns.query.udp(dns.message.make_query(name + ".", dns.rdatatype.TXT),
                             bind.host, port=bind.port, timeout=2)
    return {b"".join(r.strings).decode() for rrset in response.answer for r in rrset}


def secrets_of(bind: bindctl.BindInfo, wrong: bool = False) -> Callable[[str, str], bytes | None]:
    def lookup(name: str, key: str) -> bytes | None:
        if (name, key) != ("tsig", "secret"):
            return None
        secret = os.urandom(32) if wrong else bind.keys[KEY]
        return base64.b64encode(secret)
    return lookup


def block(bind: bindctl.BindInfo, **extra: Any) -> dict[str, Any]:
    return {"nameserver": bind.nameserver, "tsigKeyName": KEY, "tsigAlgorithm": "HMACSHA256",
            "tsigSecretSecretRef": {"name": "tsig", "key": "secret"}, **extra}


HOOK = """#!/bin/sh
# A lego-style exec hook: $1 present|cleanup, $2 the FQDN (trailing dot), $3 the value.
set -e
case "$1" in
  present) op=add; ttl=60 ;;
  cleanup) op=delete; ttl= ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
nsupdate -y "hmac-sha256:{key}:{secret}" <<END
server {host} {port}
update $op $2 $ttl TXT "$3"
send
END
"""


@pytest.fixture(scope="module")
def hook(bind: bindctl.BindInfo, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("hook") / "dns-hook"
    path.write_text(HOOK.format(key=KEY, secret=base64.b64encode(bind.keys[KEY]).decode(),
                                host=bind.host, port=bind.port))
    path.chmod(0o700)
    return str(path)


TOKEN = "cf-token"


@pytest.fixture(scope="module")
def cloudflare(bind: bindctl.BindInfo) -> Iterator[CloudflareFake]:
    with CloudflareFake(bind, TOKEN) as fake:
        yield fake


@pytest.fixture(autouse=True)
def cf_endpoint(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """The operator points the cloudflare provider at the fake (its environment)."""
    if "cloudflare" in request.fixturenames:
        fake = request.getfixturevalue("cloudflare")
        monkeypatch.setenv("CERTOP_CLOUDFLARE_API_URL", fake.url)


def cf_block(fake: CloudflareFake) -> dict[str, Any]:
    return {"apiTokenSecretRef": {"name": "cloudflare", "key": "api-token"}}


def cf_secrets(token: str = TOKEN) -> Callable[[str, str], bytes | None]:
    return lambda name, key: token.encode() if (name, key) == ("cloudflare", "api-token") \
        else None


def providers_under_test(bind: bindctl.BindInfo, hook: str,
                         cloudflare: CloudflareFake) -> dict[str, DnsProvider]:
    return {"rfc2136": rfc2136(block(bind), WHERE, secrets_of(bind)),
            "exec": exec_provider({"command": [hook]}, EXEC, secrets_of(bind)),
            "cloudflare": cloudflare_provider(cf_block(cloudflare), CF, cf_secrets())}


@pytest.mark.parametrize("name", ["rfc2136", "exec", "cloudflare"])
def test_values_are_added_beside_others_and_removed_one_by_one(
        bind: bindctl.BindInfo, hook: str, cloudflare: CloudflareFake, name: str) -> None:
    dns_provider = providers_under_test(bind, hook, cloudflare)[name]
    record = f"_acme-challenge.{name}-contract.{ZONE}"

    async def run() -> None:
        await dns_provider.present(record, "wildcard-value")
        await dns_provider.present(record, "apex-value")
        await dns_provider.present(record, "apex-value")  # idempotent
        assert txt(bind, record) == {"wildcard-value", "apex-value"}
        await dns_provider.cleanup(record, "wildcard-value")
        assert txt(bind, record) == {"apex-value"}
        await dns_provider.cleanup(record, "wildcard-value")  # idempotent
        await dns_provider.cleanup(record, "apex-value")
        assert txt(bind, record) == set()

    asyncio.run(run())


def test_the_rfc2136_provider_is_installed_under_its_name() -> None:
    assert providers.installed()["rfc2136"] is rfc2136


def test_the_zone_is_found_by_an_soa_query(bind: bindctl.BindInfo) -> None:
    dns_provider = rfc2136(block(bind), WHERE, secrets_of(bind))
    assert asyncio.run(dns_provider.zone_of(f"_acme-challenge.a.b.{ZONE}")) == ZONE


def test_a_wrong_tsig_secret_is_one_clear_permanent_error(bind: bindctl.BindInfo) -> None:
    dns_provider = rfc2136(block(bind), WHERE, secrets_of(bind, wrong=True))
    with pytest.raises(PermanentError) as info:
        asyncio.run(dns_provider.present(f"_acme-challenge.{ZONE}", "x"))
    message = str(info.value)
    assert "ClusterIssuer dns" in message and "tsigSecretSecretRef" in message
    assert bind.nameserver in message and KEY in message
    assert txt(bind, f"_acme-challenge.{ZONE}") == set()


def test_an_unknown_key_and_a_zone_the_key_may_not_update_are_refused(
        bind: bindctl.BindInfo) -> None:
    unknown = rfc2136(block(bind, tsigKeyName="nobody"), WHERE, secrets_of(bind))
    with pytest.raises(PermanentError, match="does not know TSIG key nobody"):
        asyncio.run(unknown.present(f"_acme-challenge.{ZONE}", "x"))
    # certop-key may update example.test only: delegated.test refuses it.
    other = rfc2136(block(bind), WHERE, secrets_of(bind))
    with pytest.raises(PermanentError, match=f"refused adding TXT .* zone {OTHER}"):
        asyncio.run(other.present(f"_acme-challenge.{OTHER}", "x"))
    assert txt(bind, f"_acme-challenge.{OTHER}") == set()


def test_a_nameserver_that_does_not_answer_is_a_temporary_error(
        bind: bindctl.BindInfo) -> None:
    import pebblectl

    silent = rfc2136(block(bind, nameserver=f"127.0.0.1:{pebblectl.free_port()}"), WHERE,
                     secrets_of(bind))
    with pytest.raises(TemporaryError, match=r"nameserver: 127\.0\.0\.1:"):
        asyncio.run(silent.present(f"_acme-challenge.{ZONE}", "x"))


@pytest.mark.parametrize(("change", "field"), [
    ({"nameserver": "not a host:port:x"}, "nameserver"),
    ({"nameserver": ""}, "nameserver"),
    ({"tsigKeyName": ""}, "tsigKeyName"),
    ({"tsigAlgorithm": "HMACSHA3"}, "tsigAlgorithm"),
    ({"tsigSecretSecretRef": {"name": "tsig"}}, "tsigSecretSecretRef"),
    ({"tsigSecretSecretRef": {"name": "missing", "key": "secret"}}, "tsigSecretSecretRef"),
])
def test_bad_configuration_names_the_issuer_and_field(
        bind: bindctl.BindInfo, change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        rfc2136(block(bind, **change), WHERE, secrets_of(bind))
    assert info.value.source == "ClusterIssuer dns"
    assert info.value.field == f"{WHERE.field}.{field}"


def test_nameservers_are_parsed_as_cert_manager_takes_them() -> None:
    from solvers.dns01.rfc2136 import parse_nameserver

    assert parse_nameserver("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_nameserver("192.0.2.1:5353") == ("192.0.2.1", 5353)
    assert parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert parse_nameserver("::1") == ("::1", 53)
    with pytest.raises(ValueError):
        parse_nameserver("host:99999")


def test_a_secret_that_is_not_base64_is_named(bind: bindctl.BindInfo) -> None:
    with pytest.raises(ConfigError, match="base64"):
        rfc2136(block(bind), WHERE, lambda name, key: b"not base64 !!")



def test_a_failing_command_is_named_with_its_status_and_its_stderr_logged(
        tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture) -> None:
    script = tmp_path_factory.mktemp("failing") / "hook"
    script.write_text("#!/bin/sh\necho 'zone example.test: permission denied' >&2\nexit 3\n")
    script.chmod(0o700)
    failing = exec_provider({"command": [str(script), "--profile", "x"]}, EXEC,
                            lambda name, key: None)
    with pytest.raises(TemporaryError) as info:
        asyncio.run(failing.present(f"_acme-challenge.{ZONE}", "v"))
    assert str(info.value) == (
        f"ClusterIssuer dns: {EXEC.field}.command: {script} --profile x present "
        f"_acme-challenge.{ZONE} exited with 3 (its stderr is in certop's log)")
    assert "zone example.test: permission denied" in caplog.text  # the log, not the status
    # A hook whose child outlives the timeout: both killed, the wait bounded.
    where = tmp_path_factory.mktemp("slow")
    slow = where / "hook"
    slow.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {where}/child\nwait\n")
    slow.chmod(0o700)
    stuck = exec_provider({"command": str(slow), "timeout": 0.3}, EXEC, lambda n, k: None)
    with pytest.raises(TemporaryError, match=r"took more than 0\.3s"):
        asyncio.run(stuck.present(f"_acme-challenge.{ZONE}", "x"))
    child = Path(f"/proc/{(where / 'child').read_text().strip()}/stat")
    assert not child.exists() or child.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    # A hook that succeeds and leaves a helper behind holding stderr: done when it exits.
    quick = tmp_path_factory.mktemp("bg") / "hook"
    quick.write_text("#!/bin/sh\n(sleep 5 >&2 &)\nexit 0\n")
    quick.chmod(0o700)
    done = exec_provider({"command": str(quick), "timeout": 3}, EXEC, lambda n, k: None)
    asyncio.run(done.present(f"_acme-challenge.{ZONE}", "x"))


@pytest.mark.parametrize(("command", "field"), [
    ({}, "command"), ({"command": []}, "command"), ({"command": "/nonexistent/hook"}, "command"),
    ({"command": "hook", "timeout": 0}, "timeout"),
])
def test_bad_exec_settings_name_the_field(command: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        exec_provider(command, EXEC, lambda name, key: None)
    assert info.value.field == f"{EXEC.field}.{field}"


def test_the_exec_provider_is_installed_under_its_name() -> None:
    assert providers.installed()["exec"] is exec_provider


def test_the_cloudflare_provider_is_installed_under_its_name() -> None:
    assert providers.installed()["cloudflare"] is cloudflare_provider


def test_cloudflare_refusals_name_the_api_error(cloudflare: CloudflareFake) -> None:
    wrong = cloudflare_provider(cf_block(cloudflare), CF, cf_secrets("not-the-token"))
    with pytest.raises(PermanentError) as info:
        asyncio.run(wrong.present(f"_acme-challenge.{ZONE}", "x"))
    assert str(info.value) == (f"ClusterIssuer dns: {CF.field}: Cloudflare answered 403 to "
                               "GET /zones: 9109: Invalid access token")
    right = cloudflare_provider(cf_block(cloudflare), CF, cf_secrets())
    with pytest.raises(PermanentError, match=re.escape(
            "no Cloudflare zone this token can see holds _acme-challenge.elsewhere.test")):
        asyncio.run(right.present("_acme-challenge.elsewhere.test", "x"))


@pytest.mark.parametrize(("settings", "field"), [
    ({}, "apiTokenSecretRef"),
    ({"apiTokenSecretRef": {"name": "cloudflare"}}, "apiTokenSecretRef"),
    ({"apiTokenSecretRef": {"name": "missing", "key": "api-token"}}, "apiTokenSecretRef"),
    ({"apiKeySecretRef": {"name": "cloudflare", "key": "api-token"}}, "email"),
])
def test_bad_cloudflare_settings_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        cloudflare_provider(settings, CF, cf_secrets())
    assert info.value.field == f"{CF.field}.{field}"


def test_a_token_with_a_line_break_is_refused_without_showing_it() -> None:
    token = "CF-ADMIN-TOKEN-s3cr3t\n# rotated 2026-01"
    with pytest.raises(ConfigError) as info:
        cloudflare_provider({"apiTokenSecretRef": {"name": "cloudflare", "key": "api-token"}},
                            CF, cf_secrets(token))
    assert "s3cr3t" not in str(info.value) and "line breaks" in str(info.value)


def test_an_issuer_cannot_choose_the_endpoint_and_bodies_are_never_shown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`apiURL` in an issuer is ignored (a tenant could aim certop anywhere); a non-JSON
    error body (an internal service's) is not copied into the error."""
    import http.server
    import threading

    seen: list[str] = []

    class Internal(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            body = b"INTERNAL-ONLY: db_password=hunter2"
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Internal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/internal#"
        chosen = cloudflare_provider({"apiTokenSecretRef": {"name": "cloudflare",
                                                            "key": "api-token"},
                                      "apiURL": url}, CF, cf_secrets())
        assert chosen.api_url != url  # the issuer's field is not read
        monkeypatch.setenv("CERTOP_CLOUDFLARE_API_URL", url)  # the operator's own choice
        internal = cloudflare_provider(cf_block(None), CF, cf_secrets())  # type: ignore[arg-type]
        with pytest.raises(TemporaryError) as info:
            asyncio.run(internal.present(f"_acme-challenge.{ZONE}", "x"))
        assert seen and "hunter2" not in str(info.value)
    finally:
        server.shutdown()
        server.server_close()

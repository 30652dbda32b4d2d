"""The `exec` DNS provider: a command of the user's own puts and removes the TXT value.

    dns01:
      exec:
        command: [/usr/local/bin/dns-hook, --profile, prod]   # or one string: the program
        timeout: 60                                            # seconds, default 60

The command is run (never through a shell) as lego's `exec` provider runs it:
`<command> present <fqdn.> <value>` and `<command> cleanup <fqdn.> <value>`, so a lego hook
script works unchanged; it must add the value beside others and be idempotent. A non-zero
exit is an error naming the command, its exit status and the end of its stderr; a command
that does not exist or cannot run is a configuration error at the attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from certop.core.errors import ConfigError, PermanentError, TemporaryError
from solvers.dns01.provider import SecretLookup, Where

TIMEOUT = 60.0
STDERR_TAIL = 400


class ExecProvider:
    def __init__(self, command: Sequence[str], where: Where, timeout: float = TIMEOUT) -> None:
        self.command = tuple(command)
        self.where = where
        self.timeout = timeout

    async def present(self, fqdn: str, value: str) -> None:
        await self._run("present", fqdn, value)

    async def cleanup(self, fqdn: str, value: str) -> None:
        await self._run("cleanup", fqdn, value)

    async def _run(self, action: str, fqdn: str, value: str) -> None:
        shown = shlex.join(self.command)
        field = f"{self.where.issuer}: {self.where.field}.command"
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, action, fqdn.rstrip(".") + ".", value,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise PermanentError(f"{field}: {shown} cannot be run: "
                                 f"{exc.strerror or exc}") from exc
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise TemporaryError(f"{field}: {shown} {action} {fqdn} took more than "
                                 f"{self.timeout:g}s (killed)") from None
        if proc.returncode != 0:
            tail = stderr.decode(errors="replace").strip()[-STDERR_TAIL:]
            raise TemporaryError(f"{field}: {shown} {action} {fqdn} exited with "
                                 f"{proc.returncode}" + (f": {tail}" if tail else ""))


def provider(block: Mapping[str, Any], where: Where, secrets: SecretLookup) -> ExecProvider:
    raw = block.get("command")
    if isinstance(raw, str) and raw.strip():
        command: list[str] = [raw.strip()]
    elif isinstance(raw, list) and raw and all(isinstance(a, str) and a for a in raw):
        command = list(raw)
    else:
        raise ConfigError(where.issuer, "", f"{where.field}.command",
                          "the program to run (a path), or a list: the program and its "
                          "first arguments")
    if os.sep in command[0] and not os.access(command[0], os.X_OK):
        raise ConfigError(where.issuer, "", f"{where.field}.command",
                          f"an executable file; {command[0]} is not one")
    timeout = block.get("timeout", TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(where.issuer, "", f"{where.field}.timeout",
                          "seconds the command may take, a positive number")
    return ExecProvider(command, where, float(timeout))

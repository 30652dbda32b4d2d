"""The `exec` DNS provider: a command of the user's own puts and removes the TXT value.

    dns01:
      exec:
        command: [/usr/local/bin/dns-hook, --profile, prod]   # or one string: the program
        timeout: 60                                            # seconds, default 60

The command is run (never through a shell) as lego's `exec` provider runs it:
`<command> present <fqdn.> <value>` and `<command> cleanup <fqdn.> <value>`, so a lego hook
script works unchanged; it must add the value beside others and be idempotent. A hook runs
with certop's own rights: only a program the operator allows (--dns01-exec-allow; never for
a namespaced Issuer in a cluster, see `solvers.dns01.solver`). A non-zero exit is an error
naming the command and its exit status (the end of its stderr goes to certop's log, never to
a status: a hook may print credentials); past its timeout the hook and its children are
killed; a command that cannot run is an error at the attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from certop.core.errors import ConfigError, PermanentError, TemporaryError
from solvers.dns01.provider import SecretLookup, Where

log = logging.getLogger(__name__)
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
        # stderr to a file, not a pipe: a helper the hook leaves in the background must not
        # hold certop up; its own session, so a timeout kills the hook and its children.
        with tempfile.TemporaryFile() as stderr:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.command, action, fqdn.rstrip(".") + ".", value,
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                    stderr=stderr, start_new_session=True)
            except OSError as exc:
                raise PermanentError(f"{field}: {shown} cannot be run: "
                                     f"{exc.strerror or exc}") from exc
            try:
                await asyncio.wait_for(proc.wait(), self.timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                raise TemporaryError(f"{field}: {shown} {action} {fqdn} took more than "
                                     f"{self.timeout:g}s (killed)") from None
            if proc.returncode != 0:
                stderr.seek(0)
                tail = stderr.read()[-STDERR_TAIL:].decode(errors="replace").strip()
                # The hook's words go to certop's log only: a hook may print credentials,
                # and an error reaches the status that users of the issuer read.
                log.warning("%s %s %s exited with %s: %s", shown, action, fqdn,
                            proc.returncode, tail or "(nothing on stderr)")
                raise TemporaryError(f"{field}: {shown} {action} {fqdn} exited with "
                                     f"{proc.returncode} (its stderr is in certop's log)")


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

"""The `certop` command line. Parses flags into settings, loads and checks input, runs.

A user mistake ends in one line on stderr naming the file, object and field, and exit code 2,
before anything is written. Runtime trouble (the CA unreachable) is logged and retried; it never
ends the process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from certop import __version__
from certop.core.clock import SystemClock
from certop.core.errors import ConfigError
from certop.core.models import AcmeIssuer, ObjectRef
from certop.proxy.server import Proxy
from certop.proxy.tls import CertBook
from certop.standalone.runner import Standalone, StandaloneSettings, load_config
from certop.store.files import FileAccountStore, FileCertStore, FileOrderJournal, ensure_dir
from solvers.http01 import TokenStore

log = logging.getLogger("certop")
EXIT_USAGE = 2


def _standalone_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "standalone",
        help="serve Ingress manifests with ACME certificates, no cluster needed",
        description="Read Ingress (and ClusterIssuer, Secret) manifests, obtain certificates "
                    "over ACME, keep them in --state-dir and serve the Ingresses over HTTP(S).",
    )
    p.add_argument("-f", "--file", action="append", required=True, type=Path, metavar="PATH",
                   help="manifest file or directory (repeatable; multi-document YAML)")
    p.add_argument("--acme-directory", metavar="URL", help="ACME directory URL")
    p.add_argument("--acme-ca-bundle", type=Path, metavar="PEM",
                   help="CA bundle to trust for the ACME server's own TLS")
    p.add_argument("--email", metavar="ADDR", help="contact email for the ACME account")
    p.add_argument("--state-dir", type=Path, required=True, metavar="DIR",
                   help="where accounts, certificates, keys and in-flight orders are kept")
    p.add_argument("--listen", default="0.0.0.0", metavar="ADDR", help="address to listen on")
    p.add_argument("--http-port", type=int, default=80, help="plain HTTP port (HTTP-01, redirects)")
    p.add_argument("--https-port", type=int, default=443, help="HTTPS port")
    p.add_argument("--service", action="append", default=[], metavar="NAME[:PORT]=HOST:PORT",
                   help="where an Ingress backend Service lives (repeatable)")
    p.add_argument("--check-interval", type=float, default=3600.0, metavar="SECONDS",
                   help="how often every certificate's renewal time is looked at")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certop", description="Automatic HTTPS for Ingress.")
    parser.add_argument("--version", action="version", version=f"certop {__version__}")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)
    _standalone_parser(sub)
    return parser


def _settings(args: argparse.Namespace) -> StandaloneSettings:
    cli_issuer = None
    if args.acme_directory:
        if not args.acme_directory.startswith(("https://", "http://")):
            raise ConfigError("--acme-directory", "", "", "an https:// URL of an ACME directory")
        cli_issuer = AcmeIssuer(ObjectRef("ClusterIssuer", "", "default", "--acme-directory"),
                                args.acme_directory, args.email)
    if args.acme_ca_bundle is not None and not args.acme_ca_bundle.is_file():
        raise ConfigError(str(args.acme_ca_bundle), "", "--acme-ca-bundle", "a PEM file")
    for flag in ("http_port", "https_port"):
        port = getattr(args, flag)
        if not 0 <= port < 65536:
            raise ConfigError(f"--{flag.replace('_', '-')}", "", "", "a port from 0 to 65535")
    check_host = "127.0.0.1" if args.listen in ("0.0.0.0", "") else args.listen
    if args.listen == "::":
        check_host = "::1"
    return StandaloneSettings(
        files=tuple(args.file),
        state_dir=args.state_dir,
        services=tuple(args.service),
        cli_issuer=cli_issuer,
        ca_bundle=args.acme_ca_bundle,
        check_interval=args.check_interval,
        self_check_addr=(check_host, args.http_port),
    )


async def run_standalone(settings: StandaloneSettings, listen: str, http_port: int,
                         https_port: int) -> int:
    config = load_config(settings)
    ensure_dir(settings.state_dir)
    tokens = TokenStore()
    proxy = Proxy(CertBook(), tokens, config.backends)
    try:
        await proxy.start(listen, http_port, https_port)
    except OSError as exc:
        print(f"certop: error: cannot listen on {listen} ports {http_port}/{https_port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    runner = Standalone(
        settings, proxy, FileCertStore(settings.state_dir),
        FileAccountStore(settings.state_dir), FileOrderJournal(settings.state_dir),
        SystemClock(),
    )
    runner.apply(config)
    log.info("serving %d Ingresses on %s: HTTP %d, HTTPS %d; %d certificates",
             len(config.manifests.ingresses), listen, http_port, https_port, len(config.specs))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.run(stop)
    finally:
        log.info("stopping: draining connections")
        await proxy.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = _settings(args)
        # Check the input before anything is written or bound.
        load_config(settings)
        return asyncio.run(run_standalone(settings, args.listen, args.http_port,
                                          args.https_port))
    except ConfigError as exc:
        print(f"certop: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

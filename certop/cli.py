"""The `certop` command line. Parses flags into settings, loads and checks input, runs.

A user mistake ends in one line on stderr naming the file, object and field, and exit code 2,
before anything is written. Runtime trouble (the CA unreachable) is logged and retried; it never
ends the process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import resource
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certop import __version__
from certop.core import annotations as ann
from certop.core.errors import ConfigError
from certop.core.models import AcmeIssuer, ObjectRef
from certop.proxy.admin import Admin
from certop.proxy.libssl import TicketKeys
from certop.proxy.server import ProxySettings
from certop.standalone import supplied, wiring
from certop.standalone.loader import one_line
from certop.standalone.runner import StandaloneSettings, check_solvers, load_config
from certop.store.files import StateDir, ensure_dir
from certop.store.ports import StoredCert
from solvers.http01 import TokenStore
from solvers.registry import SolverRegistry

if TYPE_CHECKING:  # the cluster modules load kubernetes: imported when a command needs them
    from certop.k8s.operator import OperatorRun
    from certop.k8s.proxy_run import ProxyRun

log = logging.getLogger("certop")
EXIT_USAGE = 2


def _seconds(text: str) -> int:
    """A whole number of seconds, at least 3 (the Lease is renewed every third)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole seconds, got {text!r}") from None
    if value < 3:
        raise argparse.ArgumentTypeError(f"expected at least 3 seconds, got {value}")
    return value


def _timeout(text: str) -> float:
    """Seconds, more than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds more than 0, got {text}")
    return value


def _order_flags(p: argparse.ArgumentParser, whose_exec: str) -> None:
    """The flags both modes share about orders and their challenges."""
    p.add_argument("--max-concurrent-orders", type=_positive, default=32, metavar="N",
                   help="orders in flight at the CA at once; the rest wait in line "
                        "(metric certop_orders_queued)")
    p.add_argument("--dns01-nameservers", type=_nameservers, default=(),
                   metavar="HOST:PORT,...", help="ask these nameservers whether a DNS-01 "
                   "record is visible before answering the challenge (default: the DNS "
                   "provider's own server, e.g. rfc2136's nameserver)")
    p.add_argument("--dns01-exec-allow", type=_programs, default=(), metavar="PATH,...",
                   help=f"programs {whose_exec} exec DNS provider may run (none by default)")


def _nameservers(text: str) -> tuple[tuple[str, int], ...]:
    """--dns01-nameservers: host[:port],... (port 53 by default; [v6]:port)."""
    from solvers.dns01.rfc2136 import parse_nameserver

    try:
        return tuple(parse_nameserver(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc}: expected host[:port][,host[:port]...], e.g. 192.0.2.53:53") from None


def _programs(text: str) -> tuple[str, ...]:
    """--dns01-exec-allow: absolute paths, comma-separated."""
    found = tuple(part.strip() for part in text.split(",") if part.strip())
    for path in found:
        if not path.startswith("/"):
            raise argparse.ArgumentTypeError(f"{path}: an absolute path")
    return found


def _positive(text: str) -> int:
    """A whole number, 1 or more."""
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _count(text: str) -> int:
    """A whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


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
    p.add_argument("--service", action="append", default=[], metavar="NAME[:PORT]=HOST:PORT",
                   help="where an Ingress backend Service lives (repeatable)")
    p.add_argument("--acme-validation-timeout", type=_seconds, default=600.0, metavar="SECONDS",
                   help="how long an order may stay pending at the CA once its challenges "
                        "are answered before it is dropped and ordered anew after a backoff")
    _order_flags(p, "an issuer's")
    p.add_argument("--check-interval", type=float, default=3600.0, metavar="SECONDS",
                   help="how often every certificate's renewal time is looked at")
    p.add_argument("--certificate", action="append", default=[],
                   metavar="SECRET=CERT.pem,KEY.pem",
                   help="serve this certificate for the tls[] entries naming SECRET (no ACME "
                        "order for them; repeatable; SECRET may be namespace/name)")
    _serving_flags(p)
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="proxy processes sharing the ports (SO_REUSEPORT); the first one also "
                        "issues certificates, the others serve what it stores")


def _serving_flags(p: argparse.ArgumentParser) -> None:
    """What the proxy serves with and how (`standalone`, `proxy`)."""
    p.add_argument("--listen", default="0.0.0.0", metavar="ADDR", help="address to listen on")
    p.add_argument("--http-port", type=int, default=80, help="plain HTTP port (HTTP-01, redirects)")
    p.add_argument("--https-port", type=int, default=443, help="HTTPS port")
    p.add_argument("--public-http-port", type=int, metavar="PORT",
                   help="the port clients reach plain HTTP on when a Service, a NAT or a "
                        "published container port maps it to --http-port: told to backends "
                        "as X-Forwarded-Port (default: --http-port)")
    p.add_argument("--public-https-port", type=int, metavar="PORT",
                   help="the same for HTTPS, and where plain HTTP is redirected (default: "
                        "--https-port; 443 gives redirects without a port)")
    p.add_argument("--default-certificate", metavar="CERT.pem,KEY.pem",
                   help="certificate for unknown SNI (default: a generated self-signed one)")
    p.add_argument("--hsts", action="store_true",
                   help="send Strict-Transport-Security (max-age=31536000; includeSubDomains) "
                        "on HTTPS responses unless an Ingress turns it off")
    p.add_argument("--max-body-size", default="0", metavar="SIZE",
                   help="largest request body (8m, 512k, 1g; 0 = no limit); per Ingress: "
                        "nginx.ingress.kubernetes.io/proxy-body-size")
    p.add_argument("--admin-port", type=int, metavar="PORT",
                   help="serve /healthz, /readyz and Prometheus /metrics on this port")
    p.add_argument("--access-log", action="store_true", help="log one line per request")
    limits = ProxySettings()
    p.add_argument("--client-header-timeout", type=_timeout, default=limits.header_timeout,
                   metavar="SECONDS", help="for a complete request head, also the keep-alive "
                   "idle time (default %(default)g; the connection is closed after)")
    p.add_argument("--client-body-timeout", type=_timeout, default=limits.body_timeout,
                   metavar="SECONDS", help="a request body may make no progress (default "
                   "%(default)g; 408 after)")
    p.add_argument("--upstream-connect-timeout", type=_timeout, default=limits.connect_timeout,
                   metavar="SECONDS", help="to connect to a backend endpoint (default "
                   "%(default)g; the next endpoint is tried, 502 when none is left)")
    p.add_argument("--upstream-header-timeout", type=_timeout, default=limits.read_timeout,
                   metavar="SECONDS", help="for a backend's response head once the request "
                   "is sent (default %(default)g; 504 after)")
    p.add_argument("--response-body-timeout", type=_timeout, default=limits.response_timeout,
                   metavar="SECONDS", help="a response body may make no progress, the backend "
                   "sending or the client reading (default %(default)g; closed after)")
    p.add_argument("--tunnel-idle-timeout", type=_timeout, default=limits.tunnel_timeout,
                   metavar="SECONDS", help="an upgraded connection (WebSocket) may carry no "
                   "byte either way (default %(default)g; closed after)")
    p.add_argument("--max-connections", type=_count, default=limits.max_connections,
                   metavar="N", help="client connections open at once per worker process "
                   "(default %(default)d; more are closed at once; 0: no limit)")
    p.add_argument("--trusted-proxies", default="", metavar="CIDR,...",
                   help="peers (load balancers) whose X-Forwarded-For is extended and whose "
                        "X-Forwarded-Proto/-Host/-Port are kept; from any other peer they are "
                        "replaced (default: none)")
    p.add_argument("--allowed-upgrades", default="websocket", metavar="PROTO,...",
                   help="Upgrade protocols relayed to backends; other offers are dropped "
                        "(default: websocket; empty: none)")


def _proxy_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "proxy", help="serve a cluster's Ingresses (an Ingress controller)",
        description="Serve the Ingresses of IngressClass --ingress-class (controller "
                    "--controller-name) over HTTP(S): backends from Services and "
                    "EndpointSlices, certificates from the kubernetes.io/tls Secrets their "
                    "spec.tls names. Logs in like kubectl (in-cluster or KUBECONFIG).")
    _scope_flags(p, "serve Ingresses of")
    _class_flags(p)
    _serving_flags(p)


def _class_flags(p: argparse.ArgumentParser) -> None:
    """Which Ingresses the proxy serves and what it tells them (`proxy`, `run`)."""
    p.add_argument("--ingress-class", default="certop", metavar="NAME",
                   help="this controller's IngressClass (the deprecated "
                        "kubernetes.io/ingress.class annotation is compared with it)")
    p.add_argument("--controller-name", default="certop.dev/ingress-controller",
                   metavar="NAME", help="the spec.controller of the IngressClasses served")
    p.add_argument("--api-grace", type=_seconds, default=30.0, metavar="SECONDS",
                   help="how long the API server may be unreachable before /readyz says "
                        "not ready (the last configuration is served meanwhile)")
    p.add_argument("--allow-external-name-services", action="store_true",
                   help="follow ExternalName Services as backends (off: a tenant's "
                        "ExternalName could send the proxy anywhere its network reaches)")
    publish = p.add_mutually_exclusive_group()
    publish.add_argument("--publish-service", metavar="NAMESPACE/NAME",
                         help="write this Service's load-balancer address into the status "
                              "of the Ingresses served")
    publish.add_argument("--publish-address", metavar="ADDR",
                         help="write this IP address or host name into the status of the "
                              "Ingresses served")
    p.add_argument("--status-lease", default="certop-proxy-status", metavar="NAME",
                   help="the Lease (in $POD_NAMESPACE, else certop) electing the one replica "
                        "that writes Ingress status")


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def _operator_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "operator", help="issue and renew TLS Secrets for annotated Ingresses in a cluster",
        description="Watch annotated Ingresses, keep one Certificate per spec.tls[] entry, "
                    "obtain certificates over ACME (HTTP-01 through temporary Ingresses) and "
                    "write kubernetes.io/tls Secrets. Logs in like kubectl (in-cluster or "
                    "KUBECONFIG).")
    _scope_flags(p, "watch")
    _operator_flags(p)
    p.add_argument("--listen", default="0.0.0.0", metavar="ADDR")
    p.add_argument("--admin-port", type=int, metavar="PORT",
                   help="/healthz, /readyz (the Lease holder only), /metrics")


def _scope_flags(p: argparse.ArgumentParser, what: str) -> None:
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help=f"{what} every namespace (the default)")
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help=f"{what} only this namespace (repeatable)")


def _operator_flags(p: argparse.ArgumentParser) -> None:
    """The operator's own flags (`operator`, `run`)."""
    p.add_argument("--default-issuer", metavar="NAME",
                   help="ClusterIssuer for Ingresses with kubernetes.io/tls-acme: \"true\"")
    p.add_argument("--cluster-resource-namespace", metavar="NS",
                   help="where ClusterIssuers' Secrets and the Lease live (default: "
                        "$POD_NAMESPACE or certop)")
    p.add_argument("--solver-port", type=int, default=8089,
                   help="port of the HTTP-01 responder")
    p.add_argument("--solver-service", default="certop-solver",
                   help="Service the temporary Ingresses route challenges to")
    p.add_argument("--http01-self-check", type=_host_port, metavar="HOST:PORT",
                   help="ask the Ingress controller here for a token before telling the CA "
                        "(e.g. certop-proxy.certop.svc:80 in the split layout): the token is "
                        "served by the time the CA asks (default: certop's own responder)")
    p.add_argument("--lease", default="certop-leader", metavar="NAME",
                   help="the coordination.k8s.io Lease that elects the active replica")
    _order_flags(p, "a ClusterIssuer's (never a namespaced Issuer's)")
    p.add_argument("--lease-duration", type=_seconds, default=15, metavar="SECONDS",
                   help="how long a replica that stopped renewing the Lease (crashed, cut "
                        "off) keeps it before another takes over; renewed every third")


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run", help="the operator and the proxy in one process (small clusters)",
        description="certop operator and certop proxy in one process: issue certificates "
                    "for annotated Ingresses and serve the Ingresses of IngressClass "
                    "--ingress-class. The proxy answers HTTP-01 tokens itself; the temporary "
                    "challenge Ingresses work as in the split layout. --admin-port serves "
                    "the proxy's /healthz, /readyz and /metrics.")
    _scope_flags(p, "watch and serve")
    _operator_flags(p)
    _class_flags(p)
    _serving_flags(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certop", description="Automatic HTTPS for Ingress.")
    parser.add_argument("--version", action="version", version=f"certop {__version__}")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--event-loop", default="uvloop", choices=["uvloop", "asyncio"],
                        help="event loop implementation (uvloop is faster)")
    sub = parser.add_subparsers(dest="command", required=True)
    _standalone_parser(sub)
    _operator_parser(sub)
    _proxy_parser(sub)
    _run_parser(sub)
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
        certificates=tuple(args.certificate),
        hsts=args.hsts,
        files=tuple(args.file),
        state_dir=args.state_dir,
        services=tuple(args.service),
        cli_issuer=cli_issuer,
        ca_bundle=args.acme_ca_bundle,
        check_interval=args.check_interval,
        self_check_addr=(check_host, args.http_port),
        validation_timeout=args.acme_validation_timeout,
        max_concurrent_orders=args.max_concurrent_orders,
        dns01_nameservers=args.dns01_nameservers,
        dns01_exec_allow=args.dns01_exec_allow,
    )


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _proxy_settings(args: argparse.Namespace) -> ProxySettings:
    try:
        limit = ann.body_limit({ann.BODY_SIZE[0]: args.max_body_size})
    except ann.AnnotationError as exc:
        raise ConfigError("--max-body-size", "", "", exc.expected) from None
    trusted = []
    for item in filter(None, (i.strip() for i in args.trusted_proxies.split(","))):
        try:
            trusted.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError("--trusted-proxies", "", "",
                              f"addresses or CIDR ranges separated by commas, not {item!r}"
                              ) from None
    upgrades = [u.strip() for u in args.allowed_upgrades.split(",") if u.strip()]
    for name in upgrades:
        if not _TOKEN.fullmatch(name):
            raise ConfigError("--allowed-upgrades", "", "",
                              f"protocol names separated by commas, not {name!r}")
    for flag in ("public_http_port", "public_https_port"):
        port = getattr(args, flag)
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"--{flag.replace('_', '-')}", str(port), "",
                              "a port from 1 to 65535")
    return ProxySettings(body_limit=limit or None, access_log=args.access_log,
                         public_http_port=args.public_http_port,
                         public_https_port=args.public_https_port,
                         trusted_proxies=tuple(trusted),
                         allowed_upgrades=frozenset(u.lower().encode() for u in upgrades),
                         header_timeout=args.client_header_timeout,
                         body_timeout=args.client_body_timeout,
                         connect_timeout=args.upstream_connect_timeout,
                         read_timeout=args.upstream_header_timeout,
                         response_timeout=args.response_body_timeout,
                         tunnel_timeout=args.tunnel_idle_timeout,
                         max_connections=args.max_connections)


def _default_certificate(args: argparse.Namespace) -> StoredCert | None:
    if not args.default_certificate:
        return None
    cert, comma, key = args.default_certificate.partition(",")
    if not comma:
        raise ConfigError("--default-certificate", args.default_certificate, "",
                          "CERT.pem,KEY.pem")
    return supplied.read_pair(Path(cert), Path(key), "--default-certificate")


def _raise_fd_limit() -> None:
    """Let --max-connections be reached before the process runs out of file descriptors: the
    soft limit goes up to the hard one (as nginx's worker_rlimit_nofile, or Go's runtime)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))


async def run_standalone(settings: StandaloneSettings, args: argparse.Namespace,
                         parent: int | None = None, tickets: TicketKeys | None = None) -> int:
    """Serve (and, unless `settings.serve_only`, issue). `tickets`: TLS session-ticket keys
    shared with the other workers."""
    listen, http_port, https_port = args.listen, args.http_port, args.https_port
    config = load_config(settings)
    state = StateDir(settings.state_dir)
    try:
        ensure_dir(settings.state_dir)
        _raise_fd_limit()
        # With several workers any of them may get the CA's HTTP-01 request: share tokens.
        tokens = TokenStore(state.directory("challenges") if args.workers > 1 else None)
    except OSError as exc:
        raise ConfigError(str(settings.state_dir), "", "--state-dir",
                          f"a directory certop can write ({exc.strerror or exc})") from None
    async with contextlib.AsyncExitStack() as stack:
        try:
            wired = await stack.enter_async_context(wiring.standalone(
                settings, listen, http_port, https_port, config=config,
                proxy_settings=_proxy_settings(args),
                default_certificate=_default_certificate(args), tickets=tickets,
                tokens=tokens, reuse_port=args.workers > 1))
        except OSError as exc:
            print(f"certop: error: cannot listen on {listen} ports {http_port}/{https_port}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 1
        proxy, runner = wired.proxy, wired.runner
        admin = Admin(proxy, lambda: runner.config is not None)
        if args.admin_port is not None and not settings.serve_only:
            port = await admin.start(listen if listen not in ("0.0.0.0", "::") else "127.0.0.1",
                                     args.admin_port)
            log.info("admin endpoints on port %d: /healthz /readyz /metrics", port)
        log.info("serving %d Ingresses on %s: HTTP %d, HTTPS %d; %d certificates",
                 len(config.manifests.ingresses), listen, http_port, https_port,
                 len(config.specs))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if parent is not None:
            def orphaned() -> None:
                if os.getppid() != parent:
                    log.warning("the issuing worker is gone: stopping")
                    stop.set()
                else:
                    loop.call_later(1.0, orphaned)

            orphaned()
        try:
            await runner.run(stop)
        finally:
            log.info("stopping: draining connections")
            await admin.close()
    return 0


def _operator_run(args: argparse.Namespace, admin: bool = True) -> OperatorRun:
    from certop.k8s.login import default_namespace
    from certop.k8s.operator import OperatorRun

    return OperatorRun(
        namespaces=tuple(args.namespace), default_issuer=args.default_issuer,
        resource_namespace=args.cluster_resource_namespace or default_namespace(),
        listen=args.listen, solver_port=args.solver_port, solver_service=args.solver_service,
        admin_port=args.admin_port if admin else None, lease_name=args.lease,
        lease_duration=args.lease_duration, max_concurrent_orders=args.max_concurrent_orders,
        dns01_nameservers=args.dns01_nameservers, dns01_exec_allow=args.dns01_exec_allow,
        http01_self_check=args.http01_self_check)


def _host_port(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _operator(args: argparse.Namespace) -> int:
    from certop.k8s.operator import run_operator

    return _run_in_cluster(run_operator(_operator_run(args)), args)


def _proxy_run(args: argparse.Namespace) -> ProxyRun:
    """`certop proxy`'s (and `run`'s) settings; ConfigError for a bad flag."""
    from certop.k8s.ingress_source import SourceSettings
    from certop.k8s.login import default_namespace
    from certop.k8s.proxy_run import ProxyRun

    return ProxyRun(
        listen=args.listen, http_port=args.http_port, https_port=args.https_port,
        admin_port=args.admin_port,
        source=SourceSettings(controller=args.controller_name, class_name=args.ingress_class,
                              namespaces=tuple(args.namespace),
                              hsts_default=ann.DEFAULT_HSTS if args.hsts else None,
                              grace=args.api_grace,
                              external_names=args.allow_external_name_services),
        proxy=_proxy_settings(args), default_certificate=_default_certificate(args),
        publish_service=_publish_service(args.publish_service),
        publish_address=args.publish_address, lease_namespace=default_namespace(),
        status_lease=args.status_lease)


def _serve_in_cluster(args: argparse.Namespace) -> int:
    """`certop proxy`, or `certop run` (the operator too; one admin port, the proxy's:
    every replica that serves is ready)."""
    from certop.k8s.proxy_run import run_both, run_proxy

    try:
        run = _proxy_run(args)
    except ConfigError as exc:
        print(f"certop: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    main = run_proxy(run) if args.command == "proxy" else \
        run_both(_operator_run(args, admin=False), run)
    return _run_in_cluster(main, args)


def _publish_service(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    namespace, slash, name = value.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise ConfigError("--publish-service", value, "", "NAMESPACE/NAME of a Service")
    return namespace, name


def _run_in_cluster(main: Coroutine[Any, Any, int], args: argparse.Namespace) -> int:
    """Run a cluster command; no Kubernetes login is one line and exit 2."""
    import kubernetes

    try:
        with asyncio.Runner(loop_factory=_loop_factory(args.event_loop)) as runner:
            return runner.run(main)
    except kubernetes.config.ConfigException as exc:
        print(f"certop: error: no Kubernetes login: not in a cluster and no usable KUBECONFIG "
              f"({exc})", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _fork_worker(settings: StandaloneSettings, args: argparse.Namespace,
                 tickets: TicketKeys) -> int:
    """A serving-only worker process; returns its pid (in the parent)."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        log.info("started worker process %d", pid)
        return pid
    code = 1
    try:
        worker = replace(settings, serve_only=True)
        with asyncio.Runner(loop_factory=_loop_factory(args.event_loop)) as runner:
            code = runner.run(run_standalone(worker, args, parent=parent, tickets=tickets))
    except KeyboardInterrupt:
        code = 130
    finally:
        os._exit(code)


def _check_input(args: argparse.Namespace) -> StandaloneSettings:
    """Check the input before anything is written or bound: flags, manifests, the state
    directory. Every failure, expected or not, is a ConfigError (one line, exit 2)."""
    try:
        settings = _settings(args)
        check_solvers(settings, load_config(settings), SolverRegistry())
        _proxy_settings(args)
        _default_certificate(args)
        if args.workers < 1 or (args.workers > 1 and 0 in (args.http_port, args.https_port)):
            raise ConfigError("--workers", "", "", "at least 1; with more than 1 the ports "
                              "must be fixed (not 0)")
        StateDir(settings.state_dir).check()
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(str(exc.filename or "certop standalone"), "", "",
                          f"a readable file or directory ({exc.strerror or exc})") from None
    except Exception as exc:
        log.debug("checking the input failed", exc_info=True)
        raise ConfigError("certop standalone", "", "", "input certop can check (checking it "
                          f"failed: {one_line(exc)})") from exc
    return settings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "operator":
        return _operator(args)
    if args.command in ("proxy", "run"):
        return _serve_in_cluster(args)
    try:
        settings = _check_input(args)
        # One set of session-ticket keys for all workers: a session one of them issued
        # resumes on any other (the kernel spreads connections over them).
        tickets = TicketKeys()
        children = [_fork_worker(settings, args, tickets) for _ in range(args.workers - 1)]
        try:
            with asyncio.Runner(loop_factory=_loop_factory(args.event_loop)) as runner:
                return runner.run(run_standalone(settings, args, tickets=tickets))
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            for pid in children:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
    except ConfigError as exc:
        print(f"certop: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

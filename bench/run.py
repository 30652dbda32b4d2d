"""`make bench`: run the side-by-side benchmarks and update docs/benchmarks.md.

Issuance: certop standalone vs. lego, certbot and Caddy against one local Pebble, time to one
certificate (median of --runs) and total time for each of --sizes hosts.
Proxy: certop vs. nginx, HAProxy and Caddy on one pinned core (see bench/proxy.py).
Operator: 1000 annotated Ingresses at once in the emulator against Pebble (bench/operator.py;
--ingresses 1000,5000,10000 for more sizes), beside standalone mode for the same counts.
Handshakes: full and resumed TLS handshakes per second, certop and nginx, 1 and 4 workers
(bench/proxy.py `run_handshakes`).
DNS-01: a wildcard + apex certificate through RFC 2136 against one local BIND and Pebble, certop
vs. `lego --dns rfc2136`, one certificate (median of --dns01-runs) and --dns01-count at once
(bench/dns01.py).
Cluster proxy: `certop proxy` fed from the emulator (bench/cluster_proxy.py): reconfiguration
latency after an EndpointSlice or Ingress change, start-up time and RSS with --cluster-ingresses
Ingresses, Secrets and Services (5 endpoints each), throughput API-fed vs file-fed.
Instructions: instructions per proxied request under valgrind, certop and --baseline-certop
(bench/instructions.py): the per-request cost, deterministic where req/s is noisy.
Everything in the same run so the ratios compare like with like; raw results also go to
bench/results/*.json.

Usage: bench/run.py [--only issuance|dns01|proxy|operator|handshakes|instructions|cluster-proxy|
       image]
                    [--runs 5]
                    [--sizes 20,100] [--dns01-runs 11] [--dns01-count 20] [--seconds 8]
                    [--requests 3000]
                    [--baseline-certop OTHER/.venv/bin/certop]
                    [--ingresses 1000[,5000,10000]] [--no-standalone]
                    [--cluster-ingresses 2000] [--changes 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "pebble")]

import container  # noqa: E402
import dns01  # noqa: E402
import instructions  # noqa: E402
import issuance  # noqa: E402
import pebblectl  # noqa: E402
import plot  # noqa: E402
import proxy  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- issuance:begin -->"
END = "<!-- issuance:end -->"
OPERATOR_BEGIN = "<!-- operator:begin -->"
OPERATOR_END = "<!-- operator:end -->"
PROXY_BEGIN = "<!-- proxy:begin -->"
PROXY_END = "<!-- proxy:end -->"
INSTRUCTIONS_BEGIN = "<!-- instructions:begin -->"
INSTRUCTIONS_END = "<!-- instructions:end -->"
HANDSHAKES_BEGIN = "<!-- handshakes:begin -->"
HANDSHAKES_END = "<!-- handshakes:end -->"
CLUSTER_PROXY_BEGIN = "<!-- cluster-proxy:begin -->"
CLUSTER_PROXY_END = "<!-- cluster-proxy:end -->"
IMAGE_BEGIN = "<!-- image:begin -->"
IMAGE_END = "<!-- image:end -->"
DNS01_BEGIN = "<!-- dns01:begin -->"
DNS01_END = "<!-- dns01:end -->"
DNS01_TARGET_MEDIAN = 0.5
DNS01_TARGET_RATIO = 10.0
DNS01_TARGET_RATE = 10.0
"""Issue 10's targets: certop's median, its lead over lego, its rate at --dns01-count."""
SCENARIOS = [("http_keepalive", "HTTP keep-alive"), ("https_keepalive", "HTTPS keep-alive"),
             ("https_new_connections", "new TLS connections")]


def _fmt(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f} s"


def run(args: argparse.Namespace) -> dict[str, object]:
    tools = args.tools.split(",")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    certbot = HERE / ".venv-certbot" / "bin" / "certbot"
    missing = [t for t, ok in (("lego", shutil.which("lego")), ("caddy", shutil.which("caddy")),
                               ("certbot", certbot.exists())) if t in tools and not ok]
    if missing:
        raise SystemExit(f"bench: missing {', '.join(missing)}: run `make bench`, which "
                         "installs them")
    work = Path(tempfile.mkdtemp(prefix="certop-bench-"))
    results: dict[str, object] = {"tools": {}, "sizes": sizes, "runs": args.runs}
    try:
        with pebblectl.running(work / "pebble", http_port=pebblectl.free_port()) as info:
            env = issuance.Env(info, work, Path(sys.executable).with_name("certop"),
                               certbot if certbot.exists() else None)
            table: dict[str, dict[str, object]] = {}
            for tool in tools:
                fn = issuance.TOOLS[tool]
                print(f"bench: {tool}: one certificate x{args.runs}", flush=True)
                med, times = issuance.median_single(fn, env, tool, args.runs)
                row: dict[str, object] = {"one_median": med, "one_runs": times}
                for n in sizes:
                    print(f"bench: {tool}: {n} hosts", flush=True)
                    row[f"total_{n}"] = fn(env, issuance.hosts(n, f"{tool}-{n}"), f"n{n}")
                table[tool] = row
            if "certop" in tools:
                inproc = [issuance.certop_inprocess(env, issuance.hosts(1, f"ip{r}"), f"ip{r}")
                          for r in range(args.runs)]
                table["certop"]["inprocess_one_median"] = statistics.median(inproc)
                for n in sizes:
                    table["certop"][f"inprocess_{n}"] = issuance.certop_inprocess(
                        env, issuance.hosts(n, f"ipn{n}"), f"ipn{n}")
            results["tools"] = table
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def render(results: dict[str, object], command: str) -> str:
    table = results["tools"]
    assert isinstance(table, dict)
    sizes = results["sizes"]
    assert isinstance(sizes, list)
    head = "| tool | one certificate (median) | " + " | ".join(
        f"{n} hosts total | {n} hosts certs/s" for n in sizes) + " |"
    sep = "|---" * (2 + 2 * len(sizes)) + "|"
    lines = [head, sep]
    for tool, row in table.items():
        cells = [tool, _fmt(row["one_median"])]
        for n in sizes:
            total = row.get(f"total_{n}")
            cells += [_fmt(total), f"{n / total:.1f}" if total else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = []
    if "certop" in table:
        certop = table["certop"]
        for n in sizes:
            peers = {t: r[f"total_{n}"] for t, r in table.items() if t != "certop"}
            if peers:
                best = min(peers, key=lambda t: peers[t])
                ratio = peers[best] / certop[f"total_{n}"]
                ratios.append(f"- {n} hosts: certop is **{ratio:.1f}x** faster than the best "
                              f"peer ({best}, {_fmt(peers[best])}).")
        one_peers = {t: r["one_median"] for t, r in table.items() if t != "certop"}
        if one_peers:
            best = min(one_peers, key=lambda t: one_peers[t])
            ratios.append(f"- One certificate: certop {_fmt(certop['one_median'])} end to end "
                          f"({_fmt(certop.get('inprocess_one_median'))} without interpreter "
                          f"start-up) vs. {best} {_fmt(one_peers[best])}: "
                          f"**{one_peers[best] / certop['one_median']:.1f}x**.")
        inproc = ", ".join(f"{n} hosts {_fmt(certop.get(f'inprocess_{n}'))}" for n in sizes)
        ratios.append(f"- certop in-process (runner start to all stored): {inproc}.")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        BEGIN,
        f"Measured {when} on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, Debian pebble 2.4.0 with `PEBBLE_VA_NOSLEEP=1`, no nonce "
        f"rejection, no authorization reuse. Command: `{command}`.",
        "",
        *lines,
        "",
        *ratios,
        "",
        "![Issuance time, log scale](benchmarks-issuance.svg)",
        END,
    ])


def _bind_version() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["/usr/sbin/named", "-v"], capture_output=True, text=True,
                             check=True).stdout.split()
        return " ".join(out[:2])
    return "BIND"


def _lego_version() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "lego"],
                             capture_output=True, text=True, check=True).stdout
        return f"lego {out.strip()} (Debian)"
    return "lego"


def render_dns01(results: dict[str, Any], command: str) -> str:
    table: dict[str, dict[str, Any]] = results["tools"]
    n = results["count"]
    lines = [f"| tool | one certificate (median of {results['runs']}) | min / mean / max | "
             f"{n} certificates total | {n} certificates: certs/s |",
             "|---|---|---|---|---|"]
    for tool, row in table.items():
        runs = row["one_runs"]
        lines.append(f"| {tool} | {_fmt(row['one_median'])} | {min(runs):.2f} / "
                     f"{row['one_mean']:.2f} / {max(runs):.2f} s | "
                     f"{_fmt(row[f'total_{n}'])} | {row[f'rate_{n}']:.1f} |")
    notes = []
    if "certop" in table:
        c = table["certop"]
        med, rate = c["one_median"], c[f"rate_{n}"]
        notes.append(f"- certop: median **{med:.2f} s** (target <= {DNS01_TARGET_MEDIAN} s: "
                     f"{'met' if med <= DNS01_TARGET_MEDIAN else 'missed'}), {n} certificates "
                     f"at **{rate:.1f}/s** (target >= {DNS01_TARGET_RATE:.0f}/s: "
                     f"{'met' if rate >= DNS01_TARGET_RATE else 'missed'}).")
        if "lego" in table:
            lego = table["lego"]
            one = lego["one_median"] / med
            mean = lego["one_mean"] / c["one_mean"]
            many = lego[f"total_{n}"] / c[f"total_{n}"]
            notes.append(f"- certop / lego: one certificate **{one:.1f}x** faster by the "
                         f"medians (target >= {DNS01_TARGET_RATIO:.0f}x: "
                         f"{'met' if one >= DNS01_TARGET_RATIO else 'missed'}), {mean:.1f}x by "
                         f"the means; {n} certificates **{many:.1f}x** faster.")
    if "certop-running" in table and "lego" in table:
        run, lego = table["certop-running"], table["lego"]
        by_median = lego["one_median"] / run["one_median"]
        by_mean = lego["one_mean"] / run["one_mean"]
        notes.append(f"- certop already running (the Ingress appears; no interpreter start-up, "
                     f"as an operator or a standalone daemon sees it): median "
                     f"**{run['one_median']:.2f} s**, {by_median:.1f}x lego's median, "
                     f"{by_mean:.1f}x its mean.")
    env = " ".join(f"{k}={v}" for k, v in results["lego_env"].items())
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        DNS01_BEGIN,
        f"Measured {when} on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {_bind_version()}, Debian pebble 2.4.0 with "
        f"`PEBBLE_VA_NOSLEEP=1`, {_lego_version()}. Every certificate is `*.NAME` + `NAME` "
        f"(NAME a fresh subdomain of one zone). lego: `{' '.join(results['lego_flags'])} "
        f"--dns.resolvers <BIND>` with `{env}`. Command: `{command}`.",
        "", *lines, "", *notes,
        DNS01_END,
    ])


def render_proxy(results: dict[str, object], command: str) -> str:
    table = results["proxies"]
    assert isinstance(table, dict)
    head = "| proxy | " + " | ".join(
        f"{label} req/s | p99" for _, label in SCENARIOS) + " |"
    lines = [head, "|---" * (1 + 2 * len(SCENARIOS)) + "|"]
    for name, row in table.items():
        cells = [name]
        for key, _ in SCENARIOS:
            r = row[key]
            cells += [f"{r['rps']:,.0f}" + (f" ({r['errors']} errors)" if r["errors"] else ""),
                      f"{r['p99_ms']:.2f} ms"]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = []
    if "certop" in table:
        c = table["certop"]
        for peer in ("certop-baseline", "nginx", "caddy", "haproxy"):
            if peer in table:
                parts = [f"{label} **{c[key]['rps'] / table[peer][key]['rps']:.2f}x**"
                         for key, label in SCENARIOS if table[peer][key]["rps"]]
                ratios.append(f"- certop / {peer}: " + ", ".join(parts) + ".")
        if "nginx" in table:
            n = table["nginx"]
            ratios.append(
                f"- p99 latency, HTTP keep-alive: at 64 connections (saturated, mostly queueing) "
                f"certop {c['http_keepalive']['p99_ms']:.2f} ms vs nginx "
                f"{n['http_keepalive']['p99_ms']:.2f} ms; at 4 connections certop "
                f"{c['http_latency_c4']['p99_ms']:.3f} ms vs nginx "
                f"{n['http_latency_c4']['p99_ms']:.3f} ms "
                f"(**{c['http_latency_c4']['p99_ms'] / n['http_latency_c4']['p99_ms']:.2f}x**).")
    floor = results.get("floor")
    if isinstance(floor, dict) and "certop" in table:
        c_rps = table["certop"]["http_keepalive"]["rps"]
        ratios.append(
            f"- The floor of a Python data path (`bench/floor.py`: uvloop, bytes copied between "
            f"paired connections, no HTTP parsing) on the same core: {floor['rps']:,.0f} req/s, "
            f"about {1e6 / floor['rps']:.0f} µs per request; certop spends "
            f"{1e6 / c_rps:.0f} µs.")
    workers = results["workers"]
    assert isinstance(workers, dict)
    w1, w2 = workers["1"]["rps"], workers["2"]["rps"]
    ratios.append(f"- `--workers 2` (not pinned; wrk and the backend share the same 2 cores): "
                  f"{w2:,.0f} vs {w1:,.0f} req/s with one worker (**{w2 / w1:.2f}x**).")
    ratios.append(f"- RSS with 10,000 idle keep-alive connections: "
                  f"**{results['idle_rss_mb_10k']:.0f} MB**; with 1,000 Ingresses and 1,000 "
                  f"certificates loaded: **{results['many_rss_mb_1000']:.0f} MB** (serving "
                  f"after {results['many_start_seconds_1000']:.1f} s).")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        PROXY_BEGIN,
        f"Measured {when}, {results['seconds']} s per run, 64 connections (16 for new TLS "
        f"connections), 100-byte responses. Command: `{command}`.",
        "", *lines, "", *ratios, "",
        "![Proxy throughput](benchmarks-proxy.svg)",
        PROXY_END,
    ])


def render_handshakes(results: dict[str, dict[str, dict[str, float]]], seconds: int,
                      command: str) -> str:
    lines = ["| proxy | workers | full handshakes/s | resumed handshakes/s | resumed |",
             "|---|---|---|---|---|"]
    for name, by_workers in results.items():
        for workers, r in by_workers.items():
            lines.append(f"| {name} | {workers} | {r['new']:,.0f} | {r['reuse']:,.0f} | "
                         f"{r['reuse_resumed']:.0%} |")
    ratios = []
    if "certop" in results and "nginx" in results:
        for workers in ("1", "4"):
            c, n = results["certop"][workers], results["nginx"][workers]
            ratios.append(f"- certop / nginx, {workers} worker(s): full "
                          f"**{c['new'] / n['new']:.2f}x**, resumed "
                          f"**{c['reuse'] / n['reuse']:.2f}x**.")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        HANDSHAKES_BEGIN,
        f"Measured {when}, {seconds} s per run: 4 parallel `openssl s_time -new` (full) or "
        f"`-reuse` (resumed; the share that did resume is shown) clients, each fetching `/` "
        f"through the proxy once per connection; X25519, ECDSA P-256 certificate, TLS 1.3. One "
        f"worker pinned to core 0 with the clients on core 1; 4 workers not pinned. "
        f"Command: `{command}`.",
        "", *lines, "", *ratios,
        HANDSHAKES_END,
    ])


def render_instructions(results: dict[str, dict[str, float]], requests: int,
                        command: str) -> str:
    lines = ["| build | HTTP keep-alive, instructions per request | HTTPS keep-alive |",
             "|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['http']:,.0f} | {r['https']:,.0f} |")
    ratios = []
    if "certop" in results and "certop-baseline" in results:
        c, b = results["certop"], results["certop-baseline"]
        ratios.append(f"- certop / certop-baseline: HTTP **{c['http'] / b['http']:.3f}x**, "
                      f"HTTPS **{c['https'] / b['https']:.3f}x** the instructions per request "
                      "(lower is cheaper).")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        INSTRUCTIONS_BEGIN,
        f"Measured {when} with valgrind's callgrind (`bench/instructions.py`): {requests} "
        "keep-alive requests over 8 connections after a warm-up, every instruction of the "
        f"proxy process counted and divided by the requests. Command: `{command}`.",
        "", *lines, "", *ratios,
        INSTRUCTIONS_END,
    ])


def render_operator(results: dict[str, Any], command: str) -> str:
    """The operator's numbers per Ingress count, then its API requests per certificate by verb
    and resource (bench/operator.py)."""
    runs: list[dict[str, Any]] = results["runs"]
    lines = ["| Ingresses | all Ready | rate | all Secrets written | operator RSS: idle / "
             "peak (kB per certificate) "
             "| CPU s: operator / emulator / Pebble | API requests per certificate (writes) "
             "| ACME requests per certificate | standalone, same count |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        alone = r.get("standalone_seconds")
        lines.append(
            f"| {r['count']} | {r['ready_seconds']:.1f} s | {r['rate']:.1f}/s | "
            f"{r['seconds']:.1f} s | {r.get('idle_rss_mb', float('nan')):.0f} / "
            f"{r['peak_rss_mb']:.0f} MB ({r.get('kb_per_certificate', float('nan')):.0f}) | "
            f"{r['operator_cpu_seconds']:.0f} / {r['emulator_cpu_seconds']:.0f} / "
            f"{r['pebble_cpu_seconds']:.0f} | {r['api_requests_per_certificate']:.1f} "
            f"({r['api_writes_per_certificate']:.1f}) | "
            f"{r['acme_requests_per_certificate']:.1f} | "
            + (f"{alone:.1f} s ({r['count'] / alone:.1f}/s) |" if alone else
               f"n/a ({r['standalone_error']}) |" if r.get("standalone_error") else "n/a |"))
    keys = sorted({k for r in runs for k in r["api_per_certificate"]},
                  key=lambda k: (k.split()[1], k.split()[0]))
    verbs = ["| request (verb resource) | " + " | ".join(f"per certificate at {r['count']}"
                                                       for r in runs) + " |",
             "|---" * (1 + len(runs)) + "|"]
    for key in keys:
        verbs.append(f"| {key} | " + " | ".join(
            f"{r['api_per_certificate'].get(key, 0.0):.2f}" for r in runs) + " |")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        OPERATOR_BEGIN,
        f"Measured {when} on {os.cpu_count()} cores. Command: `{command}`. API requests are "
        "the operator's from the emulator's counts, from the Ingresses' creation until all "
        "are Ready (start-up lists and watches not included).",
        "", *lines, "", *verbs, "",
        "![Operator: time until all Ready against the Ingress count](benchmarks-operator.svg)",
        OPERATOR_END,
    ])


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render_cluster_proxy(results: dict[str, Any], command: str) -> str:
    """`certop proxy` fed from the API (bench/cluster_proxy.py): latency, start-up, RSS,
    throughput API-fed vs file-fed, each against its target."""
    count = results["ingresses"]
    lines = ["| change | configuration | seen: median | p99 | max | emulator's write: "
             "median / p99 |", "|---|---|---|---|---|---|"]
    worst = 0.0
    for config, label in (("latency_small", "3 Ingresses"),
                          ("latency_large", f"{count + 3:,} Ingresses")):
        for kind, name in (("endpointslice", "EndpointSlice"), ("ingress", "Ingress")):
            r = results[config][kind]
            seen, write = r["seen_ms"], r["write_ms"]
            worst = max(worst, seen["p99"])
            lines.append(f"| {name} | {label} | {seen['median']:.0f} ms | {seen['p99']:.0f} ms "
                         f"| {seen['max']:.0f} ms | {write['median']:.1f} / {write['p99']:.1f} "
                         "ms |")
    up = results["startup"]
    made = results["create"]
    logged = up.get("logged") or {}
    listed = max((v for k, v in logged.items() if k.endswith("listed")), default=float("nan"))
    snapshot = next((v for k, v in logged.items() if k.startswith("serving")), float("nan"))
    per = results["endpoints_per_service"]
    start = ["| Ingresses / TLS Secrets / Services / endpoints | /readyz 200 | last host served "
             "| all listed / first snapshot (its log) | RSS at serving (peak) | RSS after the "
             "latency runs (peak) | CPU s: proxy / emulator |", "|---|---|---|---|---|---|---|",
             f"| {count:,} / {count:,} / {count:,} / {count * per:,} | {up['ready_seconds']:.2f} s "
             f"| {up['served_seconds']:.2f} s | {listed:.2f} s / {snapshot:.2f} s "
             f"| {up['rss_mb']:.0f} MB ({up['peak_rss_mb']:.0f}) "
             f"| {up['rss_after_latency_mb']:.0f} MB ({up['peak_rss_after_latency_mb']:.0f}) "
             f"| {up['proxy_cpu_seconds']:.1f} / {up['emulator_cpu_seconds']:.1f} |"]
    peak = max(up["peak_rss_mb"], up["peak_rss_after_latency_mb"])
    targets = [
        f"- Reconfiguration latency p99 <= 200 ms: worst p99 **{worst:.0f} ms**: "
        f"{_met(worst <= 200)}.",
        f"- Start-up to serving with {count:,} Ingresses < 10 s: **{up['served_seconds']:.1f} s**: "
        f"{_met(up['served_seconds'] < 10)}.",
        f"- RSS <= 150 MB: peak **{peak:.0f} MB**: {_met(peak <= 150)}.",
    ]
    created = ", ".join(f"{count:,} {_plural(kind)} {t:.1f} s"
                        for kind, t in made["create_seconds"].items())
    notes = [f"- Created before the proxy started (8 threads): {created}; the emulator's "
             f"write: median {made['create_ms']['median']:.1f} ms, p99 "
             f"{made['create_ms']['p99']:.1f} ms."]
    through: list[str] = []
    tp = results.get("throughput")
    if tp:
        through = ["| feed | " + " | ".join(f"{label} req/s | p99" for _, label in SCENARIOS)
                   + " |", "|---" * (1 + 2 * len(SCENARIOS)) + "|"]
        for feed, label in (("file", "file-fed (`certop standalone`)"),
                            ("api", "API-fed (`certop proxy`)")):
            cells = [label]
            for key, _ in SCENARIOS:
                r = tp[feed][key]
                cells += [f"{r['rps']:,.0f}" + (f" ({r['errors']} errors)" if r["errors"]
                                                 else ""), f"{r['p99_ms']:.2f} ms"]
            through.append("| " + " | ".join(cells) + " |")
        ratios = {label: tp["api"][key]["rps"] / tp["file"][key]["rps"]
                  for key, label in SCENARIOS if tp["file"][key]["rps"]}
        spread = max(abs(a[key]["rps"] / b[key]["rps"] - 1)
                     for runs in (tp["file_rounds"], tp["api_rounds"])
                     for a in runs for b in runs for key, _ in SCENARIOS if b[key]["rps"])
        notes.append(
            "- wrk, API-fed / file-fed (best of "
            f"{results['rounds']} rounds each): "
            + ", ".join(f"{label} **{r:.2f}x**" for label, r in ratios.items())
            + f"; rounds of one feed differ by up to {spread:.0%} on this shared machine, "
            "hence the instruction count for the target.")
    counted = results.get("instructions")
    if counted:
        modes = [("http", "HTTP keep-alive"), ("https", "HTTPS keep-alive"),
                 ("https_new", "new TLS connections")]
        modes = [(key, label) for key, label in modes if key in counted["file"]]
        through += ["", "| feed | " + " | ".join(f"{label}, instructions per request"
                                                for _, label in modes) + " |",
                    "|---" * (1 + len(modes)) + "|"]
        for feed, label in (("file", "file-fed"), ("api", "API-fed")):
            through.append(f"| {label} | " + " | ".join(
                f"{counted[feed][key]:,.0f}" for key, _ in modes) + " |")
        ratio = {label: counted["api"][key] / counted["file"][key] for key, label in modes}
        targets.append(
            f"- Throughput API-fed = file-fed: instructions per request (callgrind, "
            f"{results.get('requests', 3000)} keep-alive requests, a tenth as many new TLS "
            "connections), API-fed / file-fed: "
            + ", ".join(f"{label} **{r:.3f}x**" for label, r in ratio.items())
            + f": {_met(max(ratio.values()) <= 1.02)} (at most 2% more).")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        CLUSTER_PROXY_BEGIN,
        f"Measured {when} on {os.cpu_count()} cores, {results['changes']} changes of each kind, "
        f"{results['seconds']} s per wrk run. Command: `{command}`.",
        "", *lines, "", *start, "", *([*through, ""] if through else []), *targets, *notes,
        CLUSTER_PROXY_END,
    ])


def render_image(results: dict[str, Any], command: str) -> str:
    """The container image's section: size against the issue's budget, where the bytes are,
    build time, and what the read-only root filesystem costs at start."""
    mb = 1_000_000
    groups = sorted(results["groups"].items(), key=lambda kv: -kv[1]["compressed"])
    shown = groups[:10]
    rest = groups[10:]
    rows = ["| part | unpacked | compressed alone |", "|---|---|---|"]
    rows += [f"| {name} | {g['unpacked'] / mb:.1f} MB | {g['compressed'] / mb:.1f} MB |"
             for name, g in shown]
    if rest:
        rows.append(f"| {len(rest)} more parts | "
                    f"{sum(g['unpacked'] for _, g in rest) / mb:.1f} MB | "
                    f"{sum(g['compressed'] for _, g in rest) / mb:.1f} MB |")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        IMAGE_BEGIN,
        f"Measured {when} on {os.cpu_count()} cores. Command: `{command}` "
        "(`make image` into a temporary folder, then podman with a store of its own).",
        "",
        "| | result | target |",
        "|---|---|---|",
        f"| compressed (the layer as a registry stores it) | "
        f"**{results['compressed'] / mb:.1f} MB** "
        f"| <= 60 MB: {_met(results['compressed'] <= 60 * mb)} |",
        f"| unpacked | {results['unpacked'] / mb:.0f} MB | |",
        f"| `make image` from nothing (mmdebstrap, wheels, layer) | "
        f"{results['build_seconds']:.0f} s | |",
        f"| `podman run ... certop --version`, as manifests/ runs it (median of "
        f"{results['runs']}) | {results['run_version_seconds']:.2f} s | |",
        f"| import of certop's operator, proxy and standalone modules: read-only container "
        f"/ host venv (median of {results['runs']}) | "
        f"{results['import_seconds_container']:.2f} s / {results['import_seconds_host']:.2f} s | "
        "no slower: nothing compiled at start |",
        "",
        "Where the bytes are (each part gzip'ed alone, so the column adds up to a little more "
        "than the layer):",
        "",
        *rows,
        IMAGE_END,
    ])


def _replace(text: str, begin: str, end: str, section: str) -> str:
    if begin not in text:
        return text.rstrip("\n") + "\n\n" + section + "\n"
    start, stop = text.index(begin), text.index(end) + len(end)
    return text[:start] + section + text[stop:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="20,100")
    parser.add_argument("--tools", default="certop,lego,certbot,caddy")
    parser.add_argument("--proxies", default="certop,nginx,haproxy,caddy")
    parser.add_argument("--seconds", type=int, default=8, help="length of each proxy run")
    parser.add_argument("--only", choices=["issuance", "dns01", "proxy", "operator",
                                           "handshakes", "instructions", "cluster-proxy",
                                           "image"],
                        help="run one of the benchmarks (default: all)")
    parser.add_argument("--dns01-count", type=int, default=20,
                        help="DNS-01 certificates (wildcard + apex each) for the rate row")
    parser.add_argument("--dns01-runs", type=int, default=11,
                        help="single DNS-01 certificates per tool for the median (lego's times "
                             "are bimodal: docs/benchmarks.md)")
    parser.add_argument("--dns01-tools", default="certop,certop-running,lego")
    parser.add_argument("--ingresses", default="1000",
                        help="Ingress counts (comma-separated) created at once for the operator "
                             "benchmark, one run each, e.g. 1000,5000,10000 (minutes each)")
    parser.add_argument("--no-standalone", action="store_true",
                        help="operator benchmark: skip standalone mode's time for the same "
                             "counts")
    parser.add_argument("--cluster-ingresses", type=int, default=2000,
                        help="cluster proxy benchmark: Ingresses, TLS Secrets and Services (5 "
                             "endpoints each) when measuring start-up and RSS")
    parser.add_argument("--changes", type=int, default=100,
                        help="cluster proxy benchmark: changes of each kind for the latency")
    parser.add_argument("--rounds", type=int, default=2,
                        help="cluster proxy benchmark: throughput rounds of each feed")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/")
    parser.add_argument("--baseline-certop", type=Path, metavar="PATH",
                        help="another build's certop executable, measured in the same run as "
                             "the proxy peer certop-baseline (before/after comparisons)")
    parser.add_argument("--requests", type=int, default=3000,
                        help="requests counted per build by the instructions benchmark")
    args = parser.parse_args()
    command = "make bench" if len(sys.argv) == 1 else "bench/run.py " + " ".join(sys.argv[1:])
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if args.only in (None, "issuance"):
        results = run(args)
        (out / "issuance.json").write_text(json.dumps(results, indent=2))
        section = render(results, command)
        print(section)
        text = _replace(text, BEGIN, END, section)
        if not args.no_doc:
            plot.issuance_svg(results, ROOT / "docs" / "benchmarks-issuance.svg")
    if args.only in (None, "dns01"):
        work = Path(tempfile.mkdtemp(prefix="certop-bench-dns01-"))
        try:
            dresults = dns01.run(work, Path(sys.executable).with_name("certop"),
                                 args.dns01_tools.split(","), args.dns01_runs, args.dns01_count)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (out / "dns01.json").write_text(json.dumps(dresults, indent=2))
        section = render_dns01(dresults, command)
        print(section)
        text = _replace(text, DNS01_BEGIN, DNS01_END, section)
    if args.only in (None, "proxy"):
        work = Path(tempfile.mkdtemp(prefix="certop-bench-proxy-"))
        try:
            peers = args.proxies.split(",")
            if args.baseline_certop is not None and "certop-baseline" not in peers:
                peers.insert(1, "certop-baseline")
            presults = proxy.run_all(work, Path(sys.executable).with_name("certop"),
                                     args.seconds, peers, args.baseline_certop)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (out / "proxy.json").write_text(json.dumps(presults, indent=2))
        section = render_proxy(presults, command)
        print(section)
        text = _replace(text, PROXY_BEGIN, PROXY_END, section)
        if not args.no_doc:
            plot.proxy_svg(presults, ROOT / "docs" / "benchmarks-proxy.svg")
    if args.only in (None, "handshakes"):
        work = Path(tempfile.mkdtemp(prefix="certop-bench-hs-"))
        try:
            hresults = proxy.run_handshakes(work, Path(sys.executable).with_name("certop"),
                                            args.seconds, args.proxies.split(","))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (out / "handshakes.json").write_text(json.dumps(hresults, indent=2))
        section = render_handshakes(hresults, args.seconds, command)
        print(section)
        text = _replace(text, HANDSHAKES_BEGIN, HANDSHAKES_END, section)
    if args.only in (None, "instructions"):
        if shutil.which("valgrind") is None:
            raise SystemExit("bench: valgrind is missing: run `make bench`, which installs it")
        work = Path(tempfile.mkdtemp(prefix="certop-bench-instr-"))
        builds = {"certop": Path(sys.executable)}
        if args.baseline_certop is not None:
            builds["certop-baseline"] = args.baseline_certop.with_name("python")
        try:
            iresults = instructions.run_all(work, builds, args.requests)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (out / "instructions.json").write_text(json.dumps(iresults, indent=2))
        section = render_instructions(iresults, args.requests, command)
        print(section)
        text = _replace(text, INSTRUCTIONS_BEGIN, INSTRUCTIONS_END, section)
    if args.only in (None, "operator"):
        print(f"bench: operator: {args.ingresses} Ingresses", flush=True)
        command_line = [sys.executable, str(HERE / "operator.py"), "--sizes", args.ingresses]
        if args.no_standalone:
            command_line.append("--no-standalone")
        out_json = subprocess.run(command_line, stdout=subprocess.PIPE, text=True,
                                  check=True).stdout.strip().splitlines()[-1]
        oresults = json.loads(out_json)
        (out / "operator.json").write_text(json.dumps(oresults, indent=2))
        section = render_operator(oresults, command)
        print(section)
        text = _replace(text, OPERATOR_BEGIN, OPERATOR_END, section)
        plot.operator_svg(oresults, out / "operator.svg")
        if not args.no_doc:
            plot.operator_svg(oresults, ROOT / "docs" / "benchmarks-operator.svg")
    if args.only in (None, "cluster-proxy"):
        print(f"bench: cluster-proxy: {args.cluster_ingresses} Ingresses", flush=True)
        out_json = subprocess.run(
            [sys.executable, str(HERE / "cluster_proxy.py"), "--ingresses",
             str(args.cluster_ingresses), "--changes", str(args.changes), "--seconds",
             str(args.seconds), "--rounds", str(args.rounds), "--requests",
             str(args.requests)],
            stdout=subprocess.PIPE, text=True, check=True).stdout.strip().splitlines()[-1]
        cresults = json.loads(out_json)
        (out / "cluster-proxy.json").write_text(json.dumps(cresults, indent=2))
        section = render_cluster_proxy(cresults, command)
        print(section)
        text = _replace(text, CLUSTER_PROXY_BEGIN, CLUSTER_PROXY_END, section)
    if args.only in (None, "image"):
        work = Path(tempfile.mkdtemp(prefix="certop-bench-image-"))
        try:
            iresults = container.run(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        (out / "image.json").write_text(json.dumps(iresults, indent=2))
        section = render_image(iresults, command)
        print(section)
        text = _replace(text, IMAGE_BEGIN, IMAGE_END, section)
    if not args.no_doc:
        DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: run the side-by-side benchmarks and update docs/benchmarks.md.

Issuance (this issue): certop standalone vs. lego, certbot and Caddy against one local Pebble,
time to one certificate (median of --runs) and total time for each of --sizes hosts, all in the
same run so the ratios compare like with like. Results also go to bench/results/*.json.

Usage: bench/run.py [--runs 5] [--sizes 20,100] [--tools certop,lego,certbot,caddy]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "pebble")]

import issuance  # noqa: E402
import pebblectl  # noqa: E402
import plot  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- issuance:begin -->"
END = "<!-- issuance:end -->"


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="20,100")
    parser.add_argument("--tools", default="certop,lego,certbot,caddy")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/")
    args = parser.parse_args()
    command = "make bench" if len(sys.argv) == 1 else "bench/run.py " + " ".join(sys.argv[1:])
    results = run(args)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "issuance.json").write_text(json.dumps(results, indent=2))
    section = render(results, command)
    print(section)
    if not args.no_doc:
        text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
        start, end = text.index(BEGIN), text.index(END) + len(END)
        DOC.write_text(text[:start] + section + text[end:])
        plot.issuance_svg(results, ROOT / "docs" / "benchmarks-issuance.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())

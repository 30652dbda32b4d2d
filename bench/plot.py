"""Small SVG charts for docs/benchmarks.md (no plotting library needed)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

COLORS = {"certop": "#2b8a3e", "lego": "#1971c2", "certbot": "#e8590c", "caddy": "#7048e8"}


def _bars(path: Path, title: str, width_total: int, height: int, left: int, bar: int,
          gap: int, groups: list[tuple[str, list[tuple[str, float | None, str]]]],
          x: Callable[[float], float], colors: dict[str, str],
          extra: list[str] | None = None) -> None:
    """Grouped horizontal bars: per group a label, then one bar per (tool, value, text);
    a value of None leaves its row empty."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width_total}" '
             f'height="{height}" font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="18" font-weight="bold">{title}</text>', *(extra or [])]
    y = 36
    for label, rows in groups:
        parts.append(f'<text x="8" y="{y + len(rows) * bar / 2 + 4}">{label}</text>')
        for tool, value, text in rows:
            if value is not None:
                parts.append(f'<rect x="{left}" y="{y}" width="{x(value) - left:.1f}" '
                             f'height="{bar - 2}" fill="{colors.get(tool, "#888")}"/>')
                parts.append(f'<text x="{x(value) + 4:.1f}" y="{y + bar - 4}">{tool} '
                             f'{text}</text>')
            y += bar
        y += gap
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def issuance_svg(results: dict[str, object], path: Path) -> None:
    """Grouped horizontal bars: seconds per tool for one certificate and each host count,
    on a log scale (the tools differ by orders of magnitude)."""
    table = results["tools"]
    sizes = results["sizes"]
    assert isinstance(table, dict) and isinstance(sizes, list)
    groups = [("1 host (median)", "one_median")] + [(f"{n} hosts", f"total_{n}") for n in sizes]
    values = [row[key] for row in table.values() for _, key in groups if row.get(key)]
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    left, width, bar, gap = 130, 520, 14, 12
    tools = list(table)
    height = 40 + len(groups) * (len(tools) * bar + gap) + 30

    def x(v: float) -> float:
        return left + width * (math.log10(v) - math.log10(lo)) / (math.log10(hi) -
                                                                   math.log10(lo))

    grid = []
    decade = lo
    while decade <= hi:
        grid.append(f'<line x1="{x(decade):.1f}" y1="28" x2="{x(decade):.1f}" '
                    f'y2="{height - 25}" stroke="#ddd"/>')
        grid.append(f'<text x="{x(decade):.1f}" y="{height - 10}" text-anchor="middle">'
                    f'{decade:g}</text>')
        decade *= 10
    rows = [(label, [(tool, table[tool].get(key) or None, f"{table[tool].get(key) or 0:.2f}")
                     for tool in tools]) for label, key in groups]
    _bars(path, "Time to valid certificates (seconds, log scale; shorter is better)",
          left + width + 90, height, left, bar, gap, rows, x, COLORS, grid)


def proxy_svg(results: dict[str, object], path: Path) -> None:
    """Grouped horizontal bars: requests/s per proxy for each scenario (linear scale)."""
    table = results["proxies"]
    assert isinstance(table, dict)
    scenarios = [("http_keepalive", "HTTP keep-alive"), ("https_keepalive", "HTTPS keep-alive"),
                 ("https_new_connections", "new TLS conn.")]
    tools = list(table)
    hi = max(table[t][k]["rps"] for t in tools for k, _ in scenarios) or 1.0
    left, width, bar, gap = 130, 520, 14, 12
    height = 40 + len(scenarios) * (len(tools) * bar + gap) + 10
    colors = {"certop": "#2b8a3e", "nginx": "#1971c2", "haproxy": "#e8590c",
              "caddy": "#7048e8", "certop-baseline": "#8ce99a"}
    rows = [(label, [(tool, float(table[tool][key]["rps"]),
                      f"{float(table[tool][key]['rps']):,.0f}") for tool in tools])
            for key, label in scenarios]
    _bars(path, "Requests per second, one core (longer is better)", left + width + 140,
          height, left, bar, gap, rows, lambda v: left + width * v / hi, colors)


def operator_svg(results: dict[str, object], path: Path) -> None:
    """Seconds until all Ready against the Ingress count (linear axes, so straight lines are
    linear cost): the operator and, where measured, standalone mode for the same count."""
    runs = results["runs"]
    assert isinstance(runs, list)
    series = {"operator": [(float(r["count"]), float(r["ready_seconds"])) for r in runs],
              "standalone": [(float(r["count"]), float(r["standalone_seconds"]))
                             for r in runs if r.get("standalone_seconds")]}
    points = [p for line in series.values() for p in line]
    hi_x = max(x for x, _ in points) or 1.0
    hi_y = max(y for _, y in points) or 1.0
    left, top, width, height = 70, 40, 520, 300

    def at(x: float, y: float) -> tuple[float, float]:
        return left + width * x / hi_x, top + height - height * y / hi_y

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 130}" '
             f'height="{top + height + 50}" font-family="sans-serif" font-size="12">',
             f'<text x="{left}" y="18" font-weight="bold">Seconds until every certificate is '
             'Ready, by Ingress count (lower is better)</text>',
             f'<line x1="{left}" y1="{top + height}" x2="{left + width}" y2="{top + height}" '
             'stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + height}" stroke="#888"/>',
             f'<text x="{left - 8}" y="{top + 4}" text-anchor="end">{hi_y:.0f} s</text>',
             f'<text x="{left - 8}" y="{top + height + 4}" text-anchor="end">0</text>']
    for x, _ in series["operator"]:
        px, _ = at(x, 0)
        parts.append(f'<text x="{px:.1f}" y="{top + height + 18}" text-anchor="middle">'
                     f'{x:.0f}</text>')
    colors = {"operator": "#2b8a3e", "standalone": "#1971c2"}
    for name, line in series.items():
        if not line:
            continue
        xy = [at(x, y) for x, y in sorted(line)]
        parts.append(f'<polyline fill="none" stroke="{colors[name]}" stroke-width="2" '
                     f'points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in xy)}"/>')
        for (px, py), (_, y) in zip(xy, sorted(line), strict=True):
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colors[name]}"/>')
            parts.append(f'<text x="{px + 5:.1f}" y="{py - 5:.1f}">{y:.0f} s</text>')
        px, py = xy[-1]
        parts.append(f'<text x="{px + 8:.1f}" y="{py + 14:.1f}" fill="{colors[name]}">'
                     f'{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")

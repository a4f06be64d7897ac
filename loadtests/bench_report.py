"""The benchmark's write-up: medians per system, ratio tables, docs/benchmarks.md, the plot.

Rows are perf_analyzer results in the anchors' ``raw.jsonl`` schema: ``system``,
``model``, ``concurrency``, ``rep``, ``throughput`` (infer/s), ``p50_us``, ``p99_us``,
``server_cores``, ``rc``, ``cmd``.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests import plots

GATEWAY = "gateway"
REFERENCES = (("bare-ort", "bare"), ("mlserver-pw0", "MLServer"))

SYSTEM_NAMES = {
    "gateway": "gateway: serving core (request log off)",
    "gateway-uvloop": "gateway: serving core on uvloop",
    "gateway-full": "gateway: A/B 50/50 + request log 100 % with payloads",
    "gateway-shadow": "gateway: request log + 20 % shadow to a second version",
    "mlserver-pw0": "MLServer 1.7.1, parallel_workers=0",
    "mlserver-pw1": "MLServer 1.7.1, parallel_workers=1 (default)",
    "mlserver-pw2": "MLServer 1.7.1, parallel_workers=2",
    "bare-ort": "bare grpc.aio + ORT inline (asyncio)",
    "bare-ort-uvloop": "bare grpc.aio + ORT inline (uvloop)",
    "bare-canned": "bare grpc.aio, canned response (asyncio)",
    "bare-canned-uvloop": "bare grpc.aio, canned response (uvloop)",
}


@dataclass(frozen=True)
class Cell:
    """Median of the repetitions of one system x model x concurrency."""

    throughput: float
    p50_us: float
    p99_us: float
    server_cores: float | None
    runs: int
    failed: int
    all_throughputs: tuple[float, ...]


Key = tuple[str, str, int]


def medians(rows: Iterable[Mapping[str, Any]]) -> dict[Key, Cell]:
    """Group rows by (system, model, concurrency); runs without a throughput count as failed."""
    groups: dict[Key, list[Mapping[str, Any]]] = {}
    for row in rows:
        if str(row.get("tool", "pa")) != "pa":
            continue
        key = (str(row["system"]), str(row["model"]), int(row["concurrency"]))
        groups.setdefault(key, []).append(row)
    out = {}
    for key, group in groups.items():
        good = [r for r in group if r.get("throughput") is not None]
        if not good:
            continue
        cores = [float(r["server_cores"]) for r in good if r.get("server_cores") is not None]
        out[key] = Cell(
            throughput=statistics.median(float(r["throughput"]) for r in good),
            p50_us=statistics.median(float(r["p50_us"]) for r in good),
            p99_us=statistics.median(float(r["p99_us"]) for r in good),
            server_cores=statistics.median(cores) if cores else None,
            runs=len(good),
            failed=len(group) - len(good),
            all_throughputs=tuple(round(float(r["throughput"])) for r in good),
        )
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or not b else f"{a / b:.2f}"


def figures_table(
    cells: Mapping[Key, Cell], systems: Sequence[str], models: Sequence[str], concs: Sequence[int]
) -> list[str]:
    head = (
        "| system | model | "
        + " | ".join(f"c={c} infer/s | c={c} p50 / p99 µs" for c in concs)
        + " | server cores at c=8 |"
    )
    lines = [head, "|" + "---|" * (3 + 2 * len(concs))]
    for system in systems:
        for model in models:
            if not any((system, model, c) in cells for c in concs):
                continue
            parts = []
            for c in concs:
                cell = cells.get((system, model, c))
                parts += (
                    ["–", "–"]
                    if cell is None
                    else [f"{cell.throughput:,.0f}", f"{cell.p50_us:,.0f} / {cell.p99_us:,.0f}"]
                )
            c8 = cells.get((system, model, 8))
            cores = "–" if c8 is None or c8.server_cores is None else f"{c8.server_cores:.2f}"
            lines.append(
                f"| {SYSTEM_NAMES.get(system, system)} | {model} | "
                + " | ".join(parts)
                + f" | {cores} |"
            )
    return lines


def ratio_table(
    cells: Mapping[Key, Cell], reference: str, models: Sequence[str], concs: Sequence[int],
    system: str = GATEWAY,
) -> list[str]:
    """system / reference: throughput ratio (higher is better) and p50, p99 ratios (lower)."""
    lines = [
        "| model | " + " | ".join(f"c={c} infer/s | c={c} p50 | c={c} p99" for c in concs) + " |",
        "|" + "---|" * (1 + 3 * len(concs)),
    ]
    for model in models:
        parts = []
        for c in concs:
            gw, ref = cells.get((system, model, c)), cells.get((reference, model, c))
            if gw is None or ref is None:
                parts += ["–"] * 3
            else:
                parts += [
                    _ratio(gw.throughput, ref.throughput),
                    _ratio(gw.p50_us, ref.p50_us),
                    _ratio(gw.p99_us, ref.p99_us),
                ]
        lines.append(f"| {model} | " + " | ".join(parts) + " |")
    return lines


def render(
    *,
    cells: Mapping[Key, Cell],
    systems: Sequence[str],
    models: Sequence[str],
    concs: Sequence[int],
    when: str,
    machine: Mapping[str, str],
    commands: Sequence[str],
    notes: Sequence[str],
    mode: str,
    duration_s: float,
    plot_name: str,
) -> str:
    """docs/benchmarks.md."""
    out = [
        "# Benchmarks: the gateway against reference V2 servers",
        "",
        f"Generated by `python -m loadtests.bench --{mode}` (`make bench`"
        f"{'' if mode == 'quick' else '-full'}) on {when}; the sitting took "
        f"{duration_s / 60:.1f} min. All systems were measured in this one sitting, on the "
        "same machine, with the same perf_analyzer settings, one after another; machines "
        "like this one drift ±5–15 % between sittings, so read the **ratios**, not the "
        "absolute figures, and treat differences under ~10 % as noise.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in machine.items()],
        "",
        "## Figures",
        "",
        "perf_analyzer over gRPC on loopback, one row per request (`--shape input:1,20`), "
        "median over the repetitions; latencies are client-side. The load generator ran on "
        "the same cores as the server.",
        "",
        *figures_table(cells, systems, models, concs),
        "",
    ]
    out += [
        "## Headline ratios",
        "",
        "Each gateway configuration divided by the bare grpc.aio + onnxruntime server and by "
        "MLServer, same model, same sitting (p50: below 1 is better; throughput: above 1).",
        "",
        *headline_table(cells, systems, models),
        "",
    ]
    for reference, name in REFERENCES:
        out += [
            f"## Ratios gateway (serving core) / {name} (`{reference}`)",
            "",
            "Throughput: above 1 is better; latency: below 1 is better.",
            "",
            *ratio_table(cells, reference, models, concs),
            "",
        ]
    out += [f"![throughput and p99 latency per system]({plot_name})", "", "## Runs", ""]
    for (system, model, c), cell in sorted(cells.items()):
        extra = f", {cell.failed} failed" if cell.failed else ""
        out.append(f"- {system} {model} c={c}: infer/s per run {list(cell.all_throughputs)}{extra}")
    out += ["", "## Exact commands", "", "```", *commands, "```", ""]
    if notes:
        out += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(out)


def headline_table(
    cells: Mapping[Key, Cell], systems: Sequence[str], models: Sequence[str]
) -> list[str]:
    """Every gateway configuration against the targets' references, in one table."""
    lines = [
        "| gateway configuration | model | c=1 p50 / bare | c=8 infer/s / bare | "
        "c=32 infer/s / bare | c=8 infer/s / MLServer | c=32 infer/s / MLServer |",
        "|---|---|---|---|---|---|---|",
    ]
    bare, mls = REFERENCES[0][0], REFERENCES[1][0]

    def ratio(system: str, reference: str, model: str, c: int, p50: bool = False) -> str:
        a, b = cells.get((system, model, c)), cells.get((reference, model, c))
        if a is None or b is None:
            return "–"
        return _ratio(a.p50_us, b.p50_us) if p50 else _ratio(a.throughput, b.throughput)

    for system in systems:
        if not system.startswith(GATEWAY):
            continue
        for model in models:
            lines.append(
                f"| {SYSTEM_NAMES.get(system, system)} | {model} | "
                f"{ratio(system, bare, model, 1, p50=True)} | {ratio(system, bare, model, 8)} | "
                f"{ratio(system, bare, model, 32)} | {ratio(system, mls, model, 8)} | "
                f"{ratio(system, mls, model, 32)} |"
            )
    return lines


def plot(
    cells: Mapping[Key, Cell],
    systems: Sequence[str],
    models: Sequence[str],
    concs: Sequence[int],
    path: str | os.PathLike[str],
) -> Path:
    """Grouped bars per (model, concurrency) for every system: throughput, then p99."""
    groups = [f"{m} c={c}" for m in models for c in concs]
    present = [s for s in systems if any(k[0] == s for k in cells)]

    def series(value: Callable[[Cell], float]) -> dict[str, list[float | None]]:
        return {
            s: [
                value(cells[(s, m, c)]) if (s, m, c) in cells else None
                for m in models
                for c in concs
            ]
            for s in present
        }

    return plots.grouped_bars(
        groups,
        [
            ("infer/s (median)", series(lambda cell: cell.throughput)),
            ("p99 latency (ms)", series(lambda cell: cell.p99_us / 1000)),
        ],
        path,
        title="perf_analyzer, same sitting: throughput (top) and p99 latency (bottom)",
    )

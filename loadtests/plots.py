"""PNG plots of results (matplotlib's object API on the Agg canvas; no pyplot state)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(target, dpi=110)
    return target


def _mark_events(axes: Sequence[Any], events: Sequence[dict[str, Any]]) -> None:
    for i, event in enumerate(events):
        for ax in axes:
            ax.axvline(event["t_s"], color="tab:red", linestyle="--", linewidth=0.9, alpha=0.8)
        label = event["label"] if len(event["label"]) <= 40 else event["label"][:37] + "..."
        note = axes[0].annotate(
            label,
            xy=(event["t_s"], 0.98 if i % 2 == 0 else 0.5),  # neighbours must not overlap
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="tab:red",
        )
        note.set_in_layout(False)  # long labels must not squeeze the axes


def _latency_scale(ax: Any) -> None:
    """Log scale only when latencies span more than ~1.5 decades (stalls, overload)."""
    values = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
    if values and max(values) / min(values) > 30:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
    else:
        ax.set_ylim(bottom=0)


def timeline(runs: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Throughput and p50/p99 latency per window over time; events as dashed lines.

    Several runs (e.g. ``compare``) are overlaid, one colour each.
    """
    fig = Figure(figsize=(10, 6.5), layout="constrained")
    ax_tp, ax_lat = fig.subplots(2, 1, sharex=True)
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"
        label = run["label"] if len(runs) > 1 else None
        # A sliver of a window at the end (requests draining after the deadline) has a
        # meaningless rate; the JSON keeps it, the plot leaves it out.
        windows = [w for w in run["windows"] if w["length_s"] >= 0.5 * run["window_s"]]
        t = [w["t_s"] + w["length_s"] / 2 for w in windows]
        ax_tp.plot(t, [w["throughput_rps"] for w in windows], color=colour, label=label, marker=".")
        if any(w["errors"] for w in windows):
            ax_tp.plot(
                t,
                [w["error_rps"] for w in windows],
                color=colour,
                linestyle=":",
                label=f"{run['label']} errors",
            )
        lat = [(x, w) for x, w in zip(t, windows, strict=True) if w["p50_us"] is not None]
        ax_lat.plot(
            [x for x, _ in lat],
            [w["p50_us"] / 1000 for _, w in lat],
            color=colour,
            linestyle="-",
            label=f"{run['label']} p50" if label else "p50",
        )
        ax_lat.plot(
            [x for x, _ in lat],
            [w["p99_us"] / 1000 for _, w in lat],
            color=colour,
            linestyle="--",
            label=f"{run['label']} p99" if label else "p99",
        )
    ax_tp.set_ylabel("requests/s (ok)")
    ax_tp.set_ylim(bottom=0)
    ax_lat.set_ylabel("latency (ms)")
    _latency_scale(ax_lat)
    ax_lat.set_xlabel("time since start of measurement (s)")
    if runs:
        _mark_events([ax_tp, ax_lat], runs[0]["events"] if len(runs) == 1 else [])
    for ax in (ax_tp, ax_lat):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or (runs[0]["label"] if runs else ""))
    return _save(fig, path)


def sweep(points: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Throughput and latency against concurrency (``points``: concurrency, rps, p50/p99 µs)."""
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax_tp, ax_lat = fig.subplots(1, 2)
    conc = [p["concurrency"] for p in points]
    ax_tp.plot(conc, [p["throughput_rps"] for p in points], marker="o")
    ax_tp.set_xscale("log", base=2)
    ax_tp.set_xlabel("concurrency")
    ax_tp.set_ylabel("requests/s (ok)")
    ax_tp.set_ylim(bottom=0)
    for key, style in (("p50_us", "-o"), ("p99_us", "--s")):
        ax_lat.plot(conc, [(p[key] or 0) / 1000 for p in points], style, label=key[:-3])
    ax_lat.set_xscale("log", base=2)
    _latency_scale(ax_lat)
    ax_lat.set_xlabel("concurrency")
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.legend()
    for ax in (ax_tp, ax_lat):
        ax.grid(True, alpha=0.3)
        ax.set_xticks(conc, [str(c) for c in conc])
    fig.suptitle(title or "throughput and latency vs concurrency")
    return _save(fig, path)


def grouped_bars(
    groups: Sequence[str],
    panels: Sequence[tuple[str, Mapping[str, Sequence[float | None]]]],
    path: str | os.PathLike[str],
    *,
    title: str,
) -> Path:
    """One bar chart per panel (ylabel, {series: values per group}); None values are left out."""
    fig = Figure(figsize=(10, 4.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (ylabel, series) in zip(axes, panels, strict=True):
        width = 0.8 / max(len(series), 1)
        for i, (name, values) in enumerate(series.items()):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            pairs = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
            ax.bar(
                [x for x, _ in pairs],
                [v for _, v in pairs],
                width=width,
                label=name,
                color=f"C{i % 10}",
            )
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)

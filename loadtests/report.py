"""Results as data: the JSON run report, client-saturation checks, terminal tables.

JSON result document (``--output``), schema ``loadtests.result/1``::

    {"schema", "scenario", "created_at", "command", "host": {...},
     "workload": {"model", "model_version", "inputs": [{name, datatype, shape}],
                  "payload": {...}, "pool_size", "request_bytes", "parameters"},
     "runs": [RUN, ...], "summary": {...scenario-specific...},
     "events": [{"run", "t_s", "label"}], "warnings": [str], "plots": [path]}

RUN::

    {"label", "target", "driver": {"mode": "closed", "concurrency"} |
                                  {"mode": "open", "rate", "arrival", "max_in_flight"},
     "bounds": {"max_requests", "duration_s", "warmup_s", "grace_s", "timeout_s"},
     "processes", "stopped_by": "count"|"time", "elapsed_s",
     "requests": {"sent", "completed", "ok", "errors", "incomplete", "not_sent", "warmup"},
     "throughput_rps", "achieved_rps", "offered_rps" (null for closed loop),
     "latency_us": {"count","min","mean","p50","p90","p99","p999","max"},   # successes
     "error_latency_us": {...same keys...},                                 # failures
     "errors_by_code": {"RESOURCE_EXHAUSTED": n, ...},
     "error_latency_by_code_us": {"RESOURCE_EXHAUSTED": {...same keys...}, ...},
     "versions": {"<model_version>": {"count", "share", "latency_us": {...}}},
     "window_s", "windows": [{"t_s","length_s","ok","errors","throughput_rps",
                              "error_rps","p50_us","p99_us","max_us",
                              "versions": {"<model_version>": n}}],
     "events": [{"t_s","label"}], "commands": [{...CommandOutcome...}],
     "client": {"cpu_cores", "cpu_cores_per_process": [..], "saturated", "send_lag_us": {...}},
     "histograms": {"ok": HDR-base64, "errors": {"<status>": HDR-base64}}}

Times: seconds since the start of measurement; latencies: integer microseconds.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.runner import RunResult, offered_rate
from loadtests.stats import encode_histogram, latency_summary, version_rows, window_rows

SCHEMA = "loadtests.result/1"
SATURATION_CORES = 0.85  # one process's event loop is saturated above this share of a core
LATE_SEND_US = 5_000  # open loop: a client this late (p99) is itself behind schedule


def run_report(result: RunResult) -> dict[str, Any]:
    """The RUN object of the JSON document (see the module docstring)."""
    snap, cfg = result.snapshot, result.config
    elapsed = max(snap.elapsed_s, 1e-9)
    per_process = [round(c / w, 3) if w > 0 else 0.0 for c, w in snap.cpu]
    return {
        "label": cfg.label,
        "target": cfg.target,
        "driver": cfg.plan.describe(),
        "bounds": {
            "max_requests": cfg.bounds.max_requests,
            "duration_s": cfg.bounds.duration_s,
            "warmup_s": cfg.bounds.warmup_s,
            "grace_s": cfg.bounds.grace_s,
            "timeout_s": cfg.timeout_s,
        },
        "processes": cfg.processes,
        "stopped_by": snap.stopped_by,
        "elapsed_s": round(snap.elapsed_s, 6),
        "requests": {
            "sent": snap.sent,
            "completed": snap.completed,
            "ok": snap.ok_count,
            "errors": snap.error_count,
            "incomplete": snap.incomplete,
            "not_sent": snap.not_sent,
            "warmup": snap.warmup,
        },
        "throughput_rps": round(snap.ok_count / elapsed, 3),
        "achieved_rps": round(snap.completed / elapsed, 3),
        "offered_rps": offered_rate(cfg.plan),
        "latency_us": latency_summary(snap.ok),
        "error_latency_us": latency_summary(snap.error_latency()),
        "errors_by_code": snap.error_counts(),
        "error_latency_by_code_us": {c: latency_summary(h) for c, h in sorted(snap.errors.items())},
        "versions": version_rows(snap),
        "window_s": cfg.window_s,
        "windows": window_rows(snap, cfg.window_s),
        "events": [e.as_dict() for e in result.events],
        "commands": [c.as_dict() for c in result.commands],
        "client": {
            "cpu_cores": round(sum(per_process), 3),
            "cpu_cores_per_process": per_process,
            "saturated": any(c > SATURATION_CORES for c in per_process),
            "send_lag_us": latency_summary(snap.send_lag),
        },
        "histograms": {
            "ok": encode_histogram(snap.ok),
            "errors": {c: encode_histogram(h) for c, h in sorted(snap.errors.items())},
        },
    }


def run_warnings(run: dict[str, Any]) -> list[str]:
    """Things that make a run's numbers suspect, in words."""
    out = []
    client = run["client"]
    if client["saturated"]:
        busiest = max(client["cpu_cores_per_process"])
        out.append(
            f"[{run['label']}] the load generator itself is saturated ({busiest:.0%} of a core in "
            f"one process, limit {SATURATION_CORES:.0%}): figures may reflect the client, not the "
            "server; add --processes or use --uvloop"
        )
    lag_p99 = client["send_lag_us"]["p99"]
    if lag_p99 is not None and lag_p99 > LATE_SEND_US:
        out.append(
            f"[{run['label']}] the client sent requests late "
            f"(send lag p99 {lag_p99 / 1000:.1f} ms): "
            "open-loop latencies count from the intended send time and include that lag; "
            "the client, not only the server, is behind (add --processes, or lower --rate)"
        )
    req = run["requests"]
    if req["incomplete"]:
        out.append(
            f"[{run['label']}] {req['incomplete']} request(s) still in flight at the hard stop"
        )
    if req["not_sent"]:
        out.append(
            f"[{run['label']}] {req['not_sent']} scheduled request(s) never sent (client behind or "
            "in-flight cap reached)"
        )
    offered = run["offered_rps"]
    if offered and run["achieved_rps"] < 0.9 * offered and not run["errors_by_code"]:
        out.append(
            f"[{run['label']}] achieved {run['achieved_rps']:.0f}/s of {offered:.0f}/s offered"
        )
    return out


def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def document(
    scenario: str,
    runs: Sequence[dict[str, Any]],
    *,
    workload: dict[str, Any],
    summary: dict[str, Any] | None = None,
    warnings: Sequence[str] = (),
    plots: Sequence[str] = (),
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The whole JSON result document for one scenario invocation."""
    return {
        "schema": SCHEMA,
        "scenario": scenario,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": list(argv if argv is not None else sys.argv),
        "host": host_info(),
        "workload": workload,
        "runs": list(runs),
        "summary": summary or {},
        "events": [{"run": r["label"], **e} for r in runs for e in r["events"]],
        "warnings": list(warnings),
        "plots": list(plots),
    }


def write_json(path: str | os.PathLike[str], doc: dict[str, Any]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(target)
    return target


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned text table; numbers right-aligned."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def run_table(runs: Sequence[dict[str, Any]]) -> str:
    """One row per run: throughput, latency percentiles (ms), errors, client CPU."""
    headers = [
        "run",
        "ok",
        "err",
        "ok/s",
        "offered/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "client cores",
        "stop",
    ]
    rows = []
    for r in runs:
        lat = r["latency_us"]
        ms = [
            None if lat[k] is None else lat[k] / 1000 for k in ("p50", "p90", "p99", "p999", "max")
        ]
        rows.append(
            [
                r["label"],
                r["requests"]["ok"],
                r["requests"]["errors"],
                r["throughput_rps"],
                r["offered_rps"],
                *ms,
                r["client"]["cpu_cores"],
                r["stopped_by"],
            ]
        )
    return table(headers, rows)


def detail_lines(run: dict[str, Any]) -> list[str]:
    """Errors by code and the per-version tally of one run, as short lines."""
    lines = []
    if run["errors_by_code"]:
        codes = ", ".join(f"{k}={v:,}" for k, v in run["errors_by_code"].items())
        err = run["error_latency_us"]
        lines.append(f"  errors: {codes} (error latency p50 {err['p50']} us, p99 {err['p99']} us)")
    for version, v in run["versions"].items():
        lat = v["latency_us"]
        lines.append(
            f"  version {version or '(empty)'}: {v['count']:,} ({v['share']:.1%}), "
            f"p50 {lat['p50']} us, p99 {lat['p99']} us"
        )
    return lines

"""What the benchmark measures besides the servers: perf_analyzer runs, CPU of process
groups and of the rest of the machine, and a description of the machine.

Linux only (reads /proc).
"""

from __future__ import annotations

import csv
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """utime+stime of every live process in process group ``pgid`` (from /proc)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


class ForeignLoad:
    """CPU used on the machine by processes that are not this benchmark's.

    Machine busy time (/proc/stat) minus this process and its reaped descendants
    (servers, perf_analyzer, the anchors' scripts): what other users of the box took
    from the sitting, in cores on average.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        busy = (user + nice + system + irq + softirq + steal) / TICK
        own = sum(
            r.ru_utime + r.ru_stime
            for r in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )
        return time.monotonic(), busy, own

    def cores(self) -> float:
        t0, busy0, own0 = self._start
        t1, busy1, own1 = self._sample()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-9)


def machine_info(pa: Path) -> dict[str, str]:
    info = {"cores": str(os.cpu_count())}
    try:
        cpu = [
            ln
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        info["cpu"] = cpu[0].split(":", 1)[1].strip() if cpu else "unknown"
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory"] = f"{int(mem) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    try:
        osr = dict(
            ln.split("=", 1) for ln in Path("/etc/os-release").read_text().splitlines() if "=" in ln
        )
        info["os"] = osr.get("PRETTY_NAME", "").strip('"')
    except OSError:
        pass
    info["kernel"] = platform.release()
    info["python (gateway, harness)"] = sys.version.split()[0]
    try:
        out = subprocess.run([str(pa), "--version"], capture_output=True, text=True, timeout=30)
        info["perf_analyzer"] = (out.stdout + out.stderr).strip().splitlines()[-1]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    return info


def perf_analyzer(
    pa: Path, target: str, model: str, c: int, prefix: Path, interval_ms: int,
    shape: str | None = "input:1,20",
) -> dict[str, Any]:
    """One perf_analyzer run, exactly as the anchors run theirs; parsed from its CSV.
    ``shape`` None: none given (a batching model's config has fixed dims without the
    batch dimension, which perf_analyzer prepends)."""
    csv_path = prefix.with_suffix(".csv")
    argv = [
        str(pa),
        "-i",
        "grpc",
        "-u",
        target,
        "-m",
        model,
        *(("--shape", shape) if shape else ()),
        "--concurrency-range",
        f"{c}:{c}",
        "-p",
        str(interval_ms),
        "-r",
        "6",
        "-f",
        str(csv_path),
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=150)
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        output, rc = "timed out after 150 s", -1
    prefix.with_suffix(".log").write_text(" ".join(argv) + "\n" + output)
    row: dict[str, Any] = {
        "rc": rc,
        "cmd": " ".join(argv),
        "unstable": "Failed to obtain stable" in output,
    }
    if csv_path.exists():
        rows = list(csv.DictReader(csv_path.open()))
        if rows:
            last = rows[-1]
            row.update(
                throughput=float(last["Inferences/Second"]),
                p50_us=float(last["p50 latency"]),
                p90_us=float(last["p90 latency"]),
                p99_us=float(last["p99 latency"]),
            )
    if "throughput" not in row:
        row["error"] = output.strip()[-500:]
    return row

"""``python -m loadtests.bench --quick|--full``: the gateway against reference servers.

One sitting, one machine, one tool: the reference servers of ``../shared/anchors``
(MLServer, bare grpc.aio servers) are measured by the anchors' own ``run_all.sh``
(which also installs their venv, perf_analyzer and the two ONNX models once), then
the gateway serves the same ``logreg.onnx`` and ``rf.onnx`` and is measured with the
same perf_analyzer settings at concurrency 1, 8 and 32. The write-up goes to
``docs/benchmarks.md`` and ``docs/bench.png``; raw rows stay in the sitting folder
``$ANCHORS_DIR/results/bench-<time>/``.

``--quick``: one repetition, 4 reference systems (≈ 9 min on 2 cores after the
one-time installs). ``--full``: three repetitions, 5 reference systems (≈ 30–40 min).
Everything listens on 127.0.0.1 only; every server runs in its own process group and
is stopped by group id; every client run is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from loadtests import bench_report, wire
from loadtests.bench_probe import ForeignLoad, group_cpu_seconds, machine_info, perf_analyzer
from loadtests.drivers import Bounds, ClosedLoop
from loadtests.errors import CommandError, LoadtestError, RunError
from loadtests.events import gateway_argv
from loadtests.runner import RunConfig, run_load
from loadtests.workload import RandomPayload, build_pool, specs_from_metadata

REPO = Path(__file__).resolve().parent.parent
MODES = {
    "quick": {"reps": 1, "systems": "mlserver-pw0,bare-ort,bare-canned,bare-ort-uvloop"},
    "full": {
        "reps": 3,
        "systems": "mlserver-pw0,mlserver-pw1,bare-ort,bare-ort-uvloop,bare-canned",
    },
}
CONCURRENCY = (1, 8, 32)  # fixed by the anchors' bench.py
PA_WINDOW_MS = 3000  # the anchors' bench.py default (-p), also used for the gateway


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _run_logged(
    argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None, timeout_s: float = 3600
) -> None:
    """Run a setup/anchor script, echoing its output to stderr and into ``log``."""
    _say("$ " + " ".join(str(a) for a in argv))
    with log.open("a") as sink:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        for line in proc.stdout:
            sink.write(line)
            sys.stderr.write(line)
            if time.monotonic() > deadline:
                _stop_group(proc)
                raise CommandError(f"{argv[0]} … overran {timeout_s:.0f}s")
        if proc.wait() != 0:
            raise CommandError(
                f"{' '.join(map(str, argv))} failed with {proc.returncode}; see {log}"
            )


def _stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            if sig == signal.SIGTERM:
                # Stragglers the leader did not take down (workers) go too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_port_file(path: Path, proc: subprocess.Popen[Any], timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunError(f"gateway exited with {proc.returncode} before writing {path}")
        if path.exists():
            try:
                return {
                    k: int(v) for k, v in json.loads(path.read_text()).items() if isinstance(v, int)
                }
            except (ValueError, json.JSONDecodeError):
                pass  # written but not complete yet
        time.sleep(0.1)
    raise RunError(f"gateway did not write {path} within {timeout_s:.0f}s")


def _has_option(argv_prefix: Sequence[str], option: str) -> bool:
    try:
        out = subprocess.run(
            [*argv_prefix, "serve", "--help"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunError(f"cannot run {argv_prefix[0]}: {exc}") from exc
    return option in out.stdout


def gateway_config(models_dir: Path, models: Sequence[str]) -> str:
    """The serving core alone, like the references: no request log."""
    return "[request_log]\nenabled = false\n\n" + "".join(
        f'[models.{m}]\nartifact = "{(models_dir / f"{m}.onnx").resolve()}"\n\n' for m in models
    )


BEGIN = "<!-- make bench: begin (generated by python -m loadtests.bench; edits are lost) -->"
END = "<!-- make bench: end -->"


def splice(existing: str, generated: str) -> str:
    """``existing`` (docs/benchmarks.md) with the sitting's section replaced, or put first.

    The sitting's headings go one level down, under the file's own title."""
    body = "\n".join("#" + line if line.startswith("#") else line
                     for line in generated.rstrip().splitlines())
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in existing and END in existing:
        head, rest = existing.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    lines = existing.splitlines()
    if lines and lines[0].startswith("# "):
        return "\n".join([lines[0], "", block, *lines[1:]]) + "\n"
    return "# Benchmarks\n\n" + block + "\n\n" + existing


def _warm_up(target: str, model: str) -> None:
    """One second of closed-loop load, like the anchors' warm-up (loadgen.py, c=8)."""
    specs = specs_from_metadata(wire.fetch_inputs(target, model))
    pool = build_pool(model, "", specs, RandomPayload(seed=0), 64)
    run_load(
        RunConfig(target, ClosedLoop(8), Bounds(1_000_000, 1.0), label=f"warm-up {model}"), pool
    )


def measure_gateway(
    argv_prefix: Sequence[str],
    sitting: Path,
    anchors: Path,
    pa: Path,
    models: Sequence[str],
    reps: int,
    interval_ms: int,
    commands: list[str],
) -> list[dict[str, Any]]:
    """Serve the anchors' models from the gateway and run perf_analyzer against it."""
    config = sitting / "gateway.toml"
    config.write_text(gateway_config(anchors / "models", models))
    port_file = sitting / "gateway-ports.json"
    # Every port on 0 (no clash with the references' fixed ports); an older gateway
    # without an admin service does not know --admin-port.
    admin = ["--admin-port", "0"] if _has_option(argv_prefix, "--admin-port") else []
    argv = [
        *argv_prefix,
        "serve",
        "--config",
        str(config),
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        *admin,
        "--data-dir",
        str(sitting / "gateway-data"),
        "--port-file",
        str(port_file),
    ]
    commands.append(
        " ".join(argv) + f"   # {config}: " + config.read_text().replace("\n", " ").strip()
    )
    _say("$ " + " ".join(argv))
    rows: list[dict[str, Any]] = []
    with (sitting / "gateway-server.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            target = f"127.0.0.1:{_wait_port_file(port_file, proc, 120)['grpc']}"
            for model in models:
                wire.wait_model_ready(target, model, timeout_s=120)
            _say(f"gateway ready on {target}")
            for model in models:
                _warm_up(target, model)
            for model in models:
                for rep in range(reps):
                    for c in CONCURRENCY:
                        cpu0, t0 = group_cpu_seconds(proc.pid), time.monotonic()
                        row = perf_analyzer(
                            pa,
                            target,
                            model,
                            c,
                            sitting / f"gateway_pa_{model}_c{c}_r{rep}",
                            interval_ms,
                        )
                        wall = time.monotonic() - t0
                        row.update(
                            system=bench_report.GATEWAY,
                            tool="pa",
                            model=model,
                            concurrency=c,
                            rep=rep,
                            batch=1,
                            wall_s=round(wall, 2),
                            server_cores=round((group_cpu_seconds(proc.pid) - cpu0) / wall, 3),
                        )
                        rows.append(row)
                        _say(
                            f"gateway {model} c={c} rep={rep}: {row.get('throughput', 0):.0f}/s "
                            f"p50={row.get('p50_us')} p99={row.get('p99_us')} rc={row['rc']}"
                        )
        finally:
            _stop_group(proc)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--quick",
        action="store_const",
        dest="mode",
        const="quick",
        help="1 repetition, 4 reference systems (make bench)",
    )
    mode.add_argument(
        "--full",
        action="store_const",
        dest="mode",
        const="full",
        help="3 repetitions, 5 reference systems (make bench-full)",
    )
    parser.add_argument(
        "--anchors-src",
        type=Path,
        default=REPO.parent / "shared" / "anchors",
        help="the anchors' scripts (default ../shared/anchors)",
    )
    parser.add_argument(
        "--anchors-dir",
        type=Path,
        default=Path(os.environ.get("ANCHORS_DIR", "/tmp/anchors")),
        help="their venv, models, perf_analyzer, results ($ANCHORS_DIR, /tmp/anchors)",
    )
    parser.add_argument(
        "--systems", help="reference systems (comma-separated, 'none' to skip); default per mode"
    )
    parser.add_argument("--models", default="logreg,rf", help="default logreg,rf")
    parser.add_argument("--reps", type=int, help="repetitions (default: 1 quick, 3 full)")
    parser.add_argument("--no-gateway", action="store_true", help="measure the references only")
    parser.add_argument(
        "--gateway-bin", help="the gateway executable (default: next to this Python)"
    )
    parser.add_argument(
        "--docs-dir",
        type=Path,
        default=REPO / "docs",
        help="where benchmarks.md and bench.png go (default docs/)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset = MODES[args.mode]
    reps = args.reps or int(preset["reps"])  # type: ignore[call-overload]
    systems = [s for s in (args.systems or str(preset["systems"])).split(",") if s and s != "none"]
    models = [m for m in args.models.split(",") if m]
    anchors, src = args.anchors_dir.resolve(), args.anchors_src.resolve()
    sitting = anchors / "results" / f"bench-{datetime.now():%Y%m%d-%H%M%S}"
    sitting.mkdir(parents=True, exist_ok=True)
    pa = anchors / "bin" / "perf_analyzer"
    log = sitting / "setup.log"
    commands: list[str] = []
    notes: list[str] = []
    started, when = time.monotonic(), datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    env = {**os.environ, "ANCHORS_DIR": str(anchors), "ANCHORS_RESULTS": str(sitting)}
    foreign = ForeignLoad()
    try:
        cmd = ["bash", str(src / "install_perf_analyzer.sh"), str(anchors)]
        _run_logged(cmd, log, env)
        commands.append(" ".join(cmd))
        if systems:
            env.update(
                REPS=str(reps), SYSTEMS=",".join(systems), MODELS=",".join(models), TOOLS="pa"
            )
            _run_logged(["bash", str(src / "run_all.sh")], log, env)
            commands.append(
                f"ANCHORS_DIR={anchors} ANCHORS_RESULTS={sitting} REPS={reps} "
                f"SYSTEMS={','.join(systems)} MODELS={','.join(models)} TOOLS=pa "
                f"bash {src / 'run_all.sh'}"
            )
        elif not all((anchors / "models" / f"{m}.onnx").exists() for m in models):
            cmd = [sys.executable, str(src / "make_models.py")]
            _run_logged(cmd, log, env)
            commands.append(f"ANCHORS_DIR={anchors} " + " ".join(cmd))
    except LoadtestError as exc:
        _say(f"error: {exc}")
        return 2
    anchor_rows = (
        [json.loads(line) for line in (sitting / "raw.jsonl").read_text().splitlines()]
        if (sitting / "raw.jsonl").exists()
        else []
    )
    commands += sorted(
        {
            r["cmd"]
            for r in anchor_rows
            if r.get("rep") == 0 and r.get("tool") == "pa" and r.get("concurrency") == 8
        }
    )
    gateway_rows: list[dict[str, Any]] = []
    status = 0
    if not args.no_gateway:
        try:
            prefix = gateway_argv(gateway_bin=args.gateway_bin)
            gateway_rows = measure_gateway(
                prefix, sitting, anchors, pa, models, reps, PA_WINDOW_MS, commands
            )
            commands += sorted(
                {r["cmd"] for r in gateway_rows if r["rep"] == 0 and r["concurrency"] == 8}
            )
        except LoadtestError as exc:
            notes.append(f"gateway not measured: {exc} (log: {sitting / 'gateway-server.log'})")
            _say(notes[-1])
            status = 1
    with (sitting / "gateway_raw.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in gateway_rows)
    failed = [r for r in anchor_rows + gateway_rows if r.get("throughput") is None]
    if failed:
        notes.append(
            f"{len(failed)} perf_analyzer run(s) gave no result (rc≠0 or unstable); "
            "left out of the medians: "
            + "; ".join(
                f"{r['system']} {r['model']} c={r['concurrency']} rc={r['rc']}" for r in failed
            )
        )
    other = foreign.cores()
    notes.append(
        f"other processes on the machine used {other:.2f} cores on average during the sitting"
        + (" — the figures are disturbed; rerun on a quiet machine" if other > 0.1 else "")
    )
    if other > 0.1:
        _say(notes[-1])
    notes.append(
        f"raw rows: {sitting}/raw.jsonl (references), {sitting}/gateway_raw.jsonl (gateway)"
    )
    cells = bench_report.medians(anchor_rows + gateway_rows)
    order = ([bench_report.GATEWAY] if not args.no_gateway else []) + systems
    args.docs_dir.mkdir(parents=True, exist_ok=True)
    bench_report.plot(cells, order, models, CONCURRENCY, args.docs_dir / "bench.png")
    text = bench_report.render(
        cells=cells,
        systems=order,
        models=models,
        concs=CONCURRENCY,
        when=when,
        machine=machine_info(pa),
        commands=commands,
        notes=notes,
        mode=args.mode,
        duration_s=time.monotonic() - started,
        plot_name="bench.png",
    )
    target = args.docs_dir / "benchmarks.md"
    target.write_text(splice(target.read_text() if target.exists() else "", text))
    _say(
        f"wrote {args.docs_dir / 'benchmarks.md'} and bench.png in "
        f"{(time.monotonic() - started) / 60:.1f} min"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())

"""``python -m loadtests.bench_batching``: dynamic batching on and off, same models, same
sitting, perf_analyzer at one concurrency (default 64).

Serves each model twice from one gateway (request log off): ``NAME`` runs every request
alone, ``NAME_batched`` has ``[models.NAME_batched.dynamic_batching]``. Models: the
compute-heavy MLP of ``loadtests.models`` (batch-1 compute ≈ the rest of a request's
serving cost) and the anchors' ``logreg`` and ``rf`` (a few µs of compute each). For the
batched model the report also gives the bound the issue sets on its p99:
``max_queue_delay_us`` + one batch's compute (the mean ``compute_infer`` of its most
frequent batch size, from ``ModelStatistics``) + the unbatched p99.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from loadtests.bench import stop_group, wait_port_file
from loadtests.bench_probe import perf_analyzer
from loadtests.events import gateway_argv
from loadtests.models import mlp_model
from loadtests.pb import grpc_service_pb2 as pb
from loadtests.pb import grpc_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent


def gateway_config(artifacts: dict[str, Path], max_batch: int, delay_us: int) -> str:
    text = "[request_log]\nenabled = false\n\n"
    for name, path in artifacts.items():
        text += f'[models.{name}]\nartifact = "{path}"\n\n'
        text += (f'[models.{name}_batched]\nartifact = "{path}"\n\n'
                 f"[models.{name}_batched.dynamic_batching]\nmax_batch_size = {max_batch}\n"
                 f"max_queue_delay_us = {delay_us}\n\n")
    return text


def batch_profile(target: str, model: str) -> tuple[dict[int, int], float | None]:
    """Executions per batch size, and the mean compute_infer (µs) of the most frequent."""
    with grpc.insecure_channel(target) as channel:
        stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
            pb.ModelStatisticsRequest(name=model), timeout=30)
    counts: dict[int, int] = {}
    means: dict[int, float] = {}
    for version in stats.model_stats:
        for b in version.batch_stats:
            counts[b.batch_size] = counts.get(b.batch_size, 0) + b.compute_infer.count
            if b.compute_infer.count:
                means[b.batch_size] = b.compute_infer.ns / b.compute_infer.count / 1000
    if not counts:
        return counts, None
    usual = max(counts, key=lambda size: counts[size])
    return counts, means.get(usual)


def render(rows: list[dict[str, Any]], args: argparse.Namespace, commands: list[str],
           when: str) -> str:
    out = [
        "# Benchmark: dynamic batching",
        "",
        f"`python -m loadtests.bench_batching` on {when}: perf_analyzer, concurrency "
        f"{args.concurrency}, `max_batch_size = {args.max_batch}`, `max_queue_delay_us = "
        f"{args.delay_us}`, request log off, one gateway serving each model with and "
        "without batching, one sitting.",
        "",
        "| model | unbatched infer/s | p50 / p99 µs | batched infer/s | p50 / p99 µs | "
        "× throughput | usual batch | its compute µs | p99 bound µs | p99 within |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["unbatched"], r["batched"]
        ok = a.get("throughput") and b.get("throughput")
        ratio = f"{b['throughput'] / a['throughput']:.2f}" if ok else "–"
        bound = r.get("p99_bound_us")
        within = "–" if bound is None or b.get("p99_us") is None else (
            "yes" if b["p99_us"] <= bound else "no")

        def fig(x: dict[str, Any]) -> tuple[str, str]:
            if x.get("throughput") is None:
                return "–", "–"
            return f"{x['throughput']:,.0f}", f"{x['p50_us']:,.0f} / {x['p99_us']:,.0f}"

        compute = r.get("batch_compute_us")
        out.append(
            f"| {r['model']} | {fig(a)[0]} | {fig(a)[1]} | {fig(b)[0]} | {fig(b)[1]} | {ratio} "
            f"| {r.get('usual_batch') or '–'} | "
            f"{'–' if compute is None else f'{compute:,.0f}'} | "
            f"{'–' if bound is None else f'{bound:,.0f}'} | {within} |")
    out += ["", "Executions per batch size (batched models):", ""]
    out += [f"- {r['model']}: {json.dumps(r['batches'])}" for r in rows]
    out += ["", "Commands:", "", "```", *commands, "```", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_batching",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors-dir", type=Path,
                        default=Path(os.environ.get("ANCHORS_DIR", "/tmp/anchors")))
    parser.add_argument("--models", default="mlp,logreg,rf")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--delay-us", type=int, default=500)
    parser.add_argument("--interval-ms", type=int, default=5000)
    parser.add_argument("--output", type=Path, help="write the Markdown report here too")
    args = parser.parse_args(argv)
    work = args.anchors_dir / "results" / f"batching-{datetime.now():%Y%m%d-%H%M%S}"
    work.mkdir(parents=True)
    pa = args.anchors_dir / "bin" / "perf_analyzer"
    artifacts: dict[str, Path] = {}
    for name in args.models.split(","):
        if name == "mlp":
            artifacts[name] = work / "mlp.onnx"
            artifacts[name].write_bytes(mlp_model())
        else:
            artifacts[name] = (args.anchors_dir / "models" / f"{name}.onnx").resolve()
    config = work / "gateway.toml"
    config.write_text(gateway_config(artifacts, args.max_batch, args.delay_us))
    ports = work / "ports.json"
    argv_ = [*gateway_argv(), "serve", "--config", str(config), "--grpc-port", "0",
             "--http-port", "0", "--admin-port", "0", "--data-dir", str(work / "data"),
             "--port-file", str(ports), "--log-level", "WARNING"]
    commands = [" ".join(argv_) + f"   # {config}: " + config.read_text().replace("\n", " ")]
    rows: list[dict[str, Any]] = []
    with (work / "server.log").open("w") as log:
        proc = subprocess.Popen(argv_, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            target = f"127.0.0.1:{wait_port_file(ports, proc, 180)['grpc']}"
            for name in artifacts:
                row: dict[str, Any] = {"model": name}
                for kind, model, shape in (("unbatched", name, "input:1,20"),
                                           ("batched", f"{name}_batched", None)):
                    started = time.monotonic()
                    row[kind] = perf_analyzer(pa, target, model, args.concurrency,
                                              work / f"{model}_c{args.concurrency}",
                                              args.interval_ms, shape=shape)
                    commands.append(row[kind]["cmd"])
                    print(f"[batching] {model}: {row[kind].get('throughput')}/s "
                          f"p99={row[kind].get('p99_us')} "
                          f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
                row["batches"], row["batch_compute_us"] = batch_profile(
                    target, f"{name}_batched")
                if row["batches"]:
                    row["usual_batch"] = max(row["batches"], key=lambda s: row["batches"][s])
                p99 = row["unbatched"].get("p99_us")
                if p99 is not None and row["batch_compute_us"] is not None:
                    row["p99_bound_us"] = args.delay_us + row["batch_compute_us"] + p99
                rows.append(row)
        finally:
            stop_group(proc)
    text = render(rows, args, commands, datetime.now().astimezone().strftime(
        "%Y-%m-%d %H:%M %Z"))
    (work / "report.md").write_text(text)
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

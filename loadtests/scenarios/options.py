"""Command-line options shared by scenarios, and turning them into run objects."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests import wire
from loadtests.drivers import Bounds, ClosedLoop, OpenLoop, Plan
from loadtests.errors import WorkloadError
from loadtests.runner import RunConfig
from loadtests.target import DEFAULT_TARGET, check_target
from loadtests.workload import (
    NpyPayload,
    PayloadSource,
    RandomPayload,
    RequestPool,
    TensorSpec,
    build_pool,
    specs_from_metadata,
)


def add_target_args(parser: argparse.ArgumentParser, *, multiple: bool = False) -> None:
    group = parser.add_argument_group("target")
    if multiple:
        group.add_argument(
            "--target",
            action="append",
            required=True,
            metavar="HOST:PORT",
            help="a V2 gRPC server; give it once per server to compare, "
            "the first one is the reference",
        )
    else:
        group.add_argument(
            "--target",
            default=DEFAULT_TARGET,
            metavar="HOST:PORT",
            help=f"the V2 gRPC server (default {DEFAULT_TARGET})",
        )
    group.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow non-loopback targets (refused by default)",
    )


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workload")
    group.add_argument("--model", required=True, help="model name")
    group.add_argument(
        "--model-version", default="", help="ask for this version (default: the server's choice)"
    )
    group.add_argument(
        "--input",
        action="append",
        metavar="NAME:DATATYPE:SHAPE",
        help="an input, e.g. input:FP32:1,20 (repeat for several); "
        "default: discovered with ModelMetadata",
    )
    group.add_argument(
        "--batch",
        type=int,
        default=1,
        help="rows per request when the discovered shape has a variable batch "
        "dimension (default 1)",
    )
    group.add_argument(
        "--payload",
        choices=("normal", "uniform"),
        default="normal",
        help="random payload distribution (default normal)",
    )
    group.add_argument(
        "--npy",
        action="append",
        metavar="[NAME=]PATH",
        help="take payload rows from a .npy file instead (NAME= for multi-input models)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed for payloads and Poisson arrivals")
    group.add_argument(
        "--pool-size",
        type=int,
        default=256,
        help="distinct pre-serialized requests, cycled (default 256)",
    )
    group.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="request parameter added to every request (int, float, true/false or string)",
    )
    group.add_argument(
        "--header",
        action="append",
        metavar="KEY=VALUE",
        help="gRPC metadata added to every request",
    )


def add_load_args(
    parser: argparse.ArgumentParser,
    *,
    open_loop: bool = True,
    duration: float = 10.0,
    timeout: float = 10.0,
    concurrency: bool = True,
) -> None:
    group = parser.add_argument_group("load and bounds")
    if concurrency:
        group.add_argument(
            "--concurrency", type=int, default=8, help="closed loop: requests in flight (default 8)"
        )
    if open_loop:
        group.add_argument(
            "--rate",
            type=float,
            default=None,
            help="open loop: requests per second (switches to the open loop)",
        )
        group.add_argument(
            "--arrival",
            choices=("constant", "poisson"),
            default="constant",
            help="open loop arrival process (default constant)",
        )
        group.add_argument(
            "--max-in-flight",
            type=int,
            default=10_000,
            help="open loop: cap on outstanding requests (default 10000)",
        )
    group.add_argument(
        "--max-requests",
        type=int,
        default=1_000_000,
        help="stop after this many measured requests (default 1000000)",
    )
    group.add_argument(
        "--duration",
        type=float,
        default=duration,
        help=f"stop sending after this many seconds of measurement (default {duration:g})",
    )
    group.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of unrecorded load before measuring (default 1)",
    )
    group.add_argument(
        "--grace",
        type=float,
        default=2.0,
        help="seconds to wait for in-flight requests after the end (default 2)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help=f"per-request gRPC deadline in seconds (default {timeout:g})",
    )
    group.add_argument(
        "--processes", type=int, default=1, help="client processes sharing the load (default 1)"
    )
    group.add_argument(
        "--channels", type=int, default=1, help="gRPC channels per process (default 1)"
    )
    group.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    group.add_argument(
        "--window", type=float, default=1.0, help="seconds per statistics window (default 1)"
    )


def add_output_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--output", type=Path, metavar="RESULTS.json", help="write the JSON result here"
    )
    group.add_argument(
        "--plot",
        type=Path,
        metavar="PLOT.png",
        help="write the plot here (default: next to --output, .png)",
    )
    group.add_argument("--no-progress", action="store_true", help="no live progress line on stderr")


def parse_value(text: str) -> wire.ParamValue:
    """``true``/``false`` -> bool, then int, then float, else the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)  # type: ignore[no-any-return]
        except ValueError:
            pass
    return text


def parse_pairs(items: list[str] | None, what: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WorkloadError(f"{what} {item!r}: expected KEY=VALUE")
        out.append((key, value))
    return out


def targets(args: argparse.Namespace) -> list[str]:
    raw = args.target if isinstance(args.target, list) else [args.target]
    return [check_target(t, allow_remote=args.allow_remote) for t in raw]


@dataclass(frozen=True)
class Workload:
    """The request pool and its description for the JSON result."""

    pool: RequestPool
    specs: list[TensorSpec]
    description: dict[str, Any]


def _payload_source(args: argparse.Namespace, specs: list[TensorSpec]) -> PayloadSource:
    if not args.npy:
        return RandomPayload(args.payload, args.seed)
    files: dict[str, Path] = {}
    for item in args.npy:
        name, sep, path = item.partition("=")
        if sep:
            files[name] = Path(path)
        elif len(specs) == 1:
            files[specs[0].name] = Path(item)
        else:
            raise WorkloadError(
                f"--npy {item!r}: the model has several inputs; use --npy NAME=PATH"
            )
    return NpyPayload(files)


def build_workload(args: argparse.Namespace, discover_from: str) -> Workload:
    """Resolve the inputs (given or discovered on ``discover_from``) and build the pool."""
    if args.input:
        specs = [TensorSpec.parse(text) for text in args.input]
        discovered = False
    else:
        infos = wire.fetch_inputs(discover_from, args.model, args.model_version)
        specs = specs_from_metadata(infos, args.batch)
        discovered = True
    source = _payload_source(args, specs)
    params = {k: parse_value(v) for k, v in parse_pairs(args.param, "--param")}
    headers = tuple((k.lower(), v) for k, v in parse_pairs(args.header, "--header"))
    pool = build_pool(
        args.model,
        args.model_version,
        specs,
        source,
        args.pool_size,
        parameters=params,
        metadata=headers,
    )
    return Workload(
        pool,
        specs,
        {
            "model": args.model,
            "model_version": args.model_version,
            "inputs": [s.as_dict() for s in specs],
            "inputs_discovered": discovered,
            "payload": source.describe(),
            "pool_size": len(pool),
            "request_bytes": pool.request_bytes,
            "parameters": params,
            "headers": [list(h) for h in headers],
        },
    )


def plan_from_args(args: argparse.Namespace) -> Plan:
    rate = getattr(args, "rate", None)
    if rate is not None:
        return OpenLoop(rate, args.arrival, args.seed, max_in_flight=args.max_in_flight)
    return ClosedLoop(args.concurrency)


def bounds_from_args(args: argparse.Namespace) -> Bounds:
    return Bounds(args.max_requests, args.duration, args.warmup, args.grace)


def config_from_args(
    args: argparse.Namespace, target: str, plan: Plan, label: str, *, processes: int | None = None
) -> RunConfig:
    return RunConfig(
        target=target,
        plan=plan,
        bounds=bounds_from_args(args),
        timeout_s=args.timeout,
        processes=args.processes if processes is None else processes,
        window_s=args.window,
        channels=args.channels,
        uvloop=args.uvloop,
        label=label,
    )


def plot_target(args: argparse.Namespace, suffix: str = "") -> Path | None:
    """Where to write the plot: --plot, else --output with .png, else nowhere."""
    base: Path | None = args.plot or (args.output.with_suffix(".png") if args.output else None)
    if base is None or not suffix:
        return base
    return base.with_name(f"{base.stem}{suffix}{base.suffix}")

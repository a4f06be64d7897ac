"""``ab``: check a running A/B test from the outside — the observed split per version
against the expected weights, and stickiness of routing keys.

Sets nothing on the server (the operator sets the policy, e.g. ``gateway traffic set
fraud 3=90 4=10 --sticky``). With ``--keys N`` each request carries a routing key from a
set of N (``parameters["routing_key"]``, or the ``x-routing-key`` header with
``--key-via header``); after the load, every request of the pool is sent again
``--probe-repeats`` times and each key must always have been served by the same version.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import grpc

from loadtests import plots, report, wire
from loadtests.errors import ConfigError
from loadtests.runner import run_load
from loadtests.scenarios import options
from loadtests.scenarios.base import Context, Outcome
from loadtests.workload import RequestExtras, RequestPool, build_pool

KEY_PARAMETER = "routing_key"
KEY_HEADER = "x-routing-key"


def parse_expect(items: list[str]) -> dict[str, float]:
    """``VERSION=WEIGHT`` items → expected shares in percent (weights are relative)."""
    weights: dict[str, float] = {}
    for item in items:
        version, sep, weight = item.partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or not version or value < 0:
            raise ConfigError(f"--expect {item!r}: expected VERSION=WEIGHT (e.g. 3=90)")
        weights[version] = value
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError("--expect: the weights add up to zero")
    return {v: 100.0 * w / total for v, w in weights.items()}


def key_of(index: int, keys: int) -> str:
    return f"ab-key-{index % keys}"


def keyed_extras(keys: int, via: str) -> Callable[[int], RequestExtras]:
    """The pool's per-request hook: request i carries key ``i mod keys``."""
    def extras(index: int) -> RequestExtras:
        key = key_of(index, keys)
        if via == "header":
            return RequestExtras(metadata=((KEY_HEADER, key),))
        return RequestExtras(parameters={KEY_PARAMETER: key})
    return extras


def check_split(observed: dict[str, dict[str, Any]], expected: dict[str, float],
                tolerance_pp: float) -> dict[str, Any]:
    rows = []
    ok = True
    for version in sorted(set(observed) | set(expected), key=_version_order):
        share = 100.0 * observed.get(version, {}).get("share", 0.0)
        want = expected.get(version, 0.0)
        within = version in expected and abs(share - want) <= tolerance_pp
        ok = ok and within
        rows.append({"version": version, "expected_pct": round(want, 3),
                     "observed_pct": round(share, 3), "delta_pp": round(share - want, 3),
                     "count": observed.get(version, {}).get("count", 0), "ok": within})
    return {"ok": ok, "tolerance_pp": tolerance_pp, "versions": rows}


def probe_stickiness(target: str, pool: RequestPool, keys: int, repeats: int,
                     timeout_s: float) -> dict[str, Any]:
    """Send the pool ``repeats`` times; which versions did each key get?"""
    seen: dict[str, set[str]] = {}
    errors = 0
    with grpc.insecure_channel(target, options=wire.CHANNEL_OPTIONS) as channel:
        infer = channel.unary_unary(wire.MODEL_INFER_METHOD, request_serializer=None,
                                    response_deserializer=wire.served_version)
        for _ in range(repeats):
            futures = [(key_of(i, keys), infer.future(payload, metadata=pool.metadata[i],
                                                      timeout=timeout_s))
                       for i, payload in enumerate(pool.payloads)]
            for key, future in futures:
                try:
                    seen.setdefault(key, set()).add(future.result())
                except grpc.RpcError:
                    errors += 1
    inconsistent = {k: sorted(v) for k, v in sorted(seen.items()) if len(v) > 1}
    return {"ok": not inconsistent and not errors, "keys": len(seen),
            "probes": repeats * len(pool), "errors": errors, "inconsistent": inconsistent,
            "assignment": {k: sorted(v)[0] for k, v in sorted(seen.items()) if len(v) == 1}}


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


class AB:
    name = "ab"
    help = "check the observed split and key stickiness of an A/B test against expectations"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        options.add_target_args(parser)
        options.add_workload_args(parser)
        options.add_load_args(parser)
        group = parser.add_argument_group("expectations")
        group.add_argument("--expect", action="append", required=True, metavar="VERSION=WEIGHT",
                           help="an expected weight (repeat per version; relative weights)")
        group.add_argument("--tolerance", type=float, default=2.0,
                           help="allowed |observed − expected| share in percentage points "
                                "(default 2)")
        group.add_argument("--keys", type=int, default=0,
                           help="routing keys per run: request i gets key i mod N; 0: none "
                                "(default)")
        group.add_argument("--key-via", choices=("param", "header"), default="param",
                           help="send the key as parameters['routing_key'] (default) or the "
                                "x-routing-key header")
        group.add_argument("--probe-repeats", type=int, default=3,
                           help="stickiness probe: times the pool is sent again (default 3)")
        options.add_output_args(parser)

    def run(self, args: argparse.Namespace, ctx: Context) -> Outcome:
        expected = parse_expect(args.expect)
        if args.keys < 0 or args.probe_repeats < 1 or args.tolerance < 0:
            raise ConfigError("--keys must be >= 0, --probe-repeats >= 1, --tolerance >= 0")
        (target,) = options.targets(args)
        workload = options.build_workload(args, target)
        pool = workload.pool
        description = dict(workload.description)
        if args.keys:
            size = max(args.pool_size, args.keys)
            pool = build_pool(args.model, args.model_version, workload.specs,
                              options._payload_source(args, workload.specs), size,
                              parameters=description["parameters"],
                              metadata=tuple(tuple(h) for h in description["headers"]),
                              per_request=keyed_extras(args.keys, args.key_via))
            description.update(pool_size=len(pool), routing_keys=args.keys,
                               key_via=args.key_via)
        plan = options.plan_from_args(args)
        config = options.config_from_args(args, target, plan, "ab")
        run = report.run_report(run_load(config, pool, progress=ctx.progress()))
        split = check_split(run["versions"], expected, args.tolerance)
        sticky: dict[str, Any] | None = None
        if args.keys:
            ctx.note(f"ab: probing stickiness of {args.keys} keys")
            sticky = probe_stickiness(target, pool, args.keys, args.probe_repeats, args.timeout)
        errors = run["requests"]["errors"]
        passed = split["ok"] and (sticky is None or sticky["ok"]) and errors == 0
        summary = {"passed": passed, "split": split, "sticky": sticky, "errors": errors}
        outcome = Outcome([run], description, summary=summary,
                          warnings=report.run_warnings(run))
        outcome.tables.append(report.run_table([run]))
        outcome.tables.append(report.table(
            ["version", "expected %", "observed %", "delta pp", "count", "ok"],
            [[r["version"], r["expected_pct"], r["observed_pct"], r["delta_pp"], r["count"],
              "yes" if r["ok"] else "NO"] for r in split["versions"]]))
        if sticky is not None:
            outcome.tables.append(
                f"stickiness: {sticky['keys']} keys, {sticky['probes']} probes, "
                f"{len(sticky['inconsistent'])} inconsistent, {sticky['errors']} errors")
        if not split["ok"]:
            outcome.warnings.append(
                f"the observed split is off by more than {args.tolerance:g} pp: "
                + ", ".join(f"{r['version']}: {r['observed_pct']:.2f}% (expected "
                            f"{r['expected_pct']:.2f}%)" for r in split["versions"]
                            if not r["ok"]))
        if sticky is not None and not sticky["ok"]:
            sample = dict(list(sticky["inconsistent"].items())[:5])
            outcome.warnings.append(
                f"{len(sticky['inconsistent'])} routing key(s) got more than one version "
                f"({sticky['errors']} probe errors): {sample}")
        if errors:
            outcome.warnings.append(f"{errors} request(s) failed")
        path = options.plot_target(args)
        if path is not None:
            outcome.plots.append(str(plots.timeline([run], path, f"ab on {target}")))
        return outcome

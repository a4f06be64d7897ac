"""``gateway traffic show|set|canary|bandit|clear``: a model's traffic policy."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli import output
from gateway.cli.client import AdminClient, admin_command
from gateway.cli.versions import version_number
from gateway.pb import admin_pb2 as pb

ARM_HEADERS = ("VERSION", "ARM", "WEIGHT", "REQUESTS", "ERRORS", "P50_MS", "P99_MS",
               "AGREEMENT", "LABELLED", "QUALITY")


def weight_pair(text: str) -> tuple[int, float]:
    """``3=90`` → (3, 90.0)."""
    version, sep, weight = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return version_number(version), float(weight)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected VERSION=WEIGHT (e.g. 3=90), got '{text}'") from None


def shadow_pair(text: str) -> tuple[int, float]:
    """``5:0.2`` → (5, 0.2)."""
    version, sep, fraction = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return version_number(version), float(fraction)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"expected VERSION:FRACTION (e.g. 5:0.2), got '{text}'") from None


def steps_list(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected percentages separated by commas (e.g. 5,25,50,100), got '{text}'"
        ) from None


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "traffic", help="show and change a model's traffic policy",
        description="Traffic policies: weighted splits (A/B/n), sticky keys, shadows, "
                    "automatic canary ramps and bandits.")
    commands = parser.add_subparsers(dest="traffic_command", required=True, metavar="COMMAND")
    show = commands.add_parser("show", parents=[common], help="policy and per-arm stats",
                               description="The policy, the canary ramp and per-arm "
                                           "statistics (requests, errors, p50/p99, shadow "
                                           "agreement, live quality).")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=show_traffic)

    split = commands.add_parser("set", parents=[common], help="set a weighted split",
                                description="Replace the policy with a split, e.g. "
                                            "`gateway traffic set fraud 3=90 4=10`.")
    split.add_argument("name", metavar="NAME")
    split.add_argument("weights", metavar="VERSION=WEIGHT", nargs="+", type=weight_pair)
    split.add_argument("--sticky", action="store_true",
                       help="the same routing key always gets the same version")
    split.add_argument("--shadow", action="append", default=[], type=shadow_pair,
                       metavar="VERSION:FRACTION", help="mirror a fraction to a version")
    split.set_defaults(func=set_traffic)

    canary = commands.add_parser("canary", parents=[common], help="start a canary ramp",
                                 description="Ramp VERSION against production step by step "
                                             "while the guards hold; the last step promotes.")
    canary.add_argument("name", metavar="NAME")
    canary.add_argument("version", metavar="VERSION", type=version_number)
    canary.add_argument("--steps", type=steps_list, default=[], help="e.g. 5,25,50,100")
    canary.add_argument("--min-requests", type=int, default=0,
                        help="candidate requests per step (default 100)")
    canary.add_argument("--min-seconds", type=float, default=0.0,
                        help="seconds per step (default 60)")
    canary.set_defaults(func=start_canary)

    bandit = commands.add_parser("bandit", parents=[common], help="start a bandit",
                                 description="Thompson sampling over VERSIONS with rewards "
                                             "from feedback.")
    bandit.add_argument("name", metavar="NAME")
    bandit.add_argument("versions", metavar="VERSION", nargs="+", type=version_number)
    bandit.add_argument("--floor", type=float, default=None,
                        help="exploration floor (default 0.1)")
    bandit.set_defaults(func=start_bandit)

    clear = commands.add_parser("clear", parents=[common], help="remove the policy",
                                description="Everything to production.")
    clear.add_argument("name", metavar="NAME")
    clear.set_defaults(func=clear_traffic)


def print_status(status: Any, args: argparse.Namespace) -> int:
    if args.json:
        output.print_json(output.to_json(status))
        return 0
    policy = status.policy if status.HasField("policy") else None
    rows = [("model", status.model), ("production", status.production or "-"),
            ("serving set", ", ".join(map(str, status.serving_set)) or "-"),
            ("policy", policy.kind if policy else "none (everything to production)")]
    if policy is not None:
        rows += [("experiment", policy.experiment_id), ("sticky", policy.sticky)]
    if status.HasField("canary"):
        c = status.canary
        rows += [("canary", f"version {c.version} vs {c.champion}: {c.status} at "
                            f"{c.steps[c.step_index]:g}% (steps "
                            f"{','.join(f'{s:g}' for s in c.steps)})"),
                 ("canary reason", c.reason or "-")]
    print(output.fields(rows))
    print()
    print(output.table(ARM_HEADERS, [(
        a.version, a.arm, f"{a.weight:.3g}", a.mirrored if a.shadow else a.requests,
        a.shadow_failed if a.shadow else a.errors, f"{a.p50_ms:.3f}", f"{a.p99_ms:.3f}",
        f"{a.agreement:.3f}" if a.has_agreement else "-", a.labelled,
        f"{a.quality:.3f}" if a.has_quality else "-") for a in status.arms]))
    return 0


@admin_command
def show_traffic(client: AdminClient, args: argparse.Namespace) -> int:
    return print_status(client.call("GetTrafficPolicy",
                                    pb.GetTrafficPolicyRequest(model=args.name)), args)


@admin_command
def set_traffic(client: AdminClient, args: argparse.Namespace) -> int:
    status = client.call("SetTrafficPolicy", pb.SetTrafficPolicyRequest(
        model=args.name, sticky=args.sticky,
        arms=[pb.TrafficArm(version=v, weight=w) for v, w in args.weights],
        shadows=[pb.TrafficShadow(version=v, fraction=f) for v, f in args.shadow]))
    return print_status(status, args)


@admin_command
def start_canary(client: AdminClient, args: argparse.Namespace) -> int:
    status = client.call("StartCanary", pb.StartCanaryRequest(
        model=args.name, version=args.version, steps=args.steps,
        min_requests=args.min_requests, min_seconds=args.min_seconds))
    return print_status(status, args)


@admin_command
def start_bandit(client: AdminClient, args: argparse.Namespace) -> int:
    request = pb.StartBanditRequest(model=args.name, versions=args.versions)
    if args.floor is not None:
        request.floor = args.floor
    return print_status(client.call("StartBandit", request), args)


@admin_command
def clear_traffic(client: AdminClient, args: argparse.Namespace) -> int:
    return print_status(client.call("ClearTrafficPolicy",
                                    pb.ClearTrafficPolicyRequest(model=args.name)), args)

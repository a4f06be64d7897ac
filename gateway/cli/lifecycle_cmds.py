"""The lifecycle's commands: ``runs list|show``, ``datasets list``, ``retrain`` and
``triggers list|set`` — clients of the admin API like every other command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from gateway.cli import output
from gateway.cli.client import AdminClient, CliError, admin_command
from gateway.pb import admin_pb2 as pb

__all__ = ["add_parsers", "parse_trigger", "step_summary"]

RUN_STATUSES = ("queued", "running", "succeeded", "rejected", "failed")
ACTIVE = ("queued", "running")
CELL = 60
POLL_S = 1.0
DEFAULT_WAIT_S = 3600.0
TRIGGER_HELP = """\
a trigger as KIND[:KEY=VALUE,...], e.g.
  interval:seconds=3600
  cron:0 3 * * *                      (a crontab expression in UTC)
  new_labels:min_labels=500
  drift:metric=psi,threshold=0.2,share=0.3,window_s=3600
  quality_drop:metric=accuracy,threshold=0.8,window_s=1800,min_labels=200
  manual
keys left out take their defaults (see docs/lifecycle.md)"""


def add_parsers(subparsers: Any, common: argparse.ArgumentParser) -> None:
    runs = subparsers.add_parser(
        "runs", help="retraining runs and their steps",
        description="Every retraining run: why it started, each step with its params, "
                    "metrics and log, and how it ended.")
    run_commands = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")
    listing = run_commands.add_parser(
        "list", parents=[common], help="list runs, newest first",
        description="Runs newest first, of one model or of all.")
    listing.add_argument("name", metavar="NAME", nargs="?", default="",
                         help="only this model's runs")
    listing.add_argument("--status", choices=RUN_STATUSES, help="only runs in this status")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.set_defaults(func=list_runs)
    show = run_commands.add_parser(
        "show", parents=[common], help="one run with every step",
        description="One run: trigger and reason, outcome, metrics, and each step "
                    "(snapshot, train, convert, evaluate, gates, register, deploy).")
    show.add_argument("id", metavar="ID", type=_positive)
    show.add_argument("--logs", action="store_true", help="print each step's log too")
    show.set_defaults(func=show_run)

    datasets = subparsers.add_parser(
        "datasets", help="training snapshots (dataset versions)",
        description="The datasets runs trained on: rows, time window, labels, content hash.")
    dataset_commands = datasets.add_subparsers(dest="datasets_command", required=True,
                                               metavar="COMMAND")
    dataset_list = dataset_commands.add_parser(
        "list", parents=[common], help="a model's dataset versions, newest first",
        description="A model's dataset versions, newest first.")
    dataset_list.add_argument("name", metavar="NAME")
    dataset_list.add_argument("--limit", type=int, default=50,
                              help="at most this many (default 50)")
    dataset_list.set_defaults(func=list_datasets)

    retrain = subparsers.add_parser(
        "retrain", parents=[common], help="start a retraining run now",
        description="Start a run of NAME now (trigger 'manual'). It snapshots the labelled "
                    "traffic, trains, converts, evaluates, applies the gates and deploys "
                    "by the model's policy. With --wait, follow it to its end: exit status "
                    "0 when it succeeded, 1 when it failed or was rejected.")
    retrain.add_argument("name", metavar="NAME")
    retrain.add_argument("--reason", default="", help="recorded on the run")
    retrain.add_argument("--wait", action="store_true", help="wait for the run to end")
    retrain.add_argument("--wait-timeout", type=float, default=DEFAULT_WAIT_S, metavar="S",
                         help=f"give up waiting after S seconds (default {DEFAULT_WAIT_S:g})")
    retrain.set_defaults(func=run_retrain)

    triggers = subparsers.add_parser(
        "triggers", help="what starts a model's runs",
        description="A model's triggers, stored in the database (the config only seeds "
                    "them once).")
    trigger_commands = triggers.add_subparsers(dest="triggers_command", required=True,
                                               metavar="COMMAND")
    trigger_list = trigger_commands.add_parser(
        "list", parents=[common], help="a model's triggers and when each fires next",
        description="A model's triggers and when each one's job runs next.")
    trigger_list.add_argument("name", metavar="NAME")
    trigger_list.set_defaults(func=list_triggers)
    trigger_set = trigger_commands.add_parser(
        "set", parents=[common], help="replace a model's triggers",
        description="Replace NAME's triggers with the ones given (survives restarts).",
        epilog=TRIGGER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    trigger_set.add_argument("name", metavar="NAME")
    trigger_set.add_argument("specs", metavar="TRIGGER", nargs="*", type=_trigger_arg)
    trigger_set.add_argument("--from-json", type=Path, metavar="FILE",
                             help="read the triggers as a JSON array of objects ('-': stdin)")
    trigger_set.add_argument("--none", action="store_true",
                             help="remove every trigger (only `gateway retrain` starts runs)")
    trigger_set.set_defaults(func=set_triggers)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_trigger(text: str) -> dict[str, Any]:
    """``KIND[:KEY=VALUE,...]`` (``cron:EXPRESSION`` for cron) as a plain trigger dict;
    ``ValueError`` naming the problem."""
    kind, _, rest = text.strip().partition(":")
    if not kind:
        raise ValueError(f"expected KIND[:KEY=VALUE,...], got '{text}'")
    spec: dict[str, Any] = {"kind": kind}
    if kind == "cron" and rest and "=" not in rest:
        spec["cron"] = rest.strip()
        return spec
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE in '{text}', got '{item}'")
        spec[key.strip()] = value.strip() if key.strip() in ("cron", "metric", "output") \
            else _scalar(value.strip())
    return spec


def _trigger_arg(text: str) -> dict[str, Any]:
    try:
        return parse_trigger(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ---------------------------------------------------------------------------- runs


def _time(ts: Any) -> str:
    return output.timestamp(ts)


def _run_row(r: pb.Run) -> tuple[Any, ...]:
    return (r.id, r.model, r.status, r.trigger, r.outcome or None,
            r.candidate_version or None, r.champion_version or None, _time(r.create_time),
            output.compact(r.reason, CELL))


@admin_command
def list_runs(client: AdminClient, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    response = client.call("ListRuns", pb.ListRunsRequest(
        model=args.name, status=args.status or "", limit=args.limit))
    if args.json:
        output.print_json([output.to_json(r) for r in response.runs])
        return 0
    print(output.table(("ID", "MODEL", "STATUS", "TRIGGER", "OUTCOME", "CANDIDATE",
                        "CHAMPION", "CREATED", "REASON"),
                       [_run_row(r) for r in response.runs]))
    return 0


def _duration(r: pb.Run) -> float | None:
    if not r.HasField("start_time") or not r.HasField("end_time"):
        return None
    seconds = (r.end_time.ToMicroseconds() - r.start_time.ToMicroseconds()) / 1e6
    return round(seconds, 1)


def _metrics(values: dict[str, Any]) -> str:
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()
             if not k.startswith("champion_")}
    return output.mapping(shown)


def step_summary(step: pb.RunStep) -> str:
    """One line about a finished step (what the run recorded in its detail)."""
    detail = output.whole(json_format.MessageToDict(step.detail))
    params = detail.get("params") or {}
    if step.name == "snapshot" and isinstance(detail.get("dataset"), dict):
        d = detail["dataset"]
        return f"dataset {d.get('id')} v{d.get('version')}: {d.get('rows')} rows, " \
               f"labels {output.mapping(d.get('label_counts') or {})}"
    if step.name == "train":
        return f"{params.get('estimator', '')} on {params.get('n_train')} rows, fit " \
               f"{_num(detail.get('train_seconds'), 2)} s"
    if step.name == "convert":
        diff = detail.get("parity_max_abs_diff")
        return f"parity max abs diff {diff:.2g}" if isinstance(diff, int | float) else ""
    if step.name == "evaluate":
        cand = detail.get("candidate") or {}
        champ = detail.get("champion") or {}
        return f"candidate auc {_num(cand.get('roc_auc'))} vs champion " \
               f"{_num(champ.get('roc_auc'))}"
    if step.name == "gates":
        report = detail.get("report") or {}
        return "passed" if report.get("passed") else "failed: " + output.compact(
            [c.get("name") for c in report.get("checks", []) if not c.get("passed")])
    if step.name == "register":
        return f"version {detail.get('version')} ({params.get('status', '')})"
    if step.name == "deploy":
        return f"{params.get('policy', '')} -> {detail.get('outcome', '')}"
    return ""


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


@admin_command
def show_run(client: AdminClient, args: argparse.Namespace) -> int:
    r = client.call("GetRun", pb.GetRunRequest(id=args.id))
    if args.json:
        output.print_json(output.to_json(r))
        return 0
    metrics = json_format.MessageToDict(r.metrics)
    print(output.fields([
        ("run", r.id), ("model", r.model), ("status", r.status),
        ("trigger", r.trigger), ("reason", r.reason), ("actor", r.actor),
        ("leader", f"{r.replica} (epoch {r.leader_epoch})" if r.leader_epoch else None),
        ("outcome", r.outcome or None), ("dataset", r.dataset_id or None),
        ("candidate", r.candidate_version or None), ("champion", r.champion_version or None),
        ("created", _time(r.create_time)), ("started", _time(r.start_time)),
        ("finished", _time(r.end_time)), ("duration_s", _duration(r)),
        ("metrics", _metrics(output.whole(metrics))),
    ]))
    if r.error:
        print(f"error:\n  {r.error.rstrip().replace(chr(10), chr(10) + '  ')}")
    if r.steps:
        print()
        print(output.table(("STEP", "STATUS", "SECONDS", "SUMMARY"), [
            (s.name, s.status, round(s.duration_s, 2) if s.HasField("end_time") else None,
             step_summary(s)) for s in r.steps]))
    if args.logs:
        for s in r.steps:
            if s.log:
                print(f"\n--- {s.name}\n{s.log.rstrip()}")
    return 0


# ------------------------------------------------------------------------- datasets


@admin_command
def list_datasets(client: AdminClient, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CliError(f"--limit must be at least 1, got {args.limit}")
    response = client.call("ListDatasets", pb.ListDatasetsRequest(model=args.name,
                                                                  limit=args.limit))
    if args.json:
        output.print_json([output.to_json(d) for d in response.datasets])
        return 0
    rows = []
    for d in response.datasets:
        window = "-"
        if d.HasField("window_start") and d.HasField("window_end"):
            window = f"{_time(d.window_start)} .. {_time(d.window_end)}"
        rows.append((d.id, d.version, d.rows, d.n_features, d.source, window,
                     output.mapping(dict(d.label_counts)), d.run_id or None,
                     _time(d.create_time), d.content_sha256[:12]))
    print(output.table(("ID", "VERSION", "ROWS", "FEATURES", "SOURCE", "WINDOW", "LABELS",
                        "RUN", "CREATED", "CONTENT"), rows))
    return 0


# -------------------------------------------------------------------------- retrain


@admin_command
def run_retrain(client: AdminClient, args: argparse.Namespace) -> int:
    r = client.call("Retrain", pb.RetrainRequest(model=args.name, reason=args.reason))
    if not args.wait:
        if args.json:
            output.print_json(output.to_json(r))
        else:
            print(f"run {r.id} of {r.model} started ({r.trigger}): {r.reason}")
        return 0
    if not args.json:
        print(f"run {r.id} of {r.model} started; waiting for it to end", flush=True)
    deadline = time.monotonic() + args.wait_timeout
    seen: set[str] = set()
    while r.status in ACTIVE:
        if time.monotonic() >= deadline:
            raise CliError(f"run {r.id} still {r.status} after {args.wait_timeout:g} s "
                           f"(it goes on; see `gateway runs show {r.id}`)")
        time.sleep(POLL_S)
        r = client.call("GetRun", pb.GetRunRequest(id=r.id))
        if not args.json:
            for step in r.steps:
                key = f"{step.position}:{step.status}"
                if step.status != "running" and key not in seen:
                    seen.add(key)
                    print(f"  {step.name:<9} {step.status:<9} {step_summary(step)}", flush=True)
    if args.json:
        output.print_json(output.to_json(r))
    else:
        what = f"run {r.id} {r.status}"
        if r.outcome:
            what += f" ({r.outcome}"
            what += f", version {r.candidate_version})" if r.candidate_version else ")"
        print(what)
    if r.status != "succeeded":
        why = r.error.splitlines()[0] if r.error else r.outcome
        print(f"gateway: error: run {r.id} {r.status}: {why}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------- triggers


def _print_triggers(listing: pb.TriggerList, args: argparse.Namespace) -> None:
    if args.json:
        output.print_json(output.to_json(listing))
        return
    if listing.revision == 0:
        print(f"{listing.model}: no triggers stored yet (the config seeds them when the "
              f"lifecycle starts)")
        return
    print(f"{listing.model}: revision {listing.revision}, set by {listing.actor} at "
          f"{_time(listing.update_time)}"
          + ("" if listing.scheduler_running else " (scheduler not running)"))
    rows = []
    for i, t in enumerate(listing.triggers):
        spec = output.whole(json_format.MessageToDict(t.spec))
        kind = spec.pop("kind", "")
        rows.append((i, kind, output.mapping(spec), t.description,
                     _time(t.next_fire_time) if t.HasField("next_fire_time") else None))
    print(output.table(("#", "KIND", "SETTINGS", "DESCRIPTION", "NEXT"), rows))


@admin_command
def list_triggers(client: AdminClient, args: argparse.Namespace) -> int:
    _print_triggers(client.call("ListTriggers", pb.ListTriggersRequest(model=args.name)), args)
    return 0


def _from_json(path: Path) -> list[dict[str, Any]]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        data = json.loads(text)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise CliError(f"{path}: expected a JSON array of trigger objects")
    return data


@admin_command
def set_triggers(client: AdminClient, args: argparse.Namespace) -> int:
    specs = list(args.specs)
    if args.from_json is not None:
        specs += _from_json(args.from_json)
    if not specs and not args.none:
        raise CliError("give the triggers (or --none to remove them all)")
    if specs and args.none:
        raise CliError("--none takes no triggers")
    request = pb.SetTriggersRequest(model=args.name)
    for spec in specs:
        request.triggers.add().update(spec)
    _print_triggers(client.call("SetTriggers", request), args)
    return 0

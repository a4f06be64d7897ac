"""The closed loop, shown: the gateway notices a shifted world, retrains, proves the new
model better, rolls it out by canary and promotes it — by itself.

    make demo                      (or: .venv/bin/python -m examples.demo)

It starts ``gateway serve`` with the demo model ``fraud`` and a lifecycle config (a drift
and a live-quality trigger, gates, a canary deploy with short steps), then drives
open-loop traffic from ``lifecycle.synthetic.FraudGenerator``. Partway, both the input
distribution and the relation between inputs and label shift; a share of the requests
gets its true label back through the FeedbackService, a little later. It prints a
timeline (traffic, live accuracy per version, input drift, the run and the trigger that
started it, its steps and gates, canary steps, promotion or abort) and a summary.

Everything goes over gRPC, like any user: inference and feedback on the inference port,
runs, events and models on the admin port. Exit status 0 when the loop closed (a run
started by a trigger after the shift, its version took over production, accuracy
recovered, no request failed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from examples.demo_clients import GatewayProcess, Served, Traffic, Watcher

__all__ = ["DemoOptions", "DemoResult", "demo_config", "main", "run_demo"]

TOKEN = "demo-operator"
MODEL = "fraud"
TRIGGERS = ("drift", "quality_drop")


@dataclass(frozen=True)
class DemoOptions:
    """``before_s`` of unshifted traffic, then the shift; once the new version took over,
    ``after_s`` more; ``deadline_s`` (from the first request) bounds the whole loop."""

    rate: float = 150.0
    before_s: float = 20.0
    after_s: float = 15.0
    deadline_s: float = 150.0
    label_share: float = 0.6
    label_delay_s: float = 1.0
    triggers: tuple[str, ...] = TRIGGERS
    deploy: str = "canary"
    canary_steps: tuple[float, ...] = (20.0, 50.0, 100.0)
    canary_min_seconds: float = 3.0
    p99_slack_ms: float = 50.0
    seed: int = 7
    report_every_s: float = 3.0
    data_dir: Path | None = None
    summary_json: Path | None = None


@dataclass
class DemoResult:
    closed: bool
    why: str
    requests: int
    failed: int
    labels_sent: int
    labels_rejected: int
    accuracy_before: tuple[float | None, int]
    accuracy_during: tuple[float | None, int]
    accuracy_after: tuple[float | None, int]
    production_before: int | None
    production_after: int | None
    run: dict[str, Any] | None
    shift_to_promotion_s: float | None
    data_dir: str
    failures: list[str] = field(default_factory=list)


def demo_config(options: DemoOptions) -> str:
    """The gateway's TOML: ``fraud`` bootstrapped, retrained by the loop."""
    triggers = []
    if "drift" in options.triggers:
        # Fires once most of the last 8 s of inputs moved (PSI > 0.2 on >= 30% of the 20
        # features, against the champion's training data).
        triggers.append('[[models.fraud.lifecycle.triggers]]\nkind = "drift"\nmetric = "psi"\n'
                        'threshold = 0.2\nshare = 0.3\nwindow_s = 8\nmin_rows = 300\n'
                        'check_every_s = 2\ncooldown_s = 600\n')
    if "quality_drop" in options.triggers:
        # Live accuracy of the champion over the last 6 s of labelled requests.
        triggers.append('[[models.fraud.lifecycle.triggers]]\nkind = "quality_drop"\n'
                        'metric = "accuracy"\nthreshold = 0.7\nwindow_s = 6\n'
                        'min_labels = 150\ncheck_every_s = 2\ncooldown_s = 600\n')
    return f"""\
[auth.tokens.demo]
token = "{TOKEN}"
role = "operator"

[lifecycle]
poll_s = 2
sweep_every_s = 5

[traffic]
canary_tick_s = 1
policy_sync_s = 1

[models.fraud]
bootstrap = "synthetic_fraud"
task = "classification"

[models.fraud.lifecycle]
estimator = "sklearn.linear_model.LogisticRegression"
params = {{C = 1.0, max_iter = 1000}}
seed = {options.seed}
# The labelled traffic of the last 7 s: by the time a trigger fires, mostly the new world.
window_s = 7
holdout_fraction = 0.25
min_rows = 200
min_per_class = 20
timeout_s = 90

[models.fraud.lifecycle.gates]
min_auc = 0.75
max_auc_drop = 0.0

[models.fraud.lifecycle.deploy]
policy = "{options.deploy}"
steps = [{", ".join(f"{s:g}" for s in options.canary_steps)}]
min_requests = 60
min_seconds = {options.canary_min_seconds:g}

[models.fraud.lifecycle.deploy.guards]
max_quality_drop = 0.05
min_labels = 30
# Generous on latency: two cores serve, train and run this client at once.
max_p99_ratio = 3.0
p99_slack_ms = {options.p99_slack_ms:g}

{chr(10).join(triggers)}"""


def _accuracy(rows: Sequence[Served]) -> tuple[float | None, int]:
    answered = [r for r in rows if r.ok]
    if not answered:
        return None, 0
    return sum(r.correct for r in answered) / len(answered), len(answered)


def _fmt(value: tuple[float | None, int]) -> str:
    acc, n = value
    return "-" if acc is None else f"{acc:.3f} (n={n})"


class _Timeline:
    def __init__(self, start: float, out: Callable[[str], None]) -> None:
        self.start = start
        self.out = out
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        line = f"[{time.monotonic() - self.start:6.1f}s] {text}"
        self.lines.append(line)
        self.out(line)


def _traffic_line(traffic: Traffic, production: int | None, window_s: float) -> str:
    now = time.monotonic()
    recent = [r for r in traffic.snapshot() if r.at >= now - window_s]
    failed = len(traffic.failures)
    by_version: dict[int, list[Served]] = {}
    for r in recent:
        if r.ok:
            by_version.setdefault(r.version, []).append(r)
    accuracy = "  ".join(f"v{v} {sum(r.correct for r in rs) / len(rs):.2f} (n={len(rs)})"
                         for v, rs in sorted(by_version.items())) or "-"
    drift = traffic.drift()
    drift_text = "-" if drift is None else f"max psi {drift[0]:.2f} ({drift[1]}/{drift[2]} > 0.2)"
    return (f"{len(recent) / window_s:5.0f} req/s  failed {failed}  production v{production}"
            f"  live accuracy {accuracy}  inputs vs the first seconds: {drift_text}")


def run_demo(options: DemoOptions, out: Callable[[str], None] = print) -> DemoResult:
    """Run the scenario (see the module docstring); the gateway is stopped at the end and
    its data directory kept (``options.data_dir``, else a temporary one)."""
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "demo.toml"
    config.write_text(demo_config(options))
    out(f"starting the gateway (data in {data_dir}; its log in {data_dir / 'gateway.log'})")
    gateway = GatewayProcess(config, data_dir).start()
    try:
        return _drive(options, gateway, out)
    finally:
        gateway.stop()


def _drive(options: DemoOptions, gateway: GatewayProcess,
           out: Callable[[str], None]) -> DemoResult:
    inference = grpc.insecure_channel(gateway.inference_target)
    admin = grpc.insecure_channel(gateway.admin_target)
    traffic = Traffic(inference, model=MODEL, rate=options.rate, seed=options.seed,
                      label_share=options.label_share, label_delay_s=options.label_delay_s)
    timeline = _Timeline(time.monotonic(), out)
    watcher = Watcher(admin, TOKEN, model=MODEL, emit=timeline)
    try:
        watcher.start()
        production_before = watcher.production
        timeline(f"serving {MODEL} version {production_before}; triggers: "
                 f"{', '.join(options.triggers)}; {options.rate:g} req/s, labels for "
                 f"{options.label_share:.0%} of them {options.label_delay_s:g} s later")
        traffic.start()
        started = time.monotonic()
        timeline.start = started
        deadline = started + options.deadline_s
        next_report = started + options.report_every_s
        closed_at: float | None = None
        run: Any = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            if traffic.shifted_at is None and now - started >= options.before_s:
                traffic.shift()
                timeline("=== SHIFT: the input distribution and the fraud pattern change ===")
            if now >= next_report:
                next_report += options.report_every_s
                timeline(_traffic_line(traffic, watcher.production, options.report_every_s))
            run = _loop_run(watcher, traffic)
            if closed_at is None and run is not None and watcher.production == \
                    run.candidate_version and run.candidate_version:
                closed_at = now
                timeline(f"loop closed: version {run.candidate_version} serves production; "
                         f"{options.after_s:g} s more traffic to measure it")
            if closed_at is not None and now - closed_at >= options.after_s:
                break
            if closed_at is None and run is not None and (
                    run.status in ("failed", "rejected")
                    or run.candidate_version in watcher.rejected):
                timeline(f"run {run.id} did not ship a version: the loop did not close")
                break
            time.sleep(0.2)
        traffic.stop()
        watcher.poll()
        run = _loop_run(watcher, traffic)
    finally:
        watcher.stop()
        inference.close()
        admin.close()
    return _result(options, gateway, traffic, watcher, run, production_before)


def _loop_run(watcher: Watcher, traffic: Traffic) -> Any:
    """The first run a trigger (not an operator) started after the shift."""
    if traffic.shifted_wall_us is None:
        return None
    shifted = traffic.shifted_wall_us
    for _, run in sorted(watcher.run_snapshot().items()):
        if run.trigger != "manual" and run.create_time.ToMicroseconds() >= shifted:
            return run
    return None


def _result(options: DemoOptions, gateway: GatewayProcess, traffic: Traffic, watcher: Watcher,
            run: Any, production_before: int | None) -> DemoResult:
    served = traffic.snapshot()
    promoted_at = watcher.production_changed_at if run is not None and \
        watcher.production == run.candidate_version else None
    before = [r for r in served if not r.shifted]
    during = [r for r in served if r.shifted and (promoted_at is None or r.at < promoted_at)]
    after = [r for r in served if promoted_at is not None and r.at >= promoted_at
             and r.version == watcher.production]
    result = DemoResult(
        closed=False, why="", requests=len(served), failed=len(traffic.failures),
        labels_sent=traffic.labels_sent, labels_rejected=traffic.labels_rejected,
        accuracy_before=_accuracy(before), accuracy_during=_accuracy(during),
        accuracy_after=_accuracy(after), production_before=production_before,
        production_after=watcher.production,
        run=None if run is None else {
            "id": run.id, "trigger": run.trigger, "reason": run.reason, "status": run.status,
            "outcome": run.outcome, "candidate_version": run.candidate_version,
            "champion_version": run.champion_version, "error": run.error},
        shift_to_promotion_s=None if promoted_at is None or traffic.shifted_at is None
        else promoted_at - traffic.shifted_at,
        data_dir=str(gateway.data_dir), failures=traffic.failures[:20])
    result.why = _verdict(result)
    result.closed = not result.why
    return result


def _verdict(r: DemoResult) -> str:
    """Empty when the loop closed; else what is missing."""
    if r.run is None:
        return "no trigger started a run after the shift"
    if r.production_after != r.run["candidate_version"] or r.production_after == \
            r.production_before:
        return f"run {r.run['id']} ended {r.run['status']} ({r.run['outcome']}); " \
               f"production is version {r.production_after}"
    if r.failed:
        return f"{r.failed} requests failed"
    during, after = r.accuracy_during[0], r.accuracy_after[0]
    if during is None or after is None or after <= during:
        return f"accuracy did not recover ({during} during the shift, {after} after)"
    return ""


def print_summary(r: DemoResult, out: Callable[[str], None] = print) -> None:
    out("")
    out("=== summary ===")
    out(f"requests {r.requests}, failed {r.failed}; labels sent {r.labels_sent}, "
        f"rejected {r.labels_rejected}")
    rows = [(f"accuracy before the shift (version {r.production_before})", r.accuracy_before),
            ("accuracy after the shift, until a new version serves", r.accuracy_during),
            (f"accuracy once version {r.production_after} took over", r.accuracy_after)]
    for label, value in rows:
        out(f"{label + ':':<56}{_fmt(value)}")
    if r.run is not None:
        out(f"run {r.run['id']}: trigger {r.run['trigger']} ({r.run['reason']})")
        out(f"        {r.run['status']}, outcome {r.run['outcome'] or '-'}, candidate "
            f"version {r.run['candidate_version'] or '-'}")
    if r.shift_to_promotion_s is not None:
        out(f"from the shift to the new production version: {r.shift_to_promotion_s:.1f} s")
    out(f"the whole history: gateway runs list {MODEL}; gateway versions list {MODEL}; "
        f"gateway events --model {MODEL}   (data in {r.data_dir})")
    out("LOOP CLOSED" if r.closed else f"LOOP NOT CLOSED: {r.why}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DemoOptions()
    parser.add_argument("--rate", type=float, default=defaults.rate, help="requests/s")
    parser.add_argument("--before", type=float, default=defaults.before_s,
                        help="seconds of traffic before the shift")
    parser.add_argument("--after", type=float, default=defaults.after_s,
                        help="seconds of traffic once the new version serves")
    parser.add_argument("--deadline", type=float, default=defaults.deadline_s,
                        help="give up after this many seconds of traffic")
    parser.add_argument("--triggers", default=",".join(defaults.triggers),
                        help="comma-separated: drift, quality_drop")
    parser.add_argument("--deploy", choices=("canary", "direct", "shadow"),
                        default=defaults.deploy, help="how the new version reaches production")
    parser.add_argument("--data-dir", type=Path, help="keep the gateway's data here")
    parser.add_argument("--summary-json", type=Path, help="also write the summary as JSON")
    args = parser.parse_args(argv)
    triggers = tuple(t for t in args.triggers.split(",") if t)
    if not triggers or set(triggers) - set(TRIGGERS):
        parser.error(f"--triggers: expected some of {', '.join(TRIGGERS)}")
    options = DemoOptions(rate=args.rate, before_s=args.before, after_s=args.after,
                          deadline_s=args.deadline, triggers=triggers, deploy=args.deploy,
                          data_dir=args.data_dir,
                          summary_json=args.summary_json)
    result = run_demo(options, lambda line: print(line, flush=True))
    print_summary(result)
    if options.summary_json is not None:
        options.summary_json.write_text(json.dumps(asdict(result), indent=2))
    return 0 if result.closed else 1


if __name__ == "__main__":
    sys.exit(main())

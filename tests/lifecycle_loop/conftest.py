"""Fixtures of the lifecycle-loop tests: a migrated SQLite database in ``tmp_path`` with
the demo model ``fraud`` (version 1, the bootstrap classifier, in production), the stores
over it, a settable clock, and a ``Retrainer`` wired with real parts. The store-level
modules (runs, triggers, datasets) override ``db_url`` with ``database_url``, so they run
on SQLite and PostgreSQL; the process-level ones (training runs) stay on SQLite."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lifecycle.artifacts import ArtifactStore
from lifecycle.bootstrap import FRAUD_SIGNATURE, DemoModel, train_fraud_demo
from lifecycle.canary import ArmStats, CanaryController
from lifecycle.datasets import DatasetStore
from lifecycle.db import Database, make_engine, migrate
from lifecycle.domain import PRODUCTION
from lifecycle.pipeline import Retrainer
from lifecycle.policies import PolicyStore
from lifecycle.registry import Registry
from lifecycle.request_store import RequestStore
from lifecycle.rollout import Agreement, Rollout
from lifecycle.runs import RunStore
from lifecycle.training import Trainer
from lifecycle.triggers import TriggerChecker, TriggerStore
from tests.lifecycle_loop.helpers import MODEL, AliasDeployer, ManualClock

START = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TEST_ESTIMATORS = "tests.lifecycle_loop.estimators."


@pytest.fixture(scope="session")
def demo() -> DemoModel:
    """The bootstrap classifier (trained at concept shift 0), built once."""
    return train_fraud_demo()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'registry.db'}"


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    engine = make_engine(db_url)
    migrate(engine)
    database = Database(engine)
    yield database
    database.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


class ScriptedAgreement:
    """An ``AgreementSource`` answering what the test sets."""

    def __init__(self) -> None:
        self.answer = Agreement()

    def agreement(self, model: str, version: int, since_us: int) -> Agreement:
        return self.answer


class NoStats:
    def arm_stats(self, model: str, experiment_id: str, since: datetime) -> dict[int, ArmStats]:
        return {}


@dataclass
class Loop:
    db: Database
    clock: ManualClock
    registry: Registry
    artifacts: ArtifactStore
    requests: RequestStore
    datasets: DatasetStore
    runs: RunStore
    policies: PolicyStore
    triggers: TriggerStore
    checker: TriggerChecker
    deployer: AliasDeployer
    agreement: ScriptedAgreement
    canary: CanaryController
    retrainer: Retrainer


@pytest.fixture
def loop(db: Database, clock: ManualClock, tmp_path: Path, demo: DemoModel) -> Loop:
    registry = Registry(db, clock=clock)
    artifacts = ArtifactStore(tmp_path / "artifacts")
    requests = RequestStore(db, clock_us=clock.us)
    datasets = DatasetStore(db, artifacts, clock=clock)
    runs = RunStore(db, clock=clock)
    policies = PolicyStore(db, clock=clock)
    deployer = AliasDeployer(registry, policies)
    agreement = ScriptedAgreement()
    canary = CanaryController(policies, registry, NoStats(), deployer)
    registry.create_model(MODEL, FRAUD_SIGNATURE, task="classification", actor="test")
    sha256, size = artifacts.put(demo.onnx_bytes)
    assert sha256 == hashlib.sha256(demo.onnx_bytes).hexdigest()
    registry.register_version(MODEL, sha256=sha256, size=size, actor="test", metadata={
        "source": "bootstrap:synthetic_fraud",
        "params": {"estimator": demo.estimator, **demo.params}})
    registry.set_alias(MODEL, PRODUCTION, 1, actor="test")
    rollout = Rollout(registry, deployer=deployer, canary=canary, policies=policies,
                      agreement=agreement, clock=clock, poll_s=0.05)
    retrainer = Retrainer(
        registry=registry, artifacts=artifacts, datasets=datasets, runs=runs,
        requests=requests, rollout=rollout, clock=clock,
        trainer=Trainer(workdir=tmp_path / "train", allowed_prefixes=("sklearn.",
                                                                       TEST_ESTIMATORS)))
    checker = TriggerChecker(registry=registry, requests=requests, runs=runs,
                             datasets=datasets, clock=clock)
    return Loop(db, clock, registry, artifacts, requests, datasets, runs, policies,
                TriggerStore(db, clock=clock), checker, deployer, agreement, canary, retrainer)

"""The configuration of one replica among several sharing a database and an artifact store:
its own id, the shared stores, a short lease and fast syncs (so takeovers and swaps happen
within a test's patience), and model ``fraud`` retrained by a direct-deploy lifecycle that
only manual retrains start."""

from __future__ import annotations

from pathlib import Path

from tests.lifecycle_loop.test_gateway_admin import AUTH

MODEL = "fraud"
LEASE_S = 2.0


def replica_config(
    root: Path, name: str, url: str, artifact: Path, *, lifecycle: bool = True,
    estimator: str = "sklearn.linear_model.LogisticRegression",
) -> Path:
    """Write ``root/<name>.toml``; the artifact store is ``root/artifacts`` for every
    replica. Estimators from ``tests.lifecycle_loop.estimators`` are allowed."""
    config = root / f"{name}.toml"
    config.write_text(AUTH + f"""
[server]
replica_id = "{name}"

[database]
url = "{url}"

[artifacts]
root = "{root / 'artifacts'}"

[traffic]
policy_sync_s = 0.2

[lifecycle]
enabled = {str(lifecycle).lower()}
poll_s = 0.5
leader_lease_s = {LEASE_S}
allowed_estimators = ["sklearn.", "tests.lifecycle_loop.estimators."]

[models.{MODEL}]
artifact = "{artifact}"

[models.{MODEL}.lifecycle]
estimator = "{estimator}"
window_s = 3600
min_rows = 100
min_per_class = 5
timeout_s = 300

[models.{MODEL}.lifecycle.gates]
max_auc_drop = 1.0

[models.{MODEL}.lifecycle.deploy]
policy = "direct"

[[models.{MODEL}.lifecycle.triggers]]
kind = "manual"
""")
    return config

"""The lifecycle loop: runs and their steps, datasets and their links to versions, triggers.

Revision ID: 0004
Revises: 0003
Create Date: 2026-05-12

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)
# On SQLite an INTEGER primary key is the rowid; BIGINT elsewhere.
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ACTIVE_RUN = "status IN ('queued', 'running')"


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), sa.ForeignKey("models.name"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        # What started it (interval, cron, new_labels, drift, quality_drop, manual) and why.
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("dataset_id", sa.BigInteger, nullable=True),
        sa.Column("candidate_version", sa.Integer, nullable=True),
        sa.Column("champion_version", sa.Integer, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("started_at", _TIME, nullable=True),
        sa.Column("finished_at", _TIME, nullable=True),
        # Refreshed while the run works; a stale one belongs to a process that died.
        sa.Column("heartbeat_at", _TIME, nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'rejected', 'failed')",
            name="ck_runs_status",
        ),
    )
    op.create_index("ix_runs_model_id", "runs", ["model", "id"])
    # At most one active run per model: the database refuses the second, whoever asks.
    op.create_index(
        "uq_runs_model_active",
        "runs",
        ["model"],
        unique=True,
        sqlite_where=sa.text(_ACTIVE_RUN),
        postgresql_where=sa.text(_ACTIVE_RUN),
    )
    op.create_table(
        "run_steps",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("finished_at", _TIME, nullable=True),
        sa.Column("duration_s", sa.Double, nullable=True),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("log", sa.Text, nullable=False),
        sa.UniqueConstraint("run_id", "position", name="uq_run_steps_run_position"),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed')", name="ck_run_steps_status"
        ),
    )
    op.create_table(
        "datasets",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), sa.ForeignKey("models.name"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        # Hash of the arrays (what the data is) and of the stored npz file (where it is).
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("n_features", sa.Integer, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("window_start_us", sa.BigInteger, nullable=True),
        sa.Column("window_end_us", sa.BigInteger, nullable=True),
        sa.Column("label_counts", sa.JSON, nullable=False),
        sa.Column("stats", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("run_id", sa.BigInteger, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.UniqueConstraint("model", "version", name="uq_datasets_model_version"),
        sa.UniqueConstraint("model", "content_sha256", name="uq_datasets_model_content"),
    )
    op.create_table(
        "dataset_links",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.BigInteger, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["model", "version"], ["versions.model", "versions.version"],
            name="fk_dataset_links_version",
        ),
    )
    op.create_table(
        "triggers",
        sa.Column("model", sa.String(128), sa.ForeignKey("models.name"), primary_key=True),
        sa.Column("specs", sa.JSON, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("triggers")
    op.drop_table("dataset_links")
    op.drop_table("datasets")
    op.drop_table("run_steps")
    op.drop_index("uq_runs_model_active", table_name="runs")
    op.drop_index("ix_runs_model_id", table_name="runs")
    op.drop_table("runs")

"""Traffic policies, canary ramps and bandit reward counts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-05-11

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # One row per model with a policy; no row means 100% production.
    op.create_table(
        "traffic_policies",
        sa.Column("model", sa.String(128), sa.ForeignKey("models.name"), primary_key=True),
        sa.Column("experiment_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.CheckConstraint(
            "kind IN ('split', 'canary', 'bandit')", name="ck_traffic_policies_kind"
        ),
    )
    # The latest canary ramp of each model (earlier ones live on in the events).
    op.create_table(
        "canaries",
        sa.Column("model", sa.String(128), sa.ForeignKey("models.name"), primary_key=True),
        sa.Column("experiment_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("champion", sa.Integer, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("step_started_at", _TIME, nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'promoting', 'promoted', 'aborted', 'ended')",
            name="ck_canaries_status",
        ),
    )
    op.create_table(
        "bandit_counts",
        sa.Column("experiment_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("successes", sa.BigInteger, nullable=False),
        sa.Column("failures", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_bandit_counts_model", "bandit_counts", ["model"])


def downgrade() -> None:
    op.drop_index("ix_bandit_counts_model", table_name="bandit_counts")
    op.drop_table("bandit_counts")
    op.drop_table("canaries")
    op.drop_table("traffic_policies")

"""Replicas: the control-plane leader's lease, each replica's serving state, and the
leader epoch a run was executed under.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # One row per lease ("control"): who holds it, since which epoch, and a counter the
    # holder bumps to renew it. Followers time the counter on their own monotonic clocks,
    # so replicas never compare wall clocks.
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("beat", sa.BigInteger, nullable=False),
        sa.Column("acquired_at", _TIME, nullable=False),
        sa.Column("renewed_at", _TIME, nullable=False),
    )
    # What each replica (or worker process) serves, refreshed every few seconds.
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("serving", sa.JSON, nullable=False),
    )
    with op.batch_alter_table("runs") as batch:
        # The leader epoch the run executes under (None: queued, not claimed yet) and the
        # replica executing it.
        batch.add_column(sa.Column("epoch", sa.Integer, nullable=True))
        batch.add_column(sa.Column("replica", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("replica")
        batch.drop_column("epoch")
    op.drop_table("replicas")
    op.drop_table("leases")

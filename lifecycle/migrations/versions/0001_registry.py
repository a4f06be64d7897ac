"""Registry: models, versions, aliases with their history, events, explicit loads.

Revision ID: 0001
Revises:
Create Date: 2026-05-09

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Timestamps are UTC; SQLite stores them naive, PostgreSQL as timestamptz.
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("task", sa.String(64), nullable=False, server_default=""),
        sa.Column("signature", sa.JSON, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        # False after a repository unload; restored at start.
        sa.Column("serving", sa.Boolean, nullable=False, server_default=sa.true()),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), sa.ForeignKey("models.name"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.UniqueConstraint("model", "version", name="uq_versions_model_version"),
        sa.UniqueConstraint("model", "sha256", name="uq_versions_model_sha256"),
        sa.CheckConstraint(
            "status IN ('registered', 'archived', 'rejected')", name="ck_versions_status"
        ),
    )
    op.create_table(
        "aliases",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["model", "version"], ["versions.model", "versions.version"], name="fk_aliases_version"
        ),
    )
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("previous", sa.Integer, nullable=True),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("popped_at", _TIME, nullable=True),
        sa.Column("popped_by", sa.String(128), nullable=True),
    )
    op.create_index("ix_alias_history_model_alias", "alias_history", ["model", "alias", "id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", _TIME, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_events_model_id", "events", ["model", "id"])
    op.create_table(
        "loads",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["model", "version"], ["versions.model", "versions.version"], name="fk_loads_version"
        ),
    )


def downgrade() -> None:
    op.drop_table("loads")
    op.drop_index("ix_events_model_id", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_alias_history_model_alias", table_name="alias_history")
    op.drop_table("alias_history")
    op.drop_table("aliases")
    op.drop_table("versions")
    op.drop_table("models")

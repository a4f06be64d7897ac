"""Request log: logged inferences and ground-truth feedback.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-10

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Times are integer epoch microseconds. On SQLite an INTEGER primary key is the rowid.
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "request_log",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        # Gateway-assigned, time-ordered, 32 hex digits; inserts ignore a known one.
        sa.Column("record_id", sa.String(32), nullable=False),
        # The client's id: may repeat (each inference still gets its own record).
        sa.Column("request_id", sa.String(256), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("latency_us", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        # Tensor blobs (lifecycle.request_records codec); NULL when not captured.
        sa.Column("inputs", sa.LargeBinary, nullable=True),
        sa.Column("outputs", sa.LargeBinary, nullable=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("payload_dropped", sa.Boolean, nullable=False),
        sa.Column("arm", sa.String(64), nullable=False),
        sa.Column("experiment_id", sa.String(128), nullable=False),
        sa.Column("routing_key_hash", sa.String(64), nullable=False),
        sa.Column("shadow", sa.Boolean, nullable=False),
        sa.UniqueConstraint("record_id", name="uq_request_log_record_id"),
    )
    # The feedback join (latest primary record per model and request id).
    op.create_index(
        "ix_request_log_model_request", "request_log", ["model", "request_id", "ts"]
    )
    op.create_index("ix_request_log_model_ts", "request_log", ["model", "ts"])
    # Retention purges across models.
    op.create_index("ix_request_log_ts", "request_log", ["ts"])
    op.create_table(
        "feedback",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("feedback_id", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(256), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("label_kind", sa.String(8), nullable=False),
        sa.Column("label_int", sa.BigInteger, nullable=True),
        sa.Column("label_float", sa.Double, nullable=True),
        sa.Column("label_tensor", sa.LargeBinary, nullable=True),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("feedback_id", name="uq_feedback_feedback_id"),
        sa.CheckConstraint(
            "label_kind IN ('int', 'float', 'tensor')", name="ck_feedback_label_kind"
        ),
    )
    op.create_index(
        "ix_feedback_model_request", "feedback", ["model", "request_id", "received_at"]
    )
    op.create_index("ix_feedback_received_at", "feedback", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_feedback_received_at", table_name="feedback")
    op.drop_index("ix_feedback_model_request", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ix_request_log_ts", table_name="request_log")
    op.drop_index("ix_request_log_model_ts", table_name="request_log")
    op.drop_index("ix_request_log_model_request", table_name="request_log")
    op.drop_table("request_log")

"""Alembic migrations for the lifecycle schema; run them with ``lifecycle.db.migrate``."""

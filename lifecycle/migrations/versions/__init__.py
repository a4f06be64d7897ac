"""Schema revisions, applied in order by ``lifecycle.db.migrate``."""

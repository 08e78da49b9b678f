-- The maintenance audit log: one row per maintenance action on one table (compaction, snapshot
-- expiry, orphan removal, consistency check, repair, cursor reset), dry runs included.
-- Applied at every start; every statement is idempotent. Portable between PostgreSQL and SQLite.

CREATE TABLE IF NOT EXISTS maintenance_audit_log (
    id               TEXT PRIMARY KEY,
    table_name       TEXT NOT NULL,
    action           TEXT NOT NULL,
    started_at       DOUBLE PRECISION NOT NULL,
    duration_seconds DOUBLE PRECISION NOT NULL,
    outcome          TEXT NOT NULL,
    dry_run          INTEGER NOT NULL DEFAULT 0,
    files_before     INTEGER,
    files_after      INTEGER,
    bytes_before     BIGINT,
    bytes_after      BIGINT,
    snapshot_id      BIGINT,
    detail           TEXT
);

CREATE INDEX IF NOT EXISTS maintenance_audit_log_by_table ON maintenance_audit_log (table_name, action, started_at);

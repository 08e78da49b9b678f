-- offloader's own state: the mirror of each table's committed cursor, and the run history.
-- Applied at every start; every statement is idempotent. Portable between PostgreSQL and SQLite.
-- The truth of what was offloaded is the marker in each Iceberg snapshot summary; this is a mirror.

CREATE TABLE IF NOT EXISTS offloader_watermarks (
    table_name       TEXT PRIMARY KEY,
    target           TEXT NOT NULL,
    cursor_json      TEXT,
    snapshot_id      BIGINT,
    run_id           TEXT,
    updated_at       DOUBLE PRECISION NOT NULL
);

CREATE TABLE IF NOT EXISTS offloader_runs (
    run_id           TEXT PRIMARY KEY,
    table_name       TEXT NOT NULL,
    started_at       DOUBLE PRECISION NOT NULL,
    finished_at      DOUBLE PRECISION,
    window_lo        TEXT,
    window_hi        TEXT,
    windows          INTEGER NOT NULL DEFAULT 0,
    rows_written     BIGINT NOT NULL DEFAULT 0,
    bytes_written    BIGINT NOT NULL DEFAULT 0,
    files_written    INTEGER NOT NULL DEFAULT 0,
    snapshot_id      BIGINT,
    duration_seconds DOUBLE PRECISION,
    outcome          TEXT NOT NULL,
    error_class      TEXT,
    error_message    TEXT
);

CREATE INDEX IF NOT EXISTS offloader_runs_by_table ON offloader_runs (table_name, started_at);

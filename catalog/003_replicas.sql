-- The live `offloader run` processes (replicas): one row each, refreshed by its heartbeat and
-- deleted on a clean shutdown. A replica is live while heartbeat_at is within [replica] lease;
-- the live replicas share the tables by rendezvous hashing (offloader/replicas.py). The table
-- runner locks stay the guard of correctness: this table only says who should run what.
-- Applied at every start; every statement is idempotent. Portable between PostgreSQL and SQLite.
-- offloader_runs.replica (which replica ran a run) is added by state.py: SQLite has no
-- ADD COLUMN IF NOT EXISTS.

CREATE TABLE IF NOT EXISTS offloader_replicas (
    replica_id       TEXT PRIMARY KEY,
    host             TEXT NOT NULL,
    pid              INTEGER NOT NULL,
    version          TEXT NOT NULL,
    started_at       DOUBLE PRECISION NOT NULL,
    heartbeat_at     DOUBLE PRECISION NOT NULL
);

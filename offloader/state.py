"""offloader's own state store (PostgreSQL, or SQLite for the embedded default).

It owns the schema in ``catalog/*.sql`` (applied idempotently at start), the mirror of each
table's committed cursor (``offloader_watermarks``), the run history (``offloader_runs``),
the live replicas (``offloader_replicas``, read by ``replicas``), and the per-table runner
lock: a PostgreSQL session advisory lock, or a file lock beside the SQLite database. The mirror is for operators and metrics only; the
Iceberg marker is the truth, and :func:`compare` says whether the mirror is behind or ahead.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from offloader.config import StateConfig, connection_url
from offloader.errors import StateError, first_line
from offloader.faults import fail
from offloader.ports import AuditRecord, Mirror, ReplicaRecord, RunRecord

# catalog/*.sql at the repository root, reached through the package's sql/ link so that an
# installed wheel carries the same files
_PACKAGED_SCHEMA = Path(__file__).resolve().parent / "sql"


def schema_files() -> list[Path]:
    files = sorted(_PACKAGED_SCHEMA.glob("*.sql"))
    if not files:
        raise StateError(f"no state schema files found in {_PACKAGED_SCHEMA}")
    return files


# Columns added to a table after its first release: SQLite has no ADD COLUMN IF NOT EXISTS.
_ADDED_COLUMNS = (("offloader_runs", "replica", "TEXT"),)


def _storable(fields: dict[str, Any]) -> dict[str, Any]:
    """A record's fields as both backends store them: a NUL, which PostgreSQL text cannot hold,
    is written as the two characters ``\\0`` (an error message may carry one from a library)."""
    return {k: v.replace("\x00", "\\0") if isinstance(v, str) else v for k, v in fields.items()}


def lock_key(table: str) -> int:
    """A stable signed 64-bit advisory lock key for a table."""
    return int.from_bytes(hashlib.sha256(f"offloader:{table}".encode()).digest()[:8], "big", signed=True)


class StateStore:
    """The watermark mirror, run history and runner locks."""

    def __init__(self, config: StateConfig) -> None:
        from sqlalchemy import create_engine

        self.config = config
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if config.is_sqlite:
            path = Path(config.dsn[len("sqlite:///") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_dir = path.parent
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs["connect_args"] = {"connect_timeout": 10, "application_name": "offloader"}
        try:
            url = connection_url(config.dsn, config.password)  # with the password: never logged, never shown
            self.engine = create_engine(url, **kwargs)
        except Exception as exc:
            raise StateError(f"cannot open the state store {config.display_dsn}: {first_line(exc)}") from exc
        fail("state_connect")

    @contextmanager
    def _connection(self, what: str) -> Iterator[Any]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"state store ({self.config.display_dsn}) failed to {what}: {first_line(exc)}") from exc

    def migrate(self) -> None:
        """Apply the schema files; safe to run at every start, from several processes at once."""
        from sqlalchemy import text

        with self._connection("apply its schema") as conn:
            if not self.config.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("__schema__")})
            for file in schema_files():
                body = "\n".join(ln for ln in file.read_text().splitlines() if not ln.strip().startswith("--"))
                for statement in body.split(";"):
                    if statement.strip():
                        conn.execute(text(statement))
            self._add_columns(conn)

    def _add_columns(self, conn: Any) -> None:
        """The columns of ``_ADDED_COLUMNS`` a database created by an older release lacks."""
        from sqlalchemy import inspect, text

        for table, column, kind in _ADDED_COLUMNS:
            if column in {c["name"] for c in inspect(conn).get_columns(table)}:
                continue
            try:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
            except Exception as exc:  # another SQLite process added it first (PostgreSQL serialises on a lock)
                if "duplicate column" not in str(exc):
                    raise

    def ping(self) -> None:
        from sqlalchemy import text

        with self._connection("answer") as conn:
            conn.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    # -- the mirror ----------------------------------------------------------------------

    def mirror(self, table: str) -> Mirror | None:
        from sqlalchemy import text

        with self._connection("read the watermark mirror") as conn:
            row = conn.execute(
                text(
                    "SELECT table_name, cursor_json, snapshot_id, run_id, updated_at FROM offloader_watermarks WHERE table_name = :t"
                ),
                {"t": table},
            ).first()
        if row is None:
            return None
        return Mirror(row[0], json.loads(row[1]) if row[1] else None, row[2], row[3], float(row[4]))

    def mirrors(self) -> dict[str, Mirror]:
        from sqlalchemy import text

        with self._connection("read the watermark mirror") as conn:
            rows = conn.execute(
                text("SELECT table_name, cursor_json, snapshot_id, run_id, updated_at FROM offloader_watermarks")
            ).all()
        return {r[0]: Mirror(r[0], json.loads(r[1]) if r[1] else None, r[2], r[3], float(r[4])) for r in rows}

    def set_mirror(self, table: str, target: str, cursor: list[Any] | None, snapshot_id: int | None, run_id: str | None) -> None:
        from sqlalchemy import text

        params = {
            "t": table, "target": target, "c": json.dumps(cursor) if cursor is not None else None,
            "s": snapshot_id, "r": run_id, "u": time.time(),
        }  # fmt: skip
        with self._connection("update the watermark mirror") as conn:
            updated = conn.execute(
                text(
                    "UPDATE offloader_watermarks SET target = :target, cursor_json = :c, snapshot_id = :s,"
                    " run_id = :r, updated_at = :u WHERE table_name = :t"
                ),
                params,
            ).rowcount
            if not updated:
                conn.execute(
                    text(
                        "INSERT INTO offloader_watermarks (table_name, target, cursor_json, snapshot_id, run_id, updated_at)"
                        " VALUES (:t, :target, :c, :s, :r, :u)"
                    ),
                    params,
                )

    def delete_mirror(self, table: str) -> None:
        from sqlalchemy import text

        with self._connection("delete a watermark mirror row") as conn:
            conn.execute(text("DELETE FROM offloader_watermarks WHERE table_name = :t"), {"t": table})

    # -- run history ---------------------------------------------------------------------

    def record_run(self, run: RunRecord) -> None:
        from sqlalchemy import text

        values = _storable(run.__dict__)
        cols = ", ".join(values)
        with self._connection("record a run") as conn:
            updated = conn.execute(
                text(
                    "UPDATE offloader_runs SET "
                    + ", ".join(f"{c} = :{c}" for c in values if c != "run_id")
                    + " WHERE run_id = :run_id"
                ),
                values,
            ).rowcount
            if not updated:
                conn.execute(text(f"INSERT INTO offloader_runs ({cols}) VALUES ({', '.join(':' + c for c in values)})"), values)

    def abandon_runs(self, table: str, by: str, at: float) -> int:
        """Mark the table's runs still ``running`` as ``abandoned``: called under its runner lock by
        run ``by``, so no other run of it is alive; their process ended before they finished."""
        from sqlalchemy import text

        why = f"its process ended before the run finished (found by run {by})"
        with self._connection("mark abandoned runs") as conn:
            return int(
                conn.execute(
                    text(
                        "UPDATE offloader_runs SET outcome = 'abandoned', finished_at = :at, error_class = 'Abandoned',"
                        " error_message = :why WHERE table_name = :t AND outcome = 'running' AND run_id <> :by"
                    ),
                    {"t": table, "by": by, "at": at, "why": why},
                ).rowcount
            )

    def runs(self, table: str | None = None, limit: int = 20, outcome: str | None = None) -> list[RunRecord]:
        from sqlalchemy import text

        fields = ", ".join(RunRecord.__dataclass_fields__)
        clauses = [c for c, on in (("table_name = :t", table), ("outcome = :o", outcome)) if on]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connection("read the run history") as conn:
            rows = conn.execute(
                text(f"SELECT {fields} FROM offloader_runs {where} ORDER BY started_at DESC LIMIT :n"),
                {"t": table, "o": outcome, "n": limit},
            ).all()
        return [RunRecord(*row) for row in rows]

    def last_runs(self) -> dict[str, RunRecord]:
        """The newest run of every table."""
        from sqlalchemy import text

        fields = ", ".join(f"r.{f}" for f in RunRecord.__dataclass_fields__)
        with self._connection("read the run history") as conn:
            rows = conn.execute(
                text(
                    f"SELECT {fields} FROM offloader_runs r JOIN (SELECT table_name, max(started_at) AS s"
                    " FROM offloader_runs GROUP BY table_name) m ON r.table_name = m.table_name AND r.started_at = m.s"
                )
            ).all()
        return {row[1]: RunRecord(*row) for row in rows}

    def reached(self, table: str, upto: str, limit: int = 5000) -> list[str]:
        """The ends (``window_hi``) of the table's completed runs at or before ``upto``, newest first."""
        from sqlalchemy import text

        with self._connection("read the run history") as conn:
            rows = conn.execute(
                text(
                    "SELECT window_hi FROM offloader_runs WHERE table_name = :t AND outcome IN ('committed', 'nothing_new')"
                    " AND window_hi IS NOT NULL AND window_hi <= :upto ORDER BY window_hi DESC LIMIT :n"
                ),
                {"t": table, "upto": upto, "n": limit},
            ).all()
        return [row[0] for row in rows]

    def prune_runs(self, older_than: float) -> int:
        from sqlalchemy import text

        with self._connection("prune the run history") as conn:
            return int(conn.execute(text("DELETE FROM offloader_runs WHERE started_at < :c"), {"c": older_than}).rowcount)

    # -- maintenance audit log -------------------------------------------------------------

    def record_audit(self, record: AuditRecord) -> None:
        from sqlalchemy import text

        values = _storable(record.__dict__)
        with self._connection("write the maintenance audit log") as conn:
            conn.execute(
                text(f"INSERT INTO maintenance_audit_log ({', '.join(values)}) VALUES ({', '.join(':' + c for c in values)})"),
                values,
            )

    def audits(self, table: str | None = None, action: str | None = None, limit: int = 50) -> list[AuditRecord]:
        """The newest audit records first, optionally of one table and one action."""
        from sqlalchemy import text

        fields = ", ".join(AuditRecord.__dataclass_fields__)
        where = " AND ".join(c for c, v in (("table_name = :t", table), ("action = :a", action)) if v)
        with self._connection("read the maintenance audit log") as conn:
            rows = conn.execute(
                text(
                    f"SELECT {fields} FROM maintenance_audit_log {'WHERE ' + where if where else ''}"
                    " ORDER BY started_at DESC LIMIT :n"
                ),
                {"t": table, "a": action, "n": limit},
            ).all()
        return [AuditRecord(*row) for row in rows]

    # -- replicas --------------------------------------------------------------------------

    def beat_replica(self, replica: ReplicaRecord) -> None:
        """Insert or refresh one replica's row (its heartbeat)."""
        from sqlalchemy import text

        values = replica.__dict__
        with self._connection("refresh the replica heartbeat") as conn:
            updated = conn.execute(
                text(
                    "UPDATE offloader_replicas SET host = :host, pid = :pid, version = :version, started_at = :started_at,"
                    " heartbeat_at = :heartbeat_at WHERE replica_id = :replica_id"
                ),
                values,
            ).rowcount
            if not updated:
                conn.execute(
                    text(
                        "INSERT INTO offloader_replicas (replica_id, host, pid, version, started_at, heartbeat_at)"
                        " VALUES (:replica_id, :host, :pid, :version, :started_at, :heartbeat_at)"
                    ),
                    values,
                )

    def replicas(self) -> list[ReplicaRecord]:
        """Every registered replica, live or not (``replicas`` applies the lease)."""
        from sqlalchemy import text

        fields = ", ".join(ReplicaRecord.__dataclass_fields__)
        with self._connection("read the replicas") as conn:
            rows = conn.execute(text(f"SELECT {fields} FROM offloader_replicas ORDER BY replica_id")).all()
        return [ReplicaRecord(r[0], r[1], int(r[2]), r[3], float(r[4]), float(r[5])) for r in rows]

    def remove_replica(self, replica_id: str) -> None:
        from sqlalchemy import text

        with self._connection("remove a replica") as conn:
            conn.execute(text("DELETE FROM offloader_replicas WHERE replica_id = :r"), {"r": replica_id})

    def prune_replicas(self, older_than: float) -> int:
        """Forget replicas whose last heartbeat is older than ``older_than`` (killed, never back)."""
        from sqlalchemy import text

        with self._connection("prune the replicas") as conn:
            return int(conn.execute(text("DELETE FROM offloader_replicas WHERE heartbeat_at < :c"), {"c": older_than}).rowcount)

    # -- runner locks --------------------------------------------------------------------

    @contextmanager
    def lock(self, table: str, wait: float = 0.0) -> Iterator[bool]:
        """Take the table's runner lock, waiting up to ``wait`` seconds; yields whether it was taken.

        Offload runs never wait (the next cycle catches up); maintenance waits for the run
        in flight to finish.
        """
        deadline = time.monotonic() + wait
        while True:
            with self._try_lock(table) as taken:
                if taken or time.monotonic() >= deadline:
                    yield taken
                    return
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def held(self, table: str) -> bool:
        """Whether some runner holds the table's lock now, without taking it on PostgreSQL."""
        if self.config.is_sqlite:
            with self._file_lock(table) as taken:
                return not taken
        from sqlalchemy import text

        key = lock_key(table) & 0xFFFFFFFFFFFFFFFF  # pg_locks shows the key as two unsigned halves
        with self._connection(f"read the lock of {table}") as conn:
            found = conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    " AND classid::bigint = :hi AND objid::bigint = :lo"
                ),
                {"hi": key >> 32, "lo": key & 0xFFFFFFFF},
            ).scalar()
        return bool(found)

    @contextmanager
    def _try_lock(self, table: str) -> Iterator[bool]:
        if self.config.is_sqlite:
            with self._file_lock(table) as taken:
                yield taken
            return
        from sqlalchemy import text

        key = lock_key(table)
        try:
            conn = self.engine.connect()
            taken = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            conn.commit()
        except Exception as exc:
            raise StateError(
                f"state store ({self.config.display_dsn}) failed to take the lock of {table}: {first_line(exc)}"
            ) from exc
        try:
            yield taken
        finally:
            try:
                if taken:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
            except Exception:  # noqa: S110 - closing the session releases the lock anyway
                conn.invalidate()
            finally:
                conn.close()

    @contextmanager
    def _file_lock(self, table: str) -> Iterator[bool]:
        path = self._lock_dir / f".offloader-{table}.lock"
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

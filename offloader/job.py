"""One table job, and the guard every operation on a table runs under.

A :class:`TableJob` carries what every table operation (offload, maintain, check, repair,
reset) needs: the table's config, the adapters behind their ports, the observer, the stop
event and the clock. The composition root (``app``) builds one per operation.

:func:`guarded` is the one place that takes a table's runner lock and turns what an
operation raised into an :class:`Outcome`: the lock held by another runner is ``skipped``,
a stop request ``stopped``, an :class:`OffloaderError` ``failed`` with its message, and any
other exception (a bug) ``failed`` as an :class:`InternalError`, logged with its traceback,
so one table never takes the others down. :func:`record_run` writes how a run ended into
the run history; :func:`finish_action` records an audited operation: the audit log entry,
the observer call and the log line.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import structlog

from offloader.config import Config, TableConfig
from offloader.errors import ConfigError, InternalError, LockBusyError, OffloaderError, ShutdownRequested
from offloader.ports import ArrowQuery, AuditRecord, Engine, RunRecord, Sink, SinkTable, StateStore
from offloader.results import ActionResult, Observer, TableResult
from offloader.source import Source


@dataclass(frozen=True)
class TableJob:
    """Everything one operation on one table needs; built by the composition root."""

    table: TableConfig
    config: Config
    connect: Callable[[], Engine]  # the source connection, opened on first use: maintenance never needs it
    sink: Sink
    state: StateStore
    arrow_engine: Callable[[], AbstractContextManager[ArrowQuery]]  # the embedded engine over Arrow (checksums)
    observer: Observer = field(default_factory=Observer)
    stop: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.time
    after_commit: Callable[[TableJob, SinkTable], None] | None = None  # the federated view (federation.py)

    def committed(self, sink: SinkTable) -> None:
        """Tell the after-commit hook the table has a new snapshot (it never raises)."""
        if self.after_commit is not None:
            self.after_commit(self, sink)

    @property
    def engine(self) -> Engine:
        return self.connect()

    @property
    def log(self) -> Any:
        return structlog.get_logger("offloader").bind(table=self.table.name)

    def source(self) -> Source:
        """The queries against this table's source."""
        t = self.table
        return Source(self.engine, t.source_database, t.source_table, t.cursor)

    def check_stop(self, message: str) -> None:
        """Raise :class:`ShutdownRequested` with ``message`` once the service is stopping."""
        if self.stop.is_set():
            raise ShutdownRequested(message)


@dataclass(frozen=True)
class Outcome:
    """How an operation ended: ``ok``, ``skipped`` (the lock), ``stopped`` or ``failed``."""

    outcome: str
    error: OffloaderError | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def locked(self) -> bool:
        return isinstance(self.error, LockBusyError)


def headline(exc: BaseException) -> str:
    """The first line of an error's message: what a result, a record or a log line shows."""
    if isinstance(exc, ConfigError):  # its first line is a bare "invalid configuration:"
        return "invalid configuration: " + "; ".join(exc.problems)
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def lock_busy(wait: float) -> str:
    """Why an operation did not run: another runner holds the table's lock."""
    if wait:
        return "another runner held the table's lock past maintenance.lock_wait"
    return "another runner holds this table's lock"


def settle(body: Callable[[], None], log: Any, *, crashed: str, stopped: str = "stopped") -> Outcome:
    """Run ``body``; the outcome of what it raised. A bug is logged as ``crashed``."""
    try:
        body()
        return Outcome("ok")
    except LockBusyError as exc:
        return Outcome("skipped", exc, str(exc))
    except ShutdownRequested as exc:
        return Outcome(stopped, exc, str(exc))
    except OffloaderError as exc:
        return Outcome("failed", exc, headline(exc))
    except Exception as exc:  # a bug must not take the other tables down with it
        error = InternalError(f"internal error: {type(exc).__name__}: {exc}")
        log.exception(crashed, error_type=error.kind, error=headline(error), retryable=False)
        return Outcome("failed", error, headline(error))


def guarded(job: TableJob, body: Callable[[], None], log: Any, *, wait: float, crashed: str, stopped: str = "stopped") -> Outcome:
    """Run ``body`` under the table's runner lock, waiting up to ``wait`` seconds for it."""

    def locked() -> None:
        with job.state.lock(job.table.name, wait=wait) as taken:
            if not taken:
                raise LockBusyError(lock_busy(wait))
            body()

    return settle(locked, log, crashed=crashed, stopped=stopped)


def finish_action(job: TableJob, result: ActionResult, started: float, log: Any, event: str, **fields: Any) -> None:
    """Record one audited operation: its audit log entry, the observer call and its log line.

    The line is ``event`` at info level, or at error level when the operation failed. A
    failing state store is logged, never raised: the operation's own outcome stands. A dry
    run changed nothing, so it records nothing: its lines and the command's output say it all.
    """
    record = AuditRecord(
        id=uuid.uuid4().hex, table_name=result.table, action=result.action, started_at=started,
        duration_seconds=result.duration, outcome=result.outcome, dry_run=int(result.dry_run),
        files_before=result.files_before, files_after=result.files_after, bytes_before=result.bytes_before,
        bytes_after=result.bytes_after, snapshot_id=result.snapshot_id, detail=result.detail[:4000] or None,
    )  # fmt: skip
    try:
        if not result.dry_run:
            job.state.record_audit(record)
    except OffloaderError as exc:
        log.error("audit_log_failed", action=result.action, error=str(exc))
    job.observer.action_finished(job.table, result)
    (log.error if result.outcome == "failed" else log.info)(event, **fields)


def begin_run(job: TableJob, record: RunRecord, log: Any) -> None:
    """Under the table's runner lock: the run enters the history as ``running``, and any other
    run of the table still shown running is marked ``abandoned`` (no run of it can be alive)."""
    abandoned = job.state.abandon_runs(job.table.name, record.run_id, job.clock())
    if abandoned:
        log.warning("runs_abandoned", count=abandoned, reason="their process ended before they finished")
    job.state.record_run(record)


def record_run(job: TableJob, record: RunRecord, result: TableResult, log: Any) -> None:
    """Write how a run ended into the run history; a failing state store is logged, never raised."""
    record.finished_at = job.clock()
    record.duration_seconds = result.duration
    record.outcome = result.outcome
    record.rows_written, record.bytes_written, record.files_written = result.rows, result.bytes, result.files
    record.windows, record.snapshot_id = result.windows, result.snapshot_id
    if result.error is not None:
        record.error_class = type(result.error).__name__
        record.error_message = str(result.error)[:2000]
    try:
        job.state.record_run(record)
    except OffloaderError as exc:  # the state store is what failed: the log line is the record
        log.error("run_history_failed", error=str(exc))

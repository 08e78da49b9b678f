"""The offload cycle of one table: the heart of offloader.

One run of a table, under its runner lock (``job.guarded``):

1. read the source schema, map it, open or create the Iceberg table (``window.Windows``);
2. read the committed cursor from the Iceberg marker, the truth; repair a mirror that is
   behind, stop on a mirror that is ahead (``state``);
3. take ``hi`` = the ClickHouse server's now() minus the safety lag and minus the source
   replica's delay (``replica_lag``; above ``max_replica_delay`` the table does not move), and
   never past the cycle's cut, the one ``hi`` of every table in the cycle; split the backlog
   between the cursor and ``hi`` into windows no longer than ``max_window`` and of at most
   ``max_window_rows`` rows (the ties of its last time excepted);
4. commit each window as ONE snapshot whose summary carries the new cursor, then update the
   mirror (``window``).

A conflict (another writer committed first) discards the window's files and starts again
from the reloaded marker. In ``replace`` mode each window instead rewrites exactly the
Iceberg rows of its time range, and the cursor only moves up to ``hi - replace_lookback``,
so rows that may still change are read again next cycle. Every run is recorded in the run
history, whatever its outcome.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from offloader import corrections, replicas
from offloader.cursor import Cursor, Window, format_time, parse_time, time_key
from offloader.errors import CommitConflictError
from offloader.job import Outcome, TableJob, begin_run, guarded, record_run
from offloader.ports import FROZEN_KEY, RunRecord
from offloader.results import TableResult
from offloader.window import Windows


class Offload:
    """Runs the offload of one table."""

    def __init__(self, job: TableJob, cut: str | None = None) -> None:
        self.job = job
        self.cut = cut  # the cycle's cut: no table of the cycle goes past it
        table, source = job.table, job.config.source
        self.max_window = table.max_window if table.max_window is not None else source.max_window
        self.max_window_rows = table.max_window_rows if table.max_window_rows is not None else source.max_window_rows

    def run(self) -> TableResult:
        run_id = uuid.uuid4().hex
        log = self.job.log.bind(run_id=run_id)
        result = TableResult(self.job.table.name, run_id, "failed")
        started = self.job.clock()
        record = RunRecord(run_id=run_id, table_name=self.job.table.name, started_at=started, replica=self.job.config.replica.id)

        def body() -> None:
            begin_run(self.job, record, log)
            log.info("table_started", mode=self.job.table.mode)
            self._run_locked(result, record, log)

        outcome = guarded(self.job, body, log, wait=0.0, crashed="table_failed")
        result.duration = self.job.clock() - started
        self._settle(outcome, result, log)
        if not outcome.locked:
            record_run(self.job, record, result, log)
        return result

    def _settle(self, outcome: Outcome, result: TableResult, log: Any) -> None:
        """The run's outcome, and its log line."""
        if outcome.ok:
            log.info(
                "table_finished", outcome=result.outcome, rows=result.rows, windows=result.windows,
                files=result.files, bytes=result.bytes, seconds=round(result.duration, 3),
            )  # fmt: skip
            return
        result.outcome, result.error, result.reason = outcome.outcome, outcome.error, outcome.detail
        if outcome.locked:  # another replica (or a one-shot command) runs it: by design, not a problem
            self.job.observer.held_elsewhere(self.job.table)
            holder = replicas.holder(self.job.state, self.job.table.name, self.job.config.replica.id)
            log.info("table_held_elsewhere", reason=result.reason, holder=holder)
        elif outcome.outcome == "stopped":
            log.info("table_stopped", reason=result.reason, windows=result.windows, rows=result.rows)
        elif outcome.error is not None and outcome.error.kind != "internal_error":  # a bug was logged with its traceback
            log.error("table_failed", error_type=outcome.error.kind, error=result.reason, retryable=outcome.error.retryable)

    def _run_locked(self, result: TableResult, record: RunRecord, log: Any) -> None:
        windows = Windows(self.job, result.run_id, log)
        attempts = self.job.config.offload.commit_attempts
        try:
            for attempt in range(1, attempts + 1):
                try:
                    self._offload(windows, result, record, log)
                    self.job.committed(windows.table)  # a view left behind (a kill, a failure) comes forward
                    result.outcome = "committed" if result.windows else "nothing_new"
                    return
                except CommitConflictError as exc:
                    result.conflicts += 1
                    self.job.observer.conflict(self.job.table)
                    log.warning("commit_conflict", attempt=attempt, attempts=attempts, error=str(exc))
                    if attempt == attempts:
                        raise
                    windows.table.refresh()
        finally:
            result.mismatches = windows.mismatches

    def _offload(self, windows: Windows, result: TableResult, record: RunRecord, log: Any) -> None:
        cursor = windows.committed_cursor(log)
        windows.table.prune_metadata(log)
        for corrected in corrections.apply(self.job, windows, cursor, log):  # under the lock, before new windows
            self._count(result, corrected)
            cursor = Cursor.from_json(corrected.cursor)
        source = windows.source
        now = source.server_now()
        lag = windows.lag()
        hi = format_time(now - timedelta(seconds=lag))
        if self.cut is not None and time_key(self.cut) < time_key(hi):
            hi = self.cut
        windows.cut = hi
        record.window_lo, record.window_hi = (cursor.time if cursor else None), hi
        if self.job.table.mode == "replace":
            frozen = format_time(parse_time(hi) - timedelta(seconds=self.job.table.replace_lookback))
            self._replace_windows(windows, cursor, hi, frozen, result)
            return
        total, first = source.backlog(cursor, hi)  # counted once, for progress
        max_rows = self.max_window_rows if total > self.max_window_rows else None  # no cap query when it fits
        done = 0
        while first is not None:
            self._check_stop()
            window = Window(cursor, source.window_end(first, self.max_window, hi, max_rows=max_rows, lo=cursor))
            committed = windows.append(window)
            if committed is None:
                break
            self._count(result, committed)
            cursor = Cursor.from_json(committed.cursor)
            done += committed.rows
            self.job.observer.progress(self.job.table, done, max(total, done))
            first = source.first_pending(cursor, hi)

    def _count(self, result: TableResult, committed: Any) -> None:
        result.add(committed)
        self.job.observer.window_committed(self.job.table, committed)

    def _check_stop(self) -> None:
        self.job.check_stop(f"{self.job.table.name}: stopping; the window in flight was abandoned before its commit")

    def _replace_windows(self, windows: Windows, frozen_cursor: Cursor | None, hi: str, frozen: str, result: TableResult) -> None:
        """Rewrite the time ranges from the frozen cursor up to ``hi``, one window per commit."""
        source = windows.source
        first = source.first_pending(frozen_cursor, hi, inclusive=True)
        if first is None:
            return
        floor = frozen_cursor.time if frozen_cursor else None
        start = floor or first
        while True:
            self._check_stop()
            end = source.window_end(start, self.max_window, hi, max_rows=self.max_window_rows)
            moved = min(end, frozen, key=lambda t: parse_time(t))
            if floor is not None and parse_time(moved) < parse_time(floor):
                moved = floor
            committed = windows.replace(start, end, windows.marker([moved], 0, end, **{FROZEN_KEY: moved}))
            if committed is not None:
                self._count(result, committed)
                floor = moved
            if parse_time(end) >= parse_time(hi):
                return
            following = source.first_pending(Cursor((end,)), hi)
            if following is None:
                return
            start = following

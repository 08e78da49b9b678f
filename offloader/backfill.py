"""History backfill: a table's backlog cut into slices, written in parallel, committed in order.

``offloader backfill --table T [--from TIME] [--to TIME] [--workers N] [--ray ADDRESS]``:

1. **Lock and cursor.** The driver takes the table's runner lock, waiting up to
   ``maintenance.lock_wait`` for a run in flight (a cycle that starts meanwhile skips the
   table), and reads the committed cursor from the Iceberg marker, as a cycle does.
2. **Slices.** The rows after the cursor up to ``--to`` (never past the server's now() minus
   the safety lag) are cut by time: a slice ends at a time and takes every row at it, so rows
   that share a cursor time are never split; it holds at most ``slice_rows`` rows (the ties
   of its end excepted) and spans at most ``max_window``. Each slice is counted in
   ClickHouse when it is planned (``count()`` and its greatest cursor tuple), a few slices
   ahead of the workers.
3. **Write.** Workers (``ports.Workers``: this process, local processes or Ray tasks) read
   their slices from ClickHouse in parallel, convert them with the table's column plans and
   write Parquet data files into the table's location; nothing is committed
   (:func:`write_slice`).
4. **Verify and commit, in order.** The rows a worker wrote must equal the slice's count.
   Slices are committed in cursor order, one snapshot each, with the marker a cycle writes,
   so the daemon carries on from where the backfill ended.

Faults: a lost worker's slice is taken again by the pool. A killed driver leaves the
committed prefix: the next backfill or cycle resumes from its marker, and the files of the
slices it had not committed are referenced by no snapshot and go to orphan removal. A slice's
files are committed at most once: only the driver commits, and only those returned for the
slice that starts at the table's committed cursor.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from offloader import footprint
from offloader.cursor import Cursor, Window, format_time, time_key
from offloader.errors import CommitConflictError, ConfigError, SchemaError, WindowMismatchError
from offloader.job import TableJob, begin_run, guarded, record_run
from offloader.ports import RunRecord, Workers, WrittenFiles
from offloader.replacing import refuse
from offloader.results import TableResult
from offloader.window import Windows

DEFAULT_SLICE_ROWS = 2_000_000


@dataclass(frozen=True)
class Slice:
    """The rows after ``lo`` (inclusive of its time when ``inclusive``) up to ``hi``, as counted when planned."""

    index: int
    lo: Cursor | None
    hi: str
    inclusive: bool
    rows: int
    last: Cursor

    @property
    def window(self) -> Window:
        return Window(self.lo, self.hi, self.inclusive)


@dataclass(frozen=True)
class SliceFiles:
    """What a worker wrote for one slice: data files, not committed."""

    index: int
    files: WrittenFiles
    spec_id: int
    worker: str  # host:pid
    peak_rss: int  # the worker process's peak resident set, bytes


@dataclass
class BackfillResult(TableResult):
    """A backfill's run: a table result whose windows are its slices, and what its workers took."""

    workers: int = 1
    worker_peak_rss: int = 0
    worker_processes: int = 0  # distinct worker processes that wrote a slice


def write_slice(windows: Windows, run_id: str, piece: Slice) -> SliceFiles:
    """A worker's task: the slice's rows into data files of the table (not committed)."""
    tx = windows.write(piece.window)
    if tx.schema_changes:
        tx.discard()
        raise SchemaError(
            f"{windows.job.table.name}: the source schema changed during the backfill; nothing of slice "
            f"{piece.index} was committed. Run `offloader once --table {windows.job.table.name}`, then the backfill again"
        )
    return SliceFiles(
        piece.index, tx.written, windows.table.default_spec_id, f"{socket.gethostname()}:{os.getpid()}", footprint.peak_rss()
    )


class Backfill:
    """The driver of one table's backfill: plans, dispatches, verifies and commits its slices."""

    def __init__(
        self,
        job: TableJob,
        workers: Workers,
        task: Callable[..., SliceFiles] | None = None,
        *,
        slice_rows: int = DEFAULT_SLICE_ROWS,
    ) -> None:
        self.job = job
        self.workers = workers
        self.task = task  # run in a worker: (run_id, slice) -> SliceFiles; None writes in this process
        self.slice_rows = slice_rows
        table, source = job.table, job.config.source
        self.max_window = table.max_window if table.max_window is not None else source.max_window

    def run(self, start: str | None = None, end: str | None = None) -> BackfillResult:
        run_id = uuid.uuid4().hex
        log = self.job.log.bind(run_id=run_id, operation="backfill")
        result = BackfillResult(self.job.table.name, run_id, "failed", workers=self.workers.size)
        started = self.job.clock()
        record = RunRecord(run_id=run_id, table_name=self.job.table.name, started_at=started, replica=self.job.config.replica.id)

        def body() -> None:
            begin_run(self.job, record, log)
            self._run_locked(result, record, log, start, end)

        try:
            outcome = guarded(self.job, body, log, wait=self.job.config.maintenance.lock_wait, crashed="backfill_failed")
        finally:
            self.workers.close()
        result.duration = self.job.clock() - started
        if not outcome.ok:
            result.outcome, result.error, result.reason = outcome.outcome, outcome.error, outcome.detail
        if not outcome.locked:
            record_run(self.job, record, result, log)
        seconds = max(result.duration, 1e-9)
        (log.info if outcome.ok or outcome.outcome == "stopped" else log.error)(
            "backfill_finished", outcome=result.outcome, rows=result.rows, slices=result.windows, workers=result.workers,
            seconds=round(result.duration, 3), rows_per_second=round(result.rows / seconds),
            worker_peak_rss=result.worker_peak_rss, reason=result.reason or None,
        )  # fmt: skip
        return result

    def _run_locked(self, result: BackfillResult, record: RunRecord, log: Any, start: str | None, end: str | None) -> None:
        refuse(self.job.table, "a backfill (slices written in parallel)")
        windows = Windows(self.job, result.run_id, log)
        probe = windows.table.begin(windows.plans)
        probe.discard()
        if probe.schema_changes:
            raise SchemaError(
                f"{self.job.table.name}: the source schema changed since the table's last commit; run "
                f"`offloader once --table {self.job.table.name}` first (it evolves the Iceberg schema), then the backfill"
            )
        cursor = windows.committed_cursor(log)
        windows.table.prune_metadata(log)
        source = windows.source
        hi = format_time(source.server_now() - timedelta(seconds=windows.lag()))  # as a cycle's end
        if end is not None and time_key(end) < time_key(hi):
            hi = end
        lo, inclusive = cursor, False
        if start is not None:
            if cursor is not None and time_key(start) > time_key(cursor.time):
                raise ConfigError(
                    f"--from {start} is after the committed cursor of {self.job.table.name} ({cursor.time}): the rows "
                    "between would never reach Iceberg. Leave --from out to carry on from the cursor"
                )
            if cursor is None:
                lo, inclusive = Cursor((start,)), True
        record.window_lo, record.window_hi = (lo.time if lo else None), hi
        total, _ = source.backlog(lo, hi, inclusive)
        log.info(
            "backfill_started", rows=total, lo=record.window_lo, hi=hi, workers=self.workers.size, slice_rows=self.slice_rows
        )
        self._drive(windows, self._plan(windows, lo, inclusive, hi), result, total, cursor)
        result.outcome = "committed" if result.windows else "nothing_new"

    def _plan(self, windows: Windows, lo: Cursor | None, inclusive: bool, hi: str) -> Iterator[Slice]:
        """The slices from ``lo`` up to ``hi``, each counted in ClickHouse."""
        source, index = windows.source, 0
        while True:
            first = source.first_pending(lo, hi, inclusive)
            if first is None:
                return
            end = source.window_end(first, self.max_window, hi, max_rows=self.slice_rows, lo=None if inclusive else lo)
            stats = source.stats(Window(lo, end, inclusive))
            if stats.last is None:  # rows deleted under the planner: the next slice takes what is left
                lo, inclusive = Cursor((end,)), False
                continue
            yield Slice(index, lo, end, inclusive, stats.rows, stats.last)
            lo, inclusive, index = Cursor((end,)), False, index + 1

    def _drive(self, windows: Windows, plan: Iterator[Slice], result: BackfillResult, total: int, cursor: Cursor | None) -> None:
        """Keep the workers busy, a few slices ahead; commit the returned slices in order."""
        task = self.task or functools.partial(write_slice, windows)
        planned: dict[int, Slice] = {}
        ready: dict[int, SliceFiles] = {}
        in_flight: set[int] = set()
        workers: set[str] = set()
        following, exhausted = 0, False
        while True:
            while not exhausted and len(in_flight) < self.workers.size and len(in_flight) + len(ready) < 2 * self.workers.size:
                self._check_stop()
                piece = next(plan, None)
                if piece is None:
                    exhausted = True
                    break
                planned[piece.index] = piece
                in_flight.add(piece.index)
                self.workers.submit(piece.index, task, result.run_id, piece)
            if not in_flight and not ready:
                return
            for key, outcome in self.workers.next_done(timeout=1.0):
                in_flight.discard(key)
                if isinstance(outcome, BaseException):
                    raise outcome
                ready[key] = outcome
            self._check_stop()
            while following in ready:
                done = ready.pop(following)
                workers.add(done.worker)
                result.worker_peak_rss = max(result.worker_peak_rss, done.peak_rss)
                result.worker_processes = len(workers)
                cursor = self._commit(windows, planned.pop(following), done, result, cursor)
                self.job.observer.progress(self.job.table, result.rows, max(total, result.rows))
                following += 1

    def _commit(self, windows: Windows, piece: Slice, done: SliceFiles, result: BackfillResult, cursor: Cursor | None) -> Cursor:
        """Commit one slice's files as one snapshot; the cursor it moved to."""
        name = self.job.table.name
        if done.files.rows != piece.rows:
            windows.mismatches += 1
            self.job.observer.mismatch(self.job.table)
            raise WindowMismatchError(
                f"{name}: slice {piece.index} up to {piece.hi} wrote {done.files.rows} rows but count() in ClickHouse "
                f"says {piece.rows}; nothing of it was committed (its files are left to orphan removal)"
            )
        if done.spec_id != windows.table.default_spec_id:
            raise SchemaError(f"{name}: the partition spec changed during the backfill; slice {piece.index} was not committed")
        moved = piece.last.to_json()
        attempts = self.job.config.offload.commit_attempts
        for attempt in range(1, attempts + 1):
            tx = windows.table.begin()
            tx.adopt(done.files)
            try:
                snapshot_id = windows.commit(
                    tx, windows.marker(moved, piece.rows, piece.hi, **{"offloader.backfill-slice": str(piece.index)})
                )
            except CommitConflictError:
                result.conflicts += 1
                self.job.observer.conflict(self.job.table)
                windows.table.refresh()
                marker = windows.table.marker()
                if attempt == attempts or (marker.cursor if marker else None) != (cursor.to_json() if cursor else None):
                    raise
                continue
            committed = windows.settle(tx, snapshot_id, moved, piece.hi)
            result.add(committed)
            self.job.observer.window_committed(self.job.table, committed)
            return piece.last
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _check_stop(self) -> None:
        self.job.check_stop(f"{self.job.table.name}: stopping; the slices not committed yet are left to orphan removal")

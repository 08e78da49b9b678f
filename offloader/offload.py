"""The offload cycle of one table: the heart of offloader.

One run of a table, under its runner lock:

1. read the source schema, map it (``types``), open or create the Iceberg table (``sink``);
2. read the committed cursor from the Iceberg marker, the truth; repair a mirror that is
   behind, stop on a mirror that is ahead (``state``);
3. take ``hi`` = the ClickHouse server's now() minus the safety lag, and split the backlog
   between the cursor and ``hi`` into windows no longer than ``max_window``;
4. for each window: count it and find its last cursor tuple, stream its rows as Arrow
   batches into Parquet data files, check the rows written against the count, and commit
   the files as ONE snapshot whose summary carries the new cursor; then update the mirror.

A conflict (another writer committed first) discards the window's files and starts again
from the reloaded marker. An unknown commit outcome is settled by looking for the commit id
in the snapshot history, never by a blind retry. In ``replace`` mode each window instead
rewrites exactly the Iceberg rows of its time range, and the cursor only moves up to
``hi - replace_lookback``, so rows that may still change are read again next cycle.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pyarrow as pa
import structlog

from offloader import __version__, types
from offloader.config import Config, TableConfig
from offloader.errors import (
    CatalogError,
    CommitConflictError,
    CommitUnknownError,
    InternalError,
    LockBusyError,
    MirrorAheadError,
    OffloaderError,
    ShutdownRequested,
    WindowMismatchError,
)
from offloader.faults import checkpoint, reply_lost
from offloader.ports import COMMIT_KEY, CURSOR_KEY, HI_KEY, ROWS_KEY, RUN_KEY, Engine, Marker
from offloader.sink import Sink, SinkTable, WindowWrite
from offloader.source import Cursor, Source, Window, format_time, micros, parse_time, read_ahead
from offloader.state import RunRecord, StateStore


@dataclass
class WindowResult:
    rows: int
    bytes: int
    files: int
    snapshot_id: int
    cursor: list[Any]


@dataclass
class TableResult:
    """What one run of one table did."""

    table: str
    run_id: str
    outcome: str  # committed | nothing_new | skipped | stopped | failed
    rows: int = 0
    bytes: int = 0
    files: int = 0
    windows: int = 0
    snapshot_id: int | None = None
    cursor: list[Any] | None = None
    error: OffloaderError | None = None
    reason: str = ""
    duration: float = 0.0
    conflicts: int = 0
    mismatches: int = 0
    attempts: int = 1
    window_results: list[WindowResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome in {"committed", "nothing_new"}


class Observer:
    """Hooks the service uses to follow a run (metrics, progress). All optional."""

    def window_committed(self, table: TableConfig, result: WindowResult) -> None: ...
    def conflict(self, table: TableConfig) -> None: ...
    def mismatch(self, table: TableConfig) -> None: ...
    def progress(self, table: TableConfig, done: int, total: int) -> None: ...


class TableOffload:
    """Runs the offload of one table; built per run by the composition root."""

    def __init__(
        self,
        table: TableConfig,
        config: Config,
        engine: Engine,
        sink: Sink,
        state: StateStore,
        *,
        observer: Observer | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.config = config
        self.engine = engine
        self.sink = sink
        self.state = state
        self.observer = observer or Observer()
        self.stop = stop or threading.Event()
        self.clock = clock
        self.safety_lag = table.safety_lag if table.safety_lag is not None else config.source.safety_lag
        self.max_window = table.max_window if table.max_window is not None else config.source.max_window
        self.options = types.TypeOptions(
            uint64=table.uint64,  # type: ignore[arg-type]
            bigint=table.bigint,  # type: ignore[arg-type]
            truncate_datetime64=table.truncate_datetime64,
        )

    # -- the run -------------------------------------------------------------------------

    def run(self) -> TableResult:
        run_id = uuid.uuid4().hex
        log = structlog.get_logger("offloader").bind(table=self.table.name, run_id=run_id)
        result = TableResult(self.table.name, run_id, "failed")
        started = self.clock()
        with self.state.lock(self.table.name) as taken:
            if not taken:
                result.outcome = "skipped"
                result.reason = "another runner holds this table's lock"
                result.error = LockBusyError(result.reason)
                log.warning("table_locked", reason=result.reason)
                return result
            record = RunRecord(run_id=run_id, table_name=self.table.name, started_at=started)
            self.state.record_run(record)
            log.info("table_started", mode=self.table.mode)
            try:
                self._run_locked(result, record, log)
            except ShutdownRequested as exc:
                result.outcome = "stopped"
                result.error = exc
                result.reason = str(exc)
                log.info("table_stopped", reason=result.reason, windows=result.windows, rows=result.rows)
            except OffloaderError as exc:
                result.outcome = "failed"
                result.error = exc
                result.reason = str(exc).splitlines()[0]
                log.error("table_failed", error_type=exc.kind, error=result.reason, retryable=exc.retryable)
            except Exception as exc:  # a bug must not take the other tables down with it
                result.outcome = "failed"
                result.error = InternalError(f"internal error: {type(exc).__name__}: {exc}")
                result.reason = str(result.error).splitlines()[0]
                log.exception("table_failed", error_type="internal_error", error=result.reason, retryable=False)
            finally:
                result.duration = self.clock() - started
                self._finish(record, result, log)
        return result

    def _finish(self, record: RunRecord, result: TableResult, log: Any) -> None:
        record.finished_at = self.clock()
        record.duration_seconds = result.duration
        record.outcome = result.outcome
        record.rows_written, record.bytes_written, record.files_written = result.rows, result.bytes, result.files
        record.windows, record.snapshot_id = result.windows, result.snapshot_id
        if result.error is not None:
            record.error_class = type(result.error).__name__
            record.error_message = str(result.error)[:2000]
        try:
            self.state.record_run(record)
        except OffloaderError as exc:
            log.error("run_history_failed", error=str(exc))
        if result.ok:
            log.info(
                "table_finished", outcome=result.outcome, rows=result.rows, windows=result.windows,
                files=result.files, bytes=result.bytes, seconds=round(result.duration, 3),
            )  # fmt: skip

    def prepare(self) -> tuple[Source, Any, Any, SinkTable]:
        """The source, its column plans and Iceberg schema, and the (created if new) sink table."""
        source = Source(self.engine, self.table.source_database, self.table.source_table, self.table.cursor)
        plans = types.plan_columns(source.columns(), self.options)
        schema = types.iceberg_schema(plans)
        sink_table = self.sink.open(self.table, schema, self.table.target_file_size or self.config.offload.target_file_size)
        return source, plans, schema, sink_table

    def replace_range(
        self, start: str, end: str, marker: dict[str, Any], result: TableResult, log: Any,
        prepared: tuple[Source, Any, Any, SinkTable] | None = None,
    ) -> WindowResult | None:  # fmt: skip
        """Make Iceberg's rows with ``start <= time <= end`` those of ClickHouse, in ONE commit.

        Used behind the cursor (repair, reset): the source rows of the range are written, the
        files holding Iceberg rows of the range are rewritten without them, and the snapshot
        carries ``marker``. The rows written must equal count() of the range in ClickHouse.
        Returns None when neither side holds a row of the range. The caller holds the lock.
        """
        source, plans, schema, sink_table = prepared or self.prepare()
        window = Window(Cursor((start,)), end, inclusive=True)
        stats = source.stats(window)
        tx = self._write_window(source, sink_table, plans, schema, window)
        self._verify(tx, stats.rows, window, result, log)
        replaced = tx.replaced_files(self.table.cursor[0], micros(start), micros(end))
        if not stats.rows and not replaced:
            tx.discard()
            return None
        marker = {**marker, ROWS_KEY: str(stats.rows)}
        snapshot_id = self._commit(sink_table, tx, marker, replaced, log)
        return self._committed(tx, snapshot_id, json.loads(marker[CURSOR_KEY]), window, result, log)

    def _run_locked(self, result: TableResult, record: RunRecord, log: Any) -> None:
        source, plans, schema, sink_table = self.prepare()
        attempts = self.config.offload.commit_attempts
        for attempt in range(1, attempts + 1):
            try:
                self._offload(source, sink_table, plans, schema, result, record, log)
                result.outcome = "committed" if result.windows else "nothing_new"
                return
            except CommitConflictError as exc:
                result.conflicts += 1
                self.observer.conflict(self.table)
                log.warning("commit_conflict", attempt=attempt, attempts=attempts, error=str(exc))
                if attempt == attempts:
                    raise
                sink_table.refresh()

    def _reconcile(self, marker: Marker | None, log: Any) -> Cursor | None:
        """The Iceberg marker is the truth: repair a mirror behind it, stop on one ahead of it."""
        mirror = self.state.mirror(self.table.name)
        truth = Cursor.from_json(marker.cursor) if marker else None
        claimed = Cursor.from_json(mirror.cursor) if mirror and mirror.cursor else None
        try:
            ahead = claimed is not None and (truth is None or claimed.sort_key() > truth.sort_key())
        except TypeError:  # a hand-edited mirror whose values are not of the cursor's types
            raise MirrorAheadError(
                f"the state mirror of {self.table.name} holds cursor {claimed.to_json() if claimed else None}, which cannot be "
                f"compared with Iceberg's {truth.to_json() if truth else None}; refusing to run. "
                f"Run `offloader mirror reset --table {self.table.name}` to rebuild it from Iceberg"
            ) from None
        if ahead and claimed is not None:
            raise MirrorAheadError(
                f"the state mirror of {self.table.name} claims cursor {claimed.to_json()} but Iceberg "
                f"{self.table.target} holds {truth.to_json() if truth else 'nothing'}; refusing to run, "
                "because trusting the mirror would lose rows. If the Iceberg table was recreated on purpose, "
                f"run `offloader mirror reset --table {self.table.name}`"
            )
        if (
            marker is not None
            and truth is not None
            and (
                claimed is None or claimed.sort_key() < truth.sort_key() or (mirror and mirror.snapshot_id != marker.snapshot_id)
            )
        ):
            self.state.set_mirror(self.table.name, self.table.target, marker.cursor, marker.snapshot_id, marker.run_id)
            if claimed is None or claimed.sort_key() != truth.sort_key():
                log.warning("mirror_repaired", mirror=claimed.to_json() if claimed else None, iceberg=marker.cursor)
        return truth

    def _offload(
        self, source: Source, sink_table: SinkTable, plans: Any, schema: Any,
        result: TableResult, record: RunRecord, log: Any,
    ) -> None:  # fmt: skip
        cursor = self._reconcile(sink_table.marker(), log)
        sink_table.prune_metadata(log)
        now = source.server_now()
        hi = format_time(now - timedelta(seconds=self.safety_lag))
        record.window_lo, record.window_hi = (cursor.time if cursor else None), hi
        if self.table.mode == "replace":
            frozen = format_time(now - timedelta(seconds=self.safety_lag + self.table.replace_lookback))
            self._replace_windows(source, sink_table, plans, schema, cursor, hi, frozen, result, log)
            return
        total, first = source.backlog(cursor, hi)  # counted once, for progress
        done = 0
        while first is not None:
            self._check_stop()
            end = source.window_end(first, self.max_window, hi)
            window = Window(cursor, end)
            outcome = self._append_window(source, sink_table, plans, schema, window, result, log)
            if outcome is None:
                break
            cursor = Cursor.from_json(outcome.cursor)
            done += outcome.rows
            self.observer.progress(self.table, done, max(total, done))
            first = source.first_pending(cursor, hi)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise ShutdownRequested(f"{self.table.name}: stopping; the window in flight was abandoned before its commit")

    # -- one window ----------------------------------------------------------------------

    def _write_window(self, source: Source, sink_table: SinkTable, plans: Any, schema: Any, window: Window) -> WindowWrite:
        """Stream the window's rows into data files of an open transaction; return it."""
        tx = sink_table.begin(schema)
        try:
            target = tx.arrow_schema
            select = [p.select_sql for p in plans]
            buffered: list[pa.RecordBatch] = []
            size = 0
            limit = self.config.offload.batch_bytes
            for batch in read_ahead(source.read(window, select)):
                if batch.num_rows == 0:
                    continue
                converted = types.convert_batch(batch, plans, target)
                buffered.append(converted)
                size += converted.nbytes
                if size >= limit:
                    self._check_stop()
                    tx.write(pa.Table.from_batches(buffered, schema=target))
                    buffered, size = [], 0
            checkpoint("after_read")
            if buffered:
                tx.write(pa.Table.from_batches(buffered, schema=target))
            tx.flush()
            checkpoint("after_write")
            self._check_stop()
            return tx
        except BaseException:
            tx.discard()
            raise

    def _commit(self, sink_table: SinkTable, tx: WindowWrite, marker: dict[str, Any], replaced: list[Any], log: Any) -> int:
        """Commit one window; settle an unknown outcome from the snapshot history."""
        try:
            if reply_lost("before"):
                raise CommitUnknownError(
                    f"{self.table.target}: the catalog connection was lost (fault injected before the commit)"
                )
            snapshot_id = int(tx.commit(marker, replaced))
            if reply_lost("after"):
                raise CommitUnknownError(
                    f"{self.table.target}: the catalog connection was lost (fault injected after the commit)"
                )
            return snapshot_id
        except CommitConflictError:
            tx.discard()
            raise
        except CommitUnknownError as exc:
            log.warning("commit_unknown", commit_id=marker[COMMIT_KEY], error=str(exc))
            sink_table.refresh()  # a CatalogError here leaves the files: they may be committed
            found = sink_table.find_commit(marker[COMMIT_KEY])
            if found is not None:
                log.info("commit_settled", commit_id=marker[COMMIT_KEY], landed=True, snapshot_id=found)
                return found
            log.info("commit_settled", commit_id=marker[COMMIT_KEY], landed=False)
            tx.discard()
            raise CatalogError(f"{self.table.target}: the commit did not land ({exc}); the window will be taken again") from exc
        except BaseException:
            tx.discard()
            raise

    def _marker(self, result: TableResult, cursor: list[Any], rows: int, hi: str) -> dict[str, Any]:
        return {
            CURSOR_KEY: json.dumps(cursor),
            RUN_KEY: result.run_id,
            COMMIT_KEY: uuid.uuid4().hex,
            ROWS_KEY: str(rows),
            HI_KEY: hi,
            "offloader.table": self.table.name,
            "offloader.version": __version__,
        }

    def _append_window(
        self, source: Source, sink_table: SinkTable, plans: Any, schema: Any,
        window: Window, result: TableResult, log: Any,
    ) -> WindowResult | None:  # fmt: skip
        stats = source.stats(window)
        if stats.rows == 0 or stats.last is None:
            return None
        tx = self._write_window(source, sink_table, plans, schema, window)
        self._verify(tx, stats.rows, window, result, log)
        marker = self._marker(result, stats.last.to_json(), stats.rows, window.hi)
        snapshot_id = self._commit(sink_table, tx, marker, [], log)
        return self._committed(tx, snapshot_id, stats.last.to_json(), window, result, log)

    def _verify(self, tx: WindowWrite, expected: int, window: Window, result: TableResult, log: Any) -> None:
        if tx.written.rows == expected:
            log.debug("window_verified", rows=expected, window_hi=window.hi)
            return
        result.mismatches += 1
        self.observer.mismatch(self.table)
        written = tx.written.rows
        tx.discard()
        raise WindowMismatchError(
            f"{self.table.name}: window up to {window.hi} wrote {written} rows but count() in ClickHouse "
            f"says {expected}; nothing was committed"
        )

    def _committed(
        self, tx: WindowWrite, snapshot_id: int, cursor: list[Any], window: Window, result: TableResult, log: Any
    ) -> WindowResult:
        checkpoint("after_commit")
        tx.owner.prune_metadata(log)
        self.state.set_mirror(self.table.name, self.table.target, cursor, snapshot_id, result.run_id)
        checkpoint("after_state")
        done = WindowResult(tx.written.rows, tx.written.bytes, len(tx.written.files), snapshot_id, cursor)
        result.rows += done.rows
        result.bytes += done.bytes
        result.files += done.files
        result.windows += 1
        result.snapshot_id = snapshot_id
        result.cursor = cursor
        result.window_results.append(done)
        self.observer.window_committed(self.table, done)
        log.info(
            "offload_committed", rows=done.rows, files=done.files, bytes=done.bytes,
            snapshot_id=snapshot_id, cursor=cursor, window_hi=window.hi,
        )  # fmt: skip
        return done

    # -- replace mode --------------------------------------------------------------------

    def _replace_windows(
        self, source: Source, sink_table: SinkTable, plans: Any, schema: Any,
        frozen_cursor: Cursor | None, hi: str, frozen: str, result: TableResult, log: Any,
    ) -> None:  # fmt: skip
        first = source.first_pending(frozen_cursor, hi, inclusive=True)
        if first is None:
            return
        floor = frozen_cursor.time if frozen_cursor else None
        start = floor or first
        column = self.table.cursor[0]
        while True:
            self._check_stop()
            end = source.window_end(start, self.max_window, hi)
            window = Window(Cursor((start,)), end, inclusive=True)
            stats = source.stats(window)
            tx = self._write_window(source, sink_table, plans, schema, window)
            self._verify(tx, stats.rows, window, result, log)
            replaced = tx.replaced_files(column, micros(start), micros(end))
            if stats.rows or replaced:
                moved = min(end, frozen, key=lambda t: parse_time(t))
                if floor is not None and parse_time(moved) < parse_time(floor):
                    moved = floor
                marker = self._marker(result, [moved], stats.rows, end)
                snapshot_id = self._commit(sink_table, tx, marker, replaced, log)
                self._committed(tx, snapshot_id, [moved], window, result, log)
                floor = moved
            else:
                tx.discard()
            if parse_time(end) >= parse_time(hi):
                return
            following = source.first_pending(Cursor((end,)), hi)
            if following is None:
                return
            start = following

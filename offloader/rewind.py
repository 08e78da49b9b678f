"""Watermark operations: moving a table's committed cursor back (`offloader reset`).

A reset to time T is ONE Iceberg commit that deletes the rows after T (rewriting the files
that straddle it) and records the new cursor in its snapshot summary: the greatest source
cursor tuple at or before T, or T alone when ClickHouse holds nothing that old. A
replace-mode table's cursor becomes T itself: its next window starts at T and rewrites the
rows from T on, so the rows at T are read again, never deleted unread. Iceberg keeps
every row up to T, so the next cycle takes the rows after T exactly once. T is widened to
the end of its microsecond, the precision Iceberg stores, so a nanosecond source never
leaves a row on both sides of the cut.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from offloader.config import Config, TableConfig
from offloader.errors import ConfigError, LockBusyError, OffloaderError
from offloader.maintenance import ActionResult, MaintenanceObserver, audit
from offloader.offload import TableOffload, TableResult
from offloader.ports import COMMIT_KEY, CURSOR_KEY, HI_KEY, ROWS_KEY, RUN_KEY, Engine
from offloader.sink import Sink
from offloader.source import format_time, micros, parse_time

FAR_FUTURE = "2261-12-31 23:59:59.999999999"


@dataclass
class ResetResult:
    table: str
    old_cursor: list[Any]
    new_cursor: list[Any]
    rows_deleted: int
    snapshot_id: int | None


class TableReset:
    """Moves one table's cursor back to a time, in one commit, under the table's lock."""

    def __init__(
        self,
        table: TableConfig,
        config: Config,
        engine: Engine,
        sink: Sink,
        state: Any,
        *,
        observer: MaintenanceObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.config = config
        self.engine = engine
        self.sink = sink
        self.state = state
        self.observer = observer or MaintenanceObserver()
        self.clock = clock
        self.log = structlog.get_logger("offloader").bind(table=table.name)

    def run(self, to: str) -> ResetResult:
        started = self.clock()
        action = ActionResult(self.table.name, "reset")
        try:
            with self.state.lock(self.table.name, wait=self.config.maintenance.lock_wait) as taken:
                if not taken:
                    raise LockBusyError(f"{self.table.name}: another runner held the table's lock past maintenance.lock_wait")
                done = self._reset(to)
            action.snapshot_id = done.snapshot_id
            action.detail = f"cursor {done.old_cursor} -> {done.new_cursor}; {done.rows_deleted} rows deleted from Iceberg"
            return done
        except OffloaderError as exc:
            action.outcome, action.error, action.detail = "failed", exc, str(exc).splitlines()[0]
            raise
        finally:
            action.duration = self.clock() - started
            audit(self.state, action, started, self.log)
            self.observer.action_finished(self.table, action)

    def _reset(self, to: str) -> ResetResult:
        offload = TableOffload(self.table, self.config, self.engine, self.sink, self.state)
        prepared = offload.prepare()
        source, _, _, sink_table = prepared
        marker = sink_table.marker()
        if marker is None:
            raise ConfigError(f"reset {self.table.name}: nothing was offloaded yet; there is no cursor to move back")
        cut = format_time(parse_time(to)) + "999"  # the end of T's microsecond
        if micros(cut) >= micros(str(marker.cursor[0])):
            raise ConfigError(
                f"reset {self.table.name} --to {to}: the committed cursor is {marker.cursor}; --to must be before it"
            )
        if self.table.mode == "replace":
            # A replace window starts AT the cursor and rewrites what Iceberg holds from there:
            # the cursor is T itself, so the next window reads the rows at T again before it
            # replaces them (a cursor past T would delete them unread).
            new_cursor = [format_time(parse_time(to))]
        else:
            last = source.last_at_or_before(cut)
            new_cursor = last.to_json() if last is not None else [cut]
        before = sink_table.row_count()
        run = TableResult(self.table.name, uuid.uuid4().hex, "committed")
        props = {
            CURSOR_KEY: json.dumps(new_cursor), RUN_KEY: run.run_id, COMMIT_KEY: uuid.uuid4().hex,
            ROWS_KEY: "0", HI_KEY: cut, "offloader.operation": "reset",
        }  # fmt: skip
        tx = sink_table.begin(sink_table.schema)
        replaced = tx.replaced_files(self.table.cursor[0], micros(cut) + 1, micros(FAR_FUTURE))
        snapshot_id = offload._commit(sink_table, tx, props, replaced, self.log)
        self.state.set_mirror(self.table.name, self.table.target, new_cursor, snapshot_id, run.run_id)
        deleted = before - sink_table.row_count()
        self.log.warning("cursor_reset", old=marker.cursor, new=new_cursor, rows_deleted=deleted, snapshot_id=snapshot_id)
        return ResetResult(self.table.name, marker.cursor, new_cursor, deleted, snapshot_id)

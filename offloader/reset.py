"""Moving a table's committed cursor back: ``offloader reset``.

A reset to time T is ONE Iceberg commit that deletes the rows after T (rewriting the files
that straddle it) and records the new cursor in its snapshot summary: the greatest source
cursor tuple at or before T, or T alone when ClickHouse holds nothing that old. A
replace-mode table's cursor becomes T itself: its next window starts at T and rewrites the
rows from T on, so the rows at T are read again, never deleted unread. Iceberg keeps
every row up to T, so the next cycle takes the rows after T exactly once. T is widened to
the end of its microsecond, the precision Iceberg stores, so a nanosecond source never
leaves a row on both sides of the cut. The reset is audited, whatever its outcome.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from offloader.cursor import FAR_FUTURE, format_time, from_micros, micros, parse_time
from offloader.errors import ConfigError
from offloader.job import TableJob, finish_action, guarded
from offloader.results import ActionResult
from offloader.window import Windows


@dataclass
class ResetResult:
    table: str
    old_cursor: list[Any]
    new_cursor: list[Any]
    rows_deleted: int
    snapshot_id: int | None


class Reset:
    """Moves one table's cursor back to a time, in one commit, under the table's lock."""

    def __init__(self, job: TableJob) -> None:
        self.job = job
        self.table = job.table
        self.log = job.log

    def run(self, to: str) -> ResetResult:
        """The reset; raises what stopped it (the lock, a bad time, the catalog) after auditing it."""
        started = self.job.clock()
        action = ActionResult(self.table.name, "reset")
        done: list[ResetResult] = []
        wait = self.job.config.maintenance.lock_wait
        outcome = guarded(self.job, lambda: done.append(self._reset(to)), self.log, wait=wait, crashed="reset_crashed")
        action.duration = self.job.clock() - started
        if done:
            action.snapshot_id = done[0].snapshot_id
            action.detail = (
                f"cursor {done[0].old_cursor} -> {done[0].new_cursor}; {done[0].rows_deleted} rows deleted from Iceberg"
            )
        else:
            action.outcome, action.error, action.detail = "failed", outcome.error, outcome.detail
            if outcome.locked:
                action.detail = f"{self.table.name}: {outcome.detail}"
        finish_action(self.job, action, started, self.log, "reset_finished", outcome=action.outcome, detail=action.detail)
        if outcome.error is not None:
            if outcome.locked:
                raise type(outcome.error)(action.detail)
            raise outcome.error
        return done[0]

    def _reset(self, to: str) -> ResetResult:
        windows = Windows(self.job, uuid.uuid4().hex, self.log)
        marker = windows.table.marker()
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
            last = windows.source.last_at_or_before(cut)
            new_cursor = last.to_json() if last is not None else [cut]
        before = windows.table.row_count()
        props = windows.marker(new_cursor, 0, cut, **{"offloader.operation": "reset"})
        committed = windows.replace(from_micros(micros(cut) + 1), FAR_FUTURE, props, read=False)
        snapshot_id = committed.snapshot_id if committed is not None else None
        deleted = before - windows.table.row_count()
        self.log.warning("cursor_reset", old=marker.cursor, new=new_cursor, rows_deleted=deleted, snapshot_id=snapshot_id)
        return ResetResult(self.table.name, marker.cursor, new_cursor, deleted, snapshot_id)

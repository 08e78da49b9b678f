"""Undoing commits: ``offloader rollback`` makes an earlier snapshot of a table's lineage current.

The rollback is ONE Iceberg commit that sets the table's main branch back to a snapshot of
its current lineage; the snapshots after it leave the lineage, and with them their rows and
their markers. The cursor follows by itself: the marker is the newest one in the lineage, so
it is now the target's, and the next cycle takes again, exactly once, every source row after
it. A target that carries no marker is accepted only when nothing before it does and it
holds no row: the table then starts over from the oldest source row.

The state mirror is moved back BEFORE the commit, to the target's cursor with no snapshot
yet, and records the snapshot after it: a mirror behind Iceberg is repaired by the next run,
one ahead of it would stop the table (``MirrorAheadError``). A crash between the two leaves
the mirror behind or equal, never ahead; a commit that fails puts it back. Then the federated view follows (the after-commit
hook), and the rollback is audited, whatever its outcome, like ``reset``. Replace-mode and
``corrections`` tables need nothing more: every marker of theirs already says where their
next run starts over (a replace window rewrites from its cursor, a correction is replayed
from the last one the marker records), so a target's marker is as sound as the newest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from offloader.errors import CatalogError, CommitUnknownError, OffloaderError, UsageError
from offloader.faults import ROLLBACK_POINT, checkpoint
from offloader.job import TableJob, finish_action, guarded
from offloader.ports import LineageEntry, SinkTable
from offloader.results import ActionResult


@dataclass
class RollbackResult:
    table: str
    from_snapshot: int
    to_snapshot: int
    old_cursor: list[Any] | None
    new_cursor: list[Any] | None
    undone: list[int]  # the snapshots that left the lineage, newest first
    rows_before: int
    rows_after: int


class Rollback:
    """Lists a table's lineage, and makes one of its earlier snapshots current, under the table's lock."""

    def __init__(self, job: TableJob) -> None:
        self.job = job
        self.table = job.table
        self.log = job.log

    def lineage(self) -> list[LineageEntry]:
        """The snapshots of the table's current lineage, newest first (none before its first commit)."""
        sink_table = self.job.sink.load(self.table, writable=False)
        return sink_table.lineage() if sink_table is not None else []

    def run(self, snapshot_id: int) -> RollbackResult:
        """The rollback; raises what stopped it (the lock, a refused target, the catalog) after auditing it."""
        started = self.job.clock()
        action = ActionResult(self.table.name, "rollback")
        done: list[RollbackResult] = []
        wait = self.job.config.maintenance.lock_wait
        outcome = guarded(
            self.job, lambda: done.append(self._roll_back(snapshot_id)), self.log, wait=wait, crashed="rollback_crashed"
        )
        action.duration = self.job.clock() - started
        if done:
            r = done[0]
            action.snapshot_id = r.to_snapshot
            action.detail = (
                f"snapshot {r.from_snapshot} -> {r.to_snapshot}; cursor {r.old_cursor} -> {r.new_cursor}; "
                f"{len(r.undone)} snapshot(s) undone ({', '.join(map(str, r.undone))}); rows {r.rows_before} -> {r.rows_after}"
            )
        else:
            action.outcome, action.error, action.detail = "failed", outcome.error, outcome.detail
            if outcome.locked:
                action.detail = f"rollback {self.table.name} refused: {outcome.detail}; nothing changed"
        finish_action(self.job, action, started, self.log, "rollback_finished", outcome=action.outcome, detail=action.detail)
        if outcome.error is not None:
            if outcome.locked:
                raise type(outcome.error)(action.detail)
            raise outcome.error
        return done[0]

    def _roll_back(self, snapshot_id: int) -> RollbackResult:
        t = self.table
        sink_table = self.job.sink.load(t)
        lineage = sink_table.lineage() if sink_table is not None else []
        if sink_table is None or not lineage:
            raise UsageError(f"rollback {t.name}: nothing was offloaded yet; there is no commit to undo")
        current, ids = lineage[0], [e.snapshot_id for e in lineage]
        if snapshot_id not in ids:
            raise UsageError(self._not_in_lineage(sink_table, snapshot_id))
        if snapshot_id == current.snapshot_id:
            raise UsageError(f"rollback {t.name} --to {snapshot_id}: that is the current snapshot; there is nothing to undo")
        position = ids.index(snapshot_id)
        target, undone = lineage[position], ids[:position]
        if target.cursor is None and (target.rows or any(e.cursor is not None for e in lineage[position + 1 :])):
            raise UsageError(
                f"rollback {t.name} --to {snapshot_id}: that snapshot carries no offloader cursor (another writer made it), "
                f"and it holds {target.rows} rows or follows an offloader commit: the next run could not tell which "
                "source rows it holds. Roll back to a snapshot that lists a cursor"
            )
        marker = sink_table.marker()
        old_cursor = marker.cursor if marker is not None else None
        # the mirror goes back first: if the commit then fails, the next run finds it behind and repairs it
        self.job.state.set_mirror(t.name, t.target, target.cursor, None, None)
        try:
            self._commit(sink_table, snapshot_id)
        except OffloaderError:  # nothing changed in Iceberg: the mirror goes back to its marker
            if marker is not None:
                self.job.state.set_mirror(t.name, t.target, marker.cursor, marker.snapshot_id, marker.run_id)
            raise
        checkpoint(ROLLBACK_POINT)
        sink_table.prune_metadata(self.log, after_commit=True)
        now = sink_table.marker()
        self.job.state.set_mirror(
            t.name, t.target, now.cursor if now else None, now.snapshot_id if now else None, now.run_id if now else None
        )
        self.job.committed(sink_table)
        self.log.warning(
            "rolled_back",
            from_snapshot=current.snapshot_id,
            to_snapshot=snapshot_id,
            old=old_cursor,
            new=target.cursor,
            undone=undone,
        )
        return RollbackResult(
            t.name, current.snapshot_id, snapshot_id, old_cursor, target.cursor, undone, current.rows, target.rows
        )

    def _commit(self, sink_table: SinkTable, snapshot_id: int) -> None:
        """The one commit; an unknown outcome is settled by looking at the current snapshot, never retried."""
        try:
            sink_table.roll_back(snapshot_id)
        except CommitUnknownError as exc:
            self.log.warning("commit_unknown", snapshot_id=snapshot_id, error=str(exc))
            sink_table.refresh()
            now = sink_table.lineage()
            landed = bool(now) and now[0].snapshot_id == snapshot_id
            self.log.info("commit_settled", snapshot_id=snapshot_id, landed=landed)
            if not landed:
                raise CatalogError(f"{self.table.target}: the rollback did not land ({exc}); run it again") from exc

    def _not_in_lineage(self, sink_table: SinkTable, snapshot_id: int) -> str:
        """Why ``snapshot_id`` cannot be rolled back to: not a snapshot of the table, or off its lineage."""
        where = f"rollback {self.table.name} --to {snapshot_id}"
        if any(int(s.snapshot_id) == snapshot_id for s in sink_table.snapshots()):
            return (
                f"{where}: that snapshot is not in the table's current lineage (it was rolled back from, or is on "
                "another branch); making it current would bring back what was undone. "
                f"`offloader rollback --table {self.table.name}` lists the snapshots you can go back to"
            )
        return (
            f"{where}: {self.table.target} has no such snapshot (a wrong id, or expired by maintenance). "
            f"`offloader rollback --table {self.table.name}` lists the snapshots you can go back to"
        )

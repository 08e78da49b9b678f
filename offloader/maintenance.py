"""Keeping the cold tier healthy: compaction, snapshot expiry and orphan removal.

Each action runs on one table under the same runner lock as the offload (waiting up to
``maintenance.lock_wait`` for a run in flight), is written to ``maintenance_audit_log`` and
counted in metrics, dry runs included.

- **compact**: bin-packs the small data files of each partition that no longer receives rows
  (a time partition before the cursor's, or, without a time partition on the cursor column,
  files whose rows are all older than the cursor minus ``maintenance.settle``) into files of
  ``maintenance.target_file_size``, in ONE overwrite snapshot per table. The rows written
  must number the rows read or nothing is committed; the snapshot carries the offload
  marker forward, so the next run finds its cursor exactly as before.
- **expire_snapshots**: drops snapshots older than ``maintenance.retain``, never the branch
  and tag heads nor the lineage back to the newest snapshot carrying the marker.
- **remove_orphans**: deletes files under the table's location that no remaining snapshot
  or metadata file refers to and that are older than ``maintenance.orphan_age``; a write in
  flight (younger) is never touched, and a listing that does not match the table's own
  files stops the action instead of deleting anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import pyarrow as pa

from offloader.config import format_duration
from offloader.cursor import micros
from offloader.errors import CatalogError, CommitConflictError
from offloader.job import TableJob, finish_action, guarded, settle
from offloader.ports import DataFileEntry, SinkTable, plain_location
from offloader.results import MAINTENANCE_ACTIONS, ActionResult

SMALL = 0.75  # a file under this share of the target size is worth compacting
CHUNK_BYTES = 32 * 2**20


class Maintenance:
    """The maintenance of one table: each action under the table's lock, audited."""

    def __init__(self, job: TableJob) -> None:
        self.job = job
        self.table = job.table
        self.settings = job.config.maintenance
        self.log = job.log

    def run(self, actions: tuple[str, ...] = MAINTENANCE_ACTIONS, *, dry_run: bool = False) -> list[ActionResult]:
        results: list[ActionResult] = []

        def body() -> None:
            loaded = self.job.sink.load(self.table, writable=not dry_run)
            for action in actions:
                results.append(self._action(action, loaded, dry_run))
                if loaded is not None and results[-1].snapshot_id is not None and not dry_run:
                    self.job.committed(loaded)  # the view leaves compacted files before expiry may delete them

        outcome = guarded(
            self.job, body, self.log, wait=self.settings.lock_wait, crashed="maintenance_crashed", stopped="skipped"
        )
        for action in actions[len(results) :]:  # the lock or the table could not be had: each action says why
            started = self.job.clock()
            result = ActionResult(self.table.name, action, dry_run=dry_run, outcome=outcome.outcome, detail=outcome.detail)
            result.error = outcome.error if outcome.outcome == "failed" else None
            self._finish(result, started)
            results.append(result)
        return results

    def _action(self, action: str, loaded: Any, dry_run: bool) -> ActionResult:
        """One action on the loaded table (None: not created yet), settled and recorded."""
        started = self.job.clock()
        result = ActionResult(self.table.name, action, dry_run=dry_run)
        if loaded is None:
            result.outcome, result.detail = "nothing_to_do", "the Iceberg table does not exist yet"
        else:
            done = settle(
                partial(self._run_action, action, loaded, result), self.log, crashed="maintenance_crashed", stopped="skipped"
            )
            if not done.ok:
                result.outcome, result.detail = done.outcome, done.detail
                result.error = done.error if done.outcome == "failed" else None
        self._finish(result, started)
        return result

    def _run_action(self, action: str, sink_table: SinkTable, result: ActionResult) -> None:
        self.job.check_stop("the service is stopping")
        {"compact": self.compact, "expire_snapshots": self.expire, "remove_orphans": self.remove_orphans}[action](
            sink_table, result
        )

    def _finish(self, result: ActionResult, started: float) -> None:
        result.duration = self.job.clock() - started
        finish_action(
            self.job, result, started, self.log, "maintenance_failed" if result.outcome == "failed" else "maintenance_action",
            action=result.action, outcome=result.outcome, dry_run=result.dry_run, detail=result.detail,
            files_before=result.files_before, files_after=result.files_after, seconds=round(result.duration, 3),
        )  # fmt: skip

    # -- compaction --------------------------------------------------------------------

    def plan_compaction(self, sink_table: SinkTable) -> tuple[list[DataFileEntry], dict[str, list[DataFileEntry]]]:
        """All live data files, and the groups of small files to bin-pack, by partition."""
        column = self.table.cursor[0]
        entries = sink_table.data_files(column)
        marker = sink_table.marker()
        if marker is None or not entries:
            return entries, {}
        cursor = micros(str(marker.cursor[0]))
        cursor_partition = sink_table.time_partition_of(column, cursor)
        settled = cursor - int(self.settings.settle * 1_000_000)
        target = self.settings.target_file_size
        default_spec = sink_table.default_spec_id

        def closed(entry: DataFileEntry) -> bool:
            if cursor_partition is not None:
                return entry.time_partition is not None and entry.time_partition < cursor_partition
            return entry.time_upper is not None and entry.time_upper < settled

        groups: dict[str, list[DataFileEntry]] = {}
        for entry in entries:
            if entry.size < target * SMALL and not entry.has_deletes and entry.spec_id == default_spec and closed(entry):
                groups.setdefault(entry.partition, []).append(entry)
        packable = {
            key: sorted(files, key=lambda e: (e.time_lower is None, e.time_lower or 0))
            for key, files in groups.items()
            if len(files) > 1
        }
        return entries, packable

    def compact(self, sink_table: SinkTable, result: ActionResult) -> None:
        target = self.settings.target_file_size
        for attempt in range(1, 4):
            entries, groups = self.plan_compaction(sink_table)
            result.files_before, result.bytes_before = len(entries), sum(e.size for e in entries)
            old = [e for files in groups.values() for e in files]
            if not old:
                result.outcome = "nothing_to_do"
                result.files_after, result.bytes_after = result.files_before, result.bytes_before
                result.data_files = len(entries)
                result.detail = "no partition that no longer receives rows has two or more small files"
                return
            old_bytes = sum(e.size for e in old)
            estimate = sum(max(1, -(-sum(e.size for e in files) // target)) for files in groups.values())
            result.detail = (
                f"{len(old)} small files ({old_bytes} bytes, {sum(e.rows for e in old)} rows) in {len(groups)} "
                f"partitions into about {estimate} files of up to {target} bytes: "
                + ", ".join(f"{key.split(':', 1)[1]} ({len(files)} files)" for key, files in list(groups.items())[:20])
            )
            if result.dry_run:
                result.files_removed, result.files_added = len(old), estimate
                result.files_after = len(entries) - len(old) + estimate
                result.data_files = len(entries)
                return
            try:
                snapshot_id, added = sink_table.rewrite(
                    old, self._rows(sink_table, old), sink_table.carried_marker("compact"), target
                )
            except CommitConflictError as exc:
                self.log.warning("maintenance_conflict", action="compact", attempt=attempt, error=str(exc))
                if attempt == 3:
                    raise
                sink_table.refresh()
                continue
            result.snapshot_id = snapshot_id
            result.files_removed, result.files_added = len(old), len(added)
            result.bytes_removed = old_bytes
            result.files_after = len(entries) - len(old) + len(added)
            result.bytes_after = result.bytes_before - old_bytes + sum(f.file_size_in_bytes for f in added)
            result.data_files = result.files_after
            result.detail = f"compacted {len(old)} files into {len(added)} in {len(groups)} partitions"
            sink_table.prune_metadata(self.log)
            return

    def _rows(self, sink_table: SinkTable, files: list[DataFileEntry]) -> Iterator[pa.Table]:
        """The rows of ``files`` in order, in chunks of about CHUNK_BYTES."""
        buffered: list[pa.RecordBatch] = []
        size = 0
        for entry in files:
            for batch in sink_table.read_file(entry):
                self.job.check_stop("the service is stopping; the compaction was abandoned before its commit")
                buffered.append(batch)
                size += batch.nbytes
                if size >= CHUNK_BYTES:
                    yield pa.Table.from_batches(buffered)
                    buffered, size = [], 0
        if buffered:
            yield pa.Table.from_batches(buffered)

    # -- snapshot expiry ---------------------------------------------------------------

    def expire(self, sink_table: SinkTable, result: ActionResult) -> None:
        cutoff_ms = (self.job.clock() - self.settings.retain) * 1000
        snapshots = sink_table.snapshots()
        protected = sink_table.protected_snapshots()
        expired = [s.snapshot_id for s in snapshots if s.timestamp_ms < cutoff_ms and s.snapshot_id not in protected]
        kept_old = sum(1 for s in snapshots if s.timestamp_ms < cutoff_ms and s.snapshot_id in protected)
        result.extra["snapshots_before"] = len(snapshots)
        result.detail = (
            f"{len(expired)} of {len(snapshots)} snapshots older than {format_duration(self.settings.retain)}; "
            f"{kept_old} older ones kept for the cursor or a branch"
        )
        if not expired:
            result.outcome = "nothing_to_do"
            return
        if result.dry_run:
            result.snapshots_expired = len(expired)
            return
        sink_table.expire(expired)
        result.snapshots_expired = len(expired)
        result.detail = "expired " + result.detail

    # -- orphan removal ----------------------------------------------------------------

    def remove_orphans(self, sink_table: SinkTable, result: ActionResult) -> None:
        referenced = {plain_location(p) for p in sink_table.referenced_files()}
        listed = sink_table.all_files()
        live = {plain_location(e.path) for e in sink_table.data_files(self.table.cursor[0])}
        seen = {plain_location(path) for path, _, _ in listed}
        if plain_location(sink_table.metadata_location) not in seen or not live <= seen:
            raise CatalogError(
                f"{self.table.target}: the files listed under {sink_table.location} do not include the "
                "table's own metadata and data files; orphan removal deleted nothing"
            )
        cutoff = self.job.clock() - self.settings.orphan_age
        orphans = [(path, size) for path, mtime, size in listed if plain_location(path) not in referenced and mtime < cutoff]
        young = sum(1 for path, mtime, _ in listed if plain_location(path) not in referenced and mtime >= cutoff)
        result.files_before = len(listed)
        result.bytes_before = sum(size for _, _, size in listed)
        result.detail = (
            f"{len(orphans)} unreferenced files older than {format_duration(self.settings.orphan_age)} "
            f"({sum(s for _, s in orphans)} bytes); {young} younger unreferenced files kept"
        )
        if not orphans:
            result.outcome = "nothing_to_do"
            result.files_after, result.bytes_after = result.files_before, result.bytes_before
            return
        if result.dry_run:
            result.files_removed = len(orphans)
            result.files_after = len(listed) - len(orphans)
            result.detail += ": " + ", ".join(path.rsplit("/", 2)[-1] for path, _ in orphans[:20])
            return
        for path, size in orphans:
            sink_table.delete_file(path)
            result.files_removed += 1
            result.bytes_removed += size
        result.files_after = len(listed) - result.files_removed
        result.bytes_after = result.bytes_before - result.bytes_removed
        result.detail = "deleted " + result.detail

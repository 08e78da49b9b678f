"""One window of one table: plan it, write it, verify it, commit it, or replace a range.

A :class:`Windows` is opened per run of an operation on a table. It reads the source's
columns, maps them, and opens (creating if new) the Iceberg table. Then each window is:

1. **written**: the source rows of the window streamed as Arrow batches, converted to the
   table's layout, into Parquet data files of an open write (nothing committed yet);
2. **verified**: the rows written must equal ``count()`` of the window in ClickHouse, or
   the files are discarded and :class:`WindowMismatchError` says so;
3. **committed**: ONE snapshot whose summary carries the marker (cursor, run id, commit id,
   source rows). An unknown outcome (a lost reply) is settled by looking the commit id up in
   the snapshot history, never by a blind retry; a conflict discards the files;
4. **settled**: the metadata pruned and the state mirror moved to the new cursor.

:meth:`Windows.append` takes the rows after a cursor; :meth:`Windows.replace` makes the
Iceberg rows of a time range those of ClickHouse (replace mode, repair) or, without a read,
deletes them (reset). Every operation that writes rows goes through here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa

from offloader import __version__
from offloader.chtypes import TypeOptions
from offloader.convert import convert_batch
from offloader.cursor import Cursor, Window, micros
from offloader.errors import CatalogError, CommitConflictError, CommitUnknownError, MirrorAheadError, WindowMismatchError
from offloader.faults import checkpoint, reply_lost
from offloader.job import TableJob
from offloader.ports import COMMIT_KEY, CORRECTIONS_KEY, CURSOR_KEY, CUT_KEY, HI_KEY, ROWS_KEY, RUN_KEY, Marker, WindowWrite
from offloader.replacing import Replacing
from offloader.replica_lag import replica_delay
from offloader.results import WindowResult
from offloader.source import read_ahead


def carried(marker: Marker | None) -> dict[str, str]:
    """The keys of ``marker`` that every commit after it carries forward."""
    return {CORRECTIONS_KEY: marker.corrections} if marker is not None and marker.corrections else {}


class Windows:
    """The windows of one table for one run: its source, column plans and Iceberg table."""

    def __init__(self, job: TableJob, run_id: str, log: Any) -> None:
        self.job = job
        self.run_id = run_id
        self.log = log
        table = job.table
        options = TypeOptions(
            uint64=table.uint64,  # type: ignore[arg-type]
            bigint=table.bigint,  # type: ignore[arg-type]
            truncate_datetime64=table.truncate_datetime64,
        )
        self.source = job.source()
        columns = self.source.columns()
        self.plans = job.sink.plan_columns(columns, options)
        self.table = job.sink.open(table, self.plans, table.target_file_size or job.config.offload.target_file_size)
        self.replacing = Replacing(table, self.source, columns) if table.corrections == "replacing" else None
        self.mismatches = 0
        self.carried: dict[str, str] | None = None  # marker keys every commit carries forward (the last correction)
        self.cut: str | None = None  # the run's cut, recorded in each snapshot's summary

    def marker(self, cursor: list[Any], rows: int, hi: str, **extra: str) -> dict[str, str]:
        """The summary of a window's snapshot: the cursor it moves to, and who wrote it."""
        return {
            CURSOR_KEY: json.dumps(cursor),
            RUN_KEY: self.run_id,
            COMMIT_KEY: uuid.uuid4().hex,
            ROWS_KEY: str(rows),
            HI_KEY: hi,
            "offloader.table": self.job.table.name,
            "offloader.version": __version__,
            **self.carry(),
            **({CUT_KEY: self.cut} if self.cut else {}),
            **extra,
        }

    def carry(self) -> dict[str, str]:
        """The marker keys every commit carries forward (the last correction applied), read once."""
        if self.carried is None:
            self.carried = carried(self.table.marker())
        return self.carried

    def lag(self) -> float:
        """Seconds a run's end stays behind the server's now(): the safety lag and the source
        replica's delay. Above ``max_replica_delay`` the table does not move (ReplicaLagError)."""
        table, source = self.job.table, self.job.config.source
        delay = replica_delay(self.source.engine, table.source_database, table.source_table)
        self.job.observer.replica_delay(table, delay.seconds)
        if delay.replicas:
            self.log.info("replica_delay", seconds=delay.seconds, read=delay.read, queue_size=delay.queue_size)
        own = table.max_replica_delay is not None
        limit = table.max_replica_delay if table.max_replica_delay is not None else source.max_replica_delay
        delay.check(table.name, limit, f"tables.{table.name}.max_replica_delay" if own else "source.max_replica_delay")
        return (table.safety_lag if table.safety_lag is not None else source.safety_lag) + delay.seconds

    def committed_cursor(self, log: Any) -> Cursor | None:
        """The cursor of the Iceberg marker, the truth: a mirror behind it is repaired, one ahead of it stops the run."""
        marker = self.table.marker()
        self.carried = carried(marker)
        table = self.job.table
        mirror = self.job.state.mirror(table.name)
        truth = Cursor.from_json(marker.cursor) if marker else None
        claimed = Cursor.from_json(mirror.cursor) if mirror and mirror.cursor else None
        try:
            ahead = claimed is not None and (truth is None or claimed.sort_key() > truth.sort_key())
        except TypeError:  # a hand-edited mirror whose values are not of the cursor's types
            raise MirrorAheadError(
                f"the state mirror of {table.name} holds cursor {claimed.to_json() if claimed else None}, which cannot be "
                f"compared with Iceberg's {truth.to_json() if truth else None}; refusing to run. "
                f"Run `offloader mirror reset --table {table.name}` to rebuild it from Iceberg"
            ) from None
        if ahead and claimed is not None:
            raise MirrorAheadError(
                f"the state mirror of {table.name} claims cursor {claimed.to_json()} but Iceberg "
                f"{table.target} holds {truth.to_json() if truth else 'nothing'}; refusing to run, "
                "because trusting the mirror would lose rows. If the Iceberg table was recreated on purpose, "
                f"run `offloader mirror reset --table {table.name}`"
            )
        if (
            marker is not None
            and truth is not None
            and (
                claimed is None or claimed.sort_key() < truth.sort_key() or (mirror and mirror.snapshot_id != marker.snapshot_id)
            )
        ):
            self.job.state.set_mirror(table.name, table.target, marker.cursor, marker.snapshot_id, marker.run_id)
            if claimed is None or claimed.sort_key() != truth.sort_key():
                log.warning("mirror_repaired", mirror=claimed.to_json() if claimed else None, iceberg=marker.cursor)
        return truth

    # -- the steps -----------------------------------------------------------------------

    def write(
        self, window: Window, batches: Iterator[pa.RecordBatch] | None = None,
        sift: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
    ) -> WindowWrite:  # fmt: skip
        """Stream the window's rows (or ``batches``) into data files of an open write; return it.
        ``sift`` sees each converted batch and returns the rows to write (corrections)."""
        tx = self.table.begin(self.plans)
        stop = "the window in flight was abandoned before its commit"
        try:
            target = tx.arrow_schema
            select = [p.select_sql for p in self.plans]
            buffered: list[pa.RecordBatch] = []
            size = 0
            limit = self.job.config.offload.batch_bytes
            for batch in read_ahead(batches if batches is not None else self.source.read(window, select)):
                if batch.num_rows == 0:
                    continue
                converted = convert_batch(batch, self.plans, target)
                converted = sift(converted) if sift is not None else converted
                buffered.append(converted)
                size += converted.nbytes
                if size >= limit:
                    self.job.check_stop(f"{self.job.table.name}: stopping; {stop}")
                    tx.write(pa.Table.from_batches(buffered, schema=target))
                    buffered, size = [], 0
            checkpoint("after_read")
            if buffered:
                tx.write(pa.Table.from_batches(buffered, schema=target))
            tx.flush()
            checkpoint("after_write")
            self.job.check_stop(f"{self.job.table.name}: stopping; {stop}")
            return tx
        except BaseException:
            tx.discard()
            raise

    def verify(self, tx: WindowWrite, expected: int, window: Window) -> None:
        """The rows written must be ``count()`` of the window in ClickHouse, or nothing is committed."""
        if tx.written.rows == expected:
            self.log.debug("window_verified", rows=expected, window_hi=window.hi)
            return
        self.mismatches += 1
        self.job.observer.mismatch(self.job.table)
        written = tx.written.rows
        tx.discard()
        raise WindowMismatchError(
            f"{self.job.table.name}: window up to {window.hi} wrote {written} rows but count() in ClickHouse "
            f"says {expected}; nothing was committed"
        )

    def commit(self, tx: WindowWrite, marker: dict[str, str], replaced: Iterable[Any] = ()) -> int:
        """Commit one window; settle an unknown outcome from the snapshot history."""
        target = self.job.table.target
        try:
            if reply_lost("before"):
                raise CommitUnknownError(f"{target}: the catalog connection was lost (fault injected before the commit)")
            snapshot_id = int(tx.commit(marker, replaced))
            if reply_lost("after"):
                raise CommitUnknownError(f"{target}: the catalog connection was lost (fault injected after the commit)")
            return snapshot_id
        except CommitConflictError:
            tx.discard()
            raise
        except CommitUnknownError as exc:
            self.log.warning("commit_unknown", commit_id=marker[COMMIT_KEY], error=str(exc))
            self.table.refresh()  # a CatalogError here leaves the files: they may be committed
            found = self.table.find_commit(marker[COMMIT_KEY])
            if found is not None:
                self.log.info("commit_settled", commit_id=marker[COMMIT_KEY], landed=True, snapshot_id=found)
                return found
            self.log.info("commit_settled", commit_id=marker[COMMIT_KEY], landed=False)
            tx.discard()
            raise CatalogError(f"{target}: the commit did not land ({exc}); the window will be taken again") from exc
        except BaseException:
            tx.discard()
            raise

    def settle(self, tx: WindowWrite, snapshot_id: int, cursor: list[Any], window_hi: str) -> WindowResult:
        """After a commit: prune the metadata and move the state mirror to ``cursor``."""
        checkpoint("after_commit")
        tx.owner.prune_metadata(self.log, after_commit=True)
        t = self.job.table
        self.job.state.set_mirror(t.name, t.target, cursor, snapshot_id, self.run_id)
        checkpoint("after_state")
        self.job.committed(tx.owner)
        done = WindowResult(tx.written.rows, tx.written.bytes, len(tx.written.files), snapshot_id, cursor)
        self.log.info(
            "offload_committed", rows=done.rows, files=done.files, bytes=done.bytes,
            snapshot_id=snapshot_id, cursor=cursor, window_hi=window_hi,
        )  # fmt: skip
        return done

    # -- whole windows -------------------------------------------------------------------

    def append(self, window: Window) -> WindowResult | None:
        """The rows after the window's cursor up to its end, in one commit; None when there are none."""
        if self.replacing is not None:  # corrections: the window's winners replace older copies
            return self.replacing.append(self, window)
        stats = self.source.stats(window)
        if stats.rows == 0 or stats.last is None:
            return None
        tx = self.write(window)
        self.verify(tx, stats.rows, window)
        cursor = stats.last.to_json()
        snapshot_id = self.commit(tx, self.marker(cursor, stats.rows, window.hi))
        return self.settle(tx, snapshot_id, cursor, window.hi)

    def replace(
        self, start: str, end: str, marker: dict[str, str], *, read: bool = True, advance: bool = False
    ) -> WindowResult | None:
        """Make Iceberg's rows with ``start <= time <= end`` those of ClickHouse, in ONE commit.

        The source rows of the range are written (none when not ``read``: the range is then
        deleted), the files holding Iceberg rows of the range are rewritten without them, and
        the snapshot carries ``marker`` with the source row count. Returns None, committing
        nothing, when a read range is empty on both sides. The caller holds the lock. With
        ``advance``, a range ending at the cursor's time moves the cursor to the greatest tuple
        it wrote (the rows at that time after the cursor are then in Iceberg, taken once).
        """
        window = Window(Cursor((start,)), end, inclusive=True)
        if read:
            stats = self.source.stats(window)
            rows, last = stats.rows, stats.last
            if advance and last is not None and last.sort_key() > Cursor.from_json(json.loads(marker[CURSOR_KEY])).sort_key():
                marker = {**marker, CURSOR_KEY: json.dumps(last.to_json())}
            tx = self.write(window)
            self.verify(tx, rows, window)
        else:
            rows, tx = 0, self.table.begin()
        replaced = tx.replaced_files(self.job.table.cursor[0], micros(start), micros(end))
        if read and not rows and not replaced:
            tx.discard()
            return None
        snapshot_id = self.commit(tx, {**marker, ROWS_KEY: str(rows)}, replaced)
        return self.settle(tx, snapshot_id, json.loads(marker[CURSOR_KEY]), end)

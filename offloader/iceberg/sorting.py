"""Sorted data files: the table's sort order, and files written sorted by it in bounded memory.

A table's ``sort_by`` (``[[tables]]``) becomes its Iceberg sort order (identity transforms,
ascending, nulls last), set at creation or, on a table that exists, by a sort-order update.
The writers follow the table's default sort order: each data file is sorted as a whole, so
the min/max statistics of its row groups (:data:`ROW_GROUP_ROWS` rows each) let a reader
skip the row groups a predicate on the leading sort columns cannot match, and each file
records the order's id in its manifest entry.

Memory stays bounded whatever a window holds (docs/storage.md, "Sort order"):

- **a window** (:class:`SortedFiles`): rows are buffered per partition; a buffer that
  reaches :data:`RUN_BYTES` of Arrow data (or the largest, when all of them together do) is
  sorted and written as one file in a writer thread, at most ``lanes`` of them at a time.
  A big window therefore writes several sorted files per partition, each smaller than the
  target size; compaction later merges them.
- **compaction** (``spill=True``): the sorted runs are spilled to local Parquet files and
  merged (:func:`merge_sorted`, holding about one :data:`MERGE_BATCH_ROWS` batch of each run)
  into files of the target size, each a contiguous piece of one sorted partition.
"""

from __future__ import annotations

import bisect
import math
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from offloader.config import TableConfig
from offloader.errors import InternalError, SchemaError
from offloader.iceberg.internals import written_bytes
from offloader.iceberg.recovery import record_landed
from offloader.iceberg.write import RollingFiles, split_partitions

RUN_BYTES = 48 * 2**20
"""Arrow bytes of the rows sorted in memory at once, per buffer: one sorted file of a window at most."""
ROW_GROUP_ROWS = 32_768
"""Rows per row group of a sorted file: the unit a reader skips by its min/max statistics."""
MERGE_BATCH_ROWS = 16_384
"""Rows of each spilled run held in memory while runs are merged (and the row groups of a run)."""
MAX_FAN_IN = 16
"""Runs merged at once; more are first merged in passes of this many."""


def sort_order(table: TableConfig, schema: Any) -> Any:
    """The Iceberg sort order of ``table.sort_by`` over ``schema`` (the source's columns), checked."""
    from pyiceberg.table.sorting import UNSORTED_SORT_ORDER, NullOrder, SortDirection, SortField, SortOrder
    from pyiceberg.transforms import IdentityTransform

    if not table.sort_by:
        return UNSORTED_SORT_ORDER
    fields = []
    for column in table.sort_by:
        try:
            field = schema.find_field(column)
        except ValueError:
            known = ", ".join(f.name for f in schema.fields)
            raise SchemaError(
                f"tables.{table.name}.sort_by: column {column!r} is not in the source table {table.source} (columns: {known})"
            ) from None
        if not field.field_type.is_primitive:
            raise SchemaError(
                f"tables.{table.name}.sort_by: column {column!r} is of type {field.field_type}; only a column of a "
                "primitive type (number, string, time, ...) can be sorted by"
            )
        fields.append(
            SortField(
                source_id=field.field_id,
                transform=IdentityTransform(),
                direction=SortDirection.ASC,
                null_order=NullOrder.NULLS_LAST,
            )
        )
    return SortOrder(*fields)


def ensure_sort_order(table: Any, config: TableConfig) -> Any:
    """Make ``config.sort_by`` the default sort order of an existing table; returns the table.

    Without ``sort_by`` the table's order is left as it is. A column not in the table yet (a
    source column the next window adds) leaves it too, until an open after that window. The
    update asserts the order it replaces: a runner that changed the table first makes it look
    again (three times at most)."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.transforms import IdentityTransform

    for attempt in range(3):
        current = sort_columns(table.metadata)
        if not config.sort_by or (current is not None and current[1] == list(config.sort_by)):
            return table
        if not set(config.sort_by) <= {f.name for f in table.schema().fields}:
            return table
        tx = table.transaction()
        with tx.update_sort_order() as update:
            for column in config.sort_by:
                update.asc(column, IdentityTransform())
        try:
            table = tx.commit_transaction()
            record_landed(table)
            return table
        except CommitFailedException:
            if attempt == 2:
                raise
            table = table.refresh()
    return table


def sort_columns(metadata: Any) -> tuple[int, list[str]] | None:
    """(order id, column names) of the default sort order, when the writers can follow it.

    That is an order of identity transforms of top-level columns, ascending with nulls
    last (what ``sort_by`` sets); None for an unsorted table or an order of another shape
    (set by another tool), whose files are then written unsorted and say so."""
    from pyiceberg.table.sorting import NullOrder, SortDirection
    from pyiceberg.transforms import IdentityTransform

    order = metadata.sort_order_by_id(metadata.default_sort_order_id)
    if order is None or order.is_unsorted:
        return None
    schema = metadata.schema()
    names = []
    for field in order.fields:
        name = schema.find_column_name(field.source_id)
        if (
            name is None
            or "." in name
            or not isinstance(field.transform, IdentityTransform)
            or field.direction != SortDirection.ASC
            or field.null_order != NullOrder.NULLS_LAST
        ):
            return None
        names.append(name)
    return int(order.order_id), names


def sort_rows(rows: pa.Table, columns: list[str]) -> pa.Table:
    """``rows`` sorted by ``columns`` (ascending, nulls last), as Iceberg orders them."""
    if rows.num_rows <= 1:
        return rows
    keys = pa.table({c: _plain(rows.column(c)) for c in columns})
    return rows.take(pc.sort_indices(keys, sort_keys=[(c, "ascending", "at_end") for c in columns]))


def sorted_slices(rows: pa.Table, columns: list[str], step: int) -> Iterator[pa.Table]:
    """``rows`` in sort order, ``step`` rows at a time: only one slice is copied at a time, not the whole table."""
    if rows.num_rows <= 1:
        yield rows
        return
    keys = pa.table({c: _plain(rows.column(c)) for c in columns})
    order = pc.sort_indices(keys, sort_keys=[(c, "ascending", "at_end") for c in columns])
    del keys
    for start in range(0, len(order), step):
        yield rows.take(order.slice(start, step))


def rechunk(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The rows of ``tables`` in order, as tables of ``rows`` rows (the last may have fewer)."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        pending.append(table)
        count += table.num_rows
        while count >= rows:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, rows)
            pending, count = [whole.slice(rows)], count - rows
    if count:
        yield pa.concat_tables(pending)


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary column as its values (Arrow sorts no dictionary arrays)."""
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


def _key(rows: pa.Table, index: int, columns: list[str]) -> tuple[Any, ...]:
    """The sort key of one row as comparable Python values: NaN after numbers, null last."""
    out = []
    for column in columns:
        value = rows.column(column)[index].as_py()
        rank = 2 if value is None else 1 if isinstance(value, float) and math.isnan(value) else 0
        out.append((rank, value if rank == 0 else 0))
    return tuple(out)


def _upper_bound(rows: pa.Table, key: tuple[Any, ...], columns: list[str]) -> int:
    """How many leading rows of the sorted ``rows`` have a sort key at most ``key``."""
    return bisect.bisect_right(range(rows.num_rows), key, key=lambda i: _key(rows, i, columns))


def merge_sorted(runs: list[Iterator[pa.Table]], columns: list[str]) -> Iterator[pa.Table]:
    """One sorted stream of the sorted streams ``runs``, holding about one batch of each.

    Every row still to come from a run sorts at or after the last row read from it; so all
    buffered rows up to the least of those last rows (the frontier) can go out, sorted."""
    streams = dict(enumerate(runs))
    buffers: dict[int, pa.Table] = {}
    while True:
        for j in list(streams):
            while j in streams and (j not in buffers or buffers[j].num_rows == 0):
                batch = next(streams[j], None)
                if batch is None:
                    del streams[j]
                else:
                    buffers[j] = batch
        if not streams:
            break
        least = min(streams, key=lambda j: _key(buffers[j], buffers[j].num_rows - 1, columns))
        frontier = _key(buffers[least], buffers[least].num_rows - 1, columns)
        parts = []
        for j, rows in buffers.items():
            cut = _upper_bound(rows, frontier, columns)
            parts.append(rows.slice(0, cut))
            buffers[j] = rows.slice(cut)
        if buffers[least].num_rows:  # only an unsorted run leaves rows past its own last one
            raise InternalError(f"merging sorted runs: run {least} is not sorted by {columns}")
        yield sort_rows(pa.concat_tables(parts), columns)
    rest = [rows for rows in buffers.values() if rows.num_rows]
    if rest:
        yield sort_rows(pa.concat_tables(rest), columns)


def data_file_writer(metadata: Any, io: Any, target_size: int, lanes: int = 2, *, spill: bool = False) -> RollingFiles:
    """The writer of a table's data files: sorted by its sort order when it has one writers follow."""
    import uuid

    order = sort_columns(metadata)
    if order is None:
        return RollingFiles(metadata, io, uuid.uuid4(), target_size, lanes)
    return SortedFiles(metadata, io, uuid.uuid4(), target_size, order, lanes, spill=spill)


class SortedFiles(RollingFiles):
    """Data files of one partitioned write, each sorted by the table's sort order.

    The same interface as :class:`RollingFiles` (``write``, ``finish``, ``abandon``). Without
    ``spill`` each sorted run becomes a file of its own (a window); with it, runs are spilled
    to a local folder and merged into files of the target size at ``finish`` (compaction).
    """

    def __init__(
        self, metadata: Any, io: Any, write_uuid: Any, target_size: int, order: tuple[int, list[str]],
        lanes: int = 2, *, spill: bool = False, run_bytes: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(metadata, io, write_uuid, target_size, lanes)
        self.sort_order_id, self.columns = order
        self.run_bytes = RUN_BYTES if run_bytes is None else run_bytes
        self.spill = spill
        self.buffers: dict[Any, tuple[Any, list[pa.Table], int]] = {}
        self.runs: dict[Any, tuple[Any, list[Path]]] = {}
        self._folder: Path | None = None

    def write(self, table: pa.Table) -> list[Any]:
        """Buffer a chunk by partition; returns the DataFiles of sorted files completed meanwhile."""
        done: list[Any] = []
        for key, rows in split_partitions(self.spec, self.schema, table):
            ident = None if key is None else key.to_path()
            _, chunks, size = self.buffers.get(ident, (key, [], 0))
            self.buffers[ident] = (key, [*chunks, rows], size + rows.nbytes)
            if size + rows.nbytes >= self.run_bytes:
                done += self._flush(ident)
        while sum(size for _, _, size in self.buffers.values()) > self.run_bytes:
            done += self._flush(max(self.buffers, key=lambda i: self.buffers[i][2]))
        return done

    def _flush(self, ident: Any) -> list[Any]:
        """Sort one partition's buffer in a writer thread: a file, or a spilled run."""
        key, chunks, _ = self.buffers.pop(ident)
        lane = next(self._chunks) % self.lanes
        if self.spill:
            path = self._spill_path()
            self.runs.setdefault(ident, (key, []))[1].append(path)
            self._pending.append(self._pools[lane].submit(self._spill_run, path, chunks))
        else:
            self._pending.append(self._pools[lane].submit(self._write_run, lane, key, chunks))
        done: list[Any] = []
        while len(self._pending) > self.lanes:  # at most one run per writer thread in flight
            done += self._pending.popleft().result()
        return done

    def _write_run(self, lane: int, key: Any, chunks: list[pa.Table]) -> list[Any]:
        return self._write_sorted(lane, key, self._sorted(chunks, ROW_GROUP_ROWS))

    def _sorted(self, chunks: list[pa.Table], step: int) -> Iterator[pa.Table]:
        return sorted_slices(pa.concat_tables(chunks, promote_options="default"), self.columns, step)

    def _write_sorted(self, lane: int, key: Any, tables: Iterable[pa.Table]) -> list[Any]:
        """Write sorted rows in order into files of the partition, rolled at the target size."""
        done, ident = [], None
        for rows in rechunk(tables, ROW_GROUP_ROWS):  # one row group each
            if ident is None:
                ident = (lane, "sorted", next(self.counter))
                self.open[ident] = self._new_file(key)
            writer = self.open[ident][0]
            writer.write(self._prepare(rows))
            if written_bytes(writer) >= self.target_size:
                done.append(self._close(ident))
                ident = None
        if ident is not None:
            done.append(self._close(ident))
        return done

    def _spill_path(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="offloader-sort-"))
        return self._folder / f"run-{next(self.counter):05d}.parquet"

    def _spill_run(self, path: Path, chunks: list[pa.Table] | Iterable[pa.Table]) -> list[Any]:
        import pyarrow.parquet as pq

        writer = None
        try:
            for rows in self._sorted(chunks, MERGE_BATCH_ROWS) if isinstance(chunks, list) else chunks:
                if writer is None:
                    writer = pq.ParquetWriter(path, rows.schema, compression="lz4")
                writer.write_table(rows, row_group_size=MERGE_BATCH_ROWS)
        finally:
            if writer is not None:
                writer.close()
        return []

    @staticmethod
    def _read_run(path: Path) -> Iterator[pa.Table]:
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as run:
            for batch in run.iter_batches(batch_size=MERGE_BATCH_ROWS):
                yield pa.Table.from_batches([batch])

    def finish(self) -> list[Any]:
        """Sort and write every buffer (merge the spilled runs); close every file."""
        if self._finished:
            return []
        done: list[Any] = []
        try:
            for ident in list(self.buffers):
                if self.spill and ident not in self.runs:  # a partition that fits one run: no spill
                    key, chunks, _ = self.buffers.pop(ident)
                    lane = next(self._chunks) % self.lanes
                    self._pending.append(self._pools[lane].submit(self._write_run, lane, key, chunks))
                else:
                    done += self._flush(ident)
            while self._pending:
                done += self._pending.popleft().result()
            for key, paths in self.runs.values():
                done += self._write_sorted(0, key, self._merge(paths))
        finally:
            self._remove_folder()
        return done + super().finish()

    def _merge(self, paths: list[Path]) -> Iterator[pa.Table]:
        """The rows of the runs ``paths`` in sort order, merged in passes of MAX_FAN_IN runs."""
        while len(paths) > MAX_FAN_IN:
            merged = []
            for start in range(0, len(paths), MAX_FAN_IN):
                group, path = paths[start : start + MAX_FAN_IN], self._spill_path()
                self._spill_run(path, merge_sorted([self._read_run(p) for p in group], self.columns))
                for p in group:
                    p.unlink()
                merged.append(path)
            paths = merged
        yield from merge_sorted([self._read_run(p) for p in paths], self.columns)

    def abandon(self) -> list[str]:
        self.buffers.clear()
        paths = super().abandon()
        self._remove_folder()
        return paths

    def _remove_folder(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self.runs.clear()

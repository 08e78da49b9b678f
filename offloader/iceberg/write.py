"""Writing one window: rolling Parquet files, split by partition, committed as one snapshot.

:class:`WindowWrite` is the open transaction of one window: rows go into data files of at
most the table's target size (two writer lanes), the schema is evolved inside the same
transaction, and :meth:`WindowWrite.commit` adds the files (and, for a range replacement,
drops the files it rewrote) in ONE snapshot carrying the marker. A conflict is
:class:`CommitConflictError` (nothing landed); any other failure of the commit is
:class:`CommitUnknownError`, to be settled from the snapshot history.
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from offloader.config import DEFAULT_FILE_SIZE
from offloader.errors import (
    CommitConflictError,
    CommitUnknownError,
    OffloaderError,
    first_line,
)
from offloader.faults import checkpoint
from offloader.iceberg.failures import refusal
from offloader.iceberg.files import delete_quietly
from offloader.iceberg.internals import determine_partitions, parquet_format, to_requested_schema, written_bytes
from offloader.iceberg.recovery import record_landed
from offloader.ports import KeyedRewrite, WrittenFiles

if TYPE_CHECKING:
    from offloader.iceberg.table import SinkTable


class RollingFiles:
    """One open Parquet file per partition, rolled over at the target file size.

    Chunks of a window arrive one after another; each is split by partition (in the
    caller's thread) and appended to an open file of that partition. Writing runs in
    ``lanes`` writer threads, each with files of its own, chunks dealt to them in turn:
    Parquet encoding then uses every core and overlaps with reading and converting the
    next chunk. Files grow to the target size whatever the chunk size; at most
    ``lanes + 1`` chunks wait for the writers, so memory stays bounded.
    """

    def __init__(self, metadata: Any, io: Any, write_uuid: uuid.UUID, target_size: int, lanes: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from pyiceberg.table.locations import load_location_provider

        self.metadata = metadata
        self.io = io
        self.write_uuid = write_uuid
        self.target_size = target_size
        self.lanes = lanes
        self.sort_order_id: int | None = None  # the sort order every file is sorted by (SortedFiles)
        self.schema = metadata.schema()
        self.spec = metadata.spec()
        self.format = parquet_format()
        self.locations = load_location_provider(table_location=metadata.location, table_properties=metadata.properties)
        self.counter = itertools.count(0)
        self.open: dict[Any, tuple[Any, str, Any]] = {}
        self.paths: list[str] = []
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix="offloader-parquet") for _ in range(self.lanes)]
        self._chunks = itertools.count(0)
        self._pending: deque[Any] = deque()
        self._finished = False

    def write(self, table: pa.Table) -> list[Any]:
        """Queue a chunk; returns the DataFiles of files that were completed meanwhile."""
        parts = list(split_partitions(self.spec, self.schema, table))
        lane = next(self._chunks) % self.lanes
        self._pending.append(self._pools[lane].submit(self._write_parts, lane, parts))
        done: list[Any] = []
        while len(self._pending) > self.lanes + 1:
            done += self._pending.popleft().result()
        return done

    def _write_parts(self, lane: int, parts: list[tuple[Any, pa.Table]]) -> list[Any]:
        done = []
        for key, rows in parts:
            ident = (lane, None if key is None else key.to_path())
            entry = self.open.get(ident)
            if entry is None:
                entry = self.open[ident] = self._new_file(key)
            writer = entry[0]
            writer.write(self._prepare(rows))
            if written_bytes(writer) >= self.target_size:
                done.append(self._close(ident))
        return done

    def _prepare(self, rows: pa.Table) -> pa.Table:
        from pyiceberg.io.pyarrow import pyarrow_to_schema

        file_schema = pyarrow_to_schema(
            rows.schema, name_mapping=self.schema.name_mapping, format_version=self.metadata.format_version
        )
        batches = [to_requested_schema(self.schema, file_schema, batch, self.format) for batch in rows.to_batches()]
        return pa.Table.from_batches(batches)

    def _new_file(self, key: Any) -> tuple[Any, str, Any]:
        name = f"{next(self.counter):05d}-{self.write_uuid}.parquet"
        path = self.locations.new_data_location(data_file_name=name, partition_key=key)
        writer = self.format.create_writer(self.io.new_output(path), self.schema, self.metadata.properties)
        self.paths.append(path)
        return writer, path, key

    def _close(self, ident: Any) -> Any:
        from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
        from pyiceberg.typedef import Record

        writer, path, key = self.open.pop(ident)
        statistics = writer.close()
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=FileFormat.PARQUET,
            partition=key.partition if key is not None else Record(),
            file_size_in_bytes=len(self.io.new_input(path)),
            sort_order_id=self.sort_order_id,
            spec_id=self.metadata.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **statistics.to_serialized_dict(),
        )

    def finish(self) -> list[Any]:
        """Wait for the writer and close every open file. Later calls return nothing."""
        if self._finished:
            return []
        self._finished = True
        done: list[Any] = []
        while self._pending:
            done += self._pending.popleft().result()
        for lane, pool in enumerate(self._pools):
            done += pool.submit(self._close_lane, lane).result()
            pool.shutdown()
        return done

    def _close_lane(self, lane: int) -> list[Any]:
        return [self._close(ident) for ident in list(self.open) if ident[0] == lane]

    def abandon(self) -> list[str]:
        """Stop writing; close what is open; return every path written (to delete)."""
        for future in self._pending:
            future.cancel()
        for pool in self._pools:
            pool.shutdown(wait=True)
        self._pending.clear()
        for writer, _, _ in self.open.values():
            try:
                writer.close()
            except Exception:  # noqa: S110 - the file is deleted anyway
                pass
        self.open.clear()
        paths, self.paths = self.paths, []
        return paths


def split_partitions(spec: Any, schema: Any, table: pa.Table) -> Iterator[tuple[Any, pa.Table]]:
    """(partition key, rows) of a chunk. A chunk inside one partition (the usual case for
    time-ordered data) is passed through without a copy; others are split by PyIceberg."""
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey

    if spec.is_unpartitioned():
        yield None, table
        return
    values: list[Any] | None = []
    for field in spec.fields:
        name = schema.find_column_name(field.source_id)
        if name is None or "." in name or name not in table.column_names:
            values = None
            break
        source_type = schema.find_field(field.source_id).field_type
        transformed = field.transform.pyarrow_transform(source_type)(table.column(name))
        if transformed.null_count not in (0, len(transformed)):
            values = None
            break
        if transformed.null_count:
            values.append(None)  # type: ignore[union-attr]  # None only after a break
            continue
        bounds = pc.min_max(transformed)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if low != high:
            values = None
            break
        values.append(low)  # type: ignore[union-attr]
    if values is not None:
        key = PartitionKey(
            field_values=[PartitionFieldValue(field=f, value=v) for f, v in zip(spec.fields, values, strict=True)],
            partition_spec=spec,
            schema=schema,
        )
        yield key, table
        return
    yield from determine_partitions(spec, schema, table)


class WindowWrite:
    """The open transaction of one window: files are written, then committed as one snapshot."""

    def __init__(self, owner: SinkTable, tx: Any, changes: int) -> None:
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        self.owner = owner
        self.tx = tx
        self.schema_changes = changes
        self.written = WrittenFiles(files=[])
        self.arrow_schema = schema_to_pyarrow(tx.table_metadata.schema(), include_field_ids=False)
        target = int(tx.table_metadata.properties.get("write.target-file-size-bytes", DEFAULT_FILE_SIZE))
        from offloader.iceberg.sorting import data_file_writer  # it builds on RollingFiles

        self._files = data_file_writer(tx.table_metadata, owner.table.io, target)
        self._carried = data_file_writer(tx.table_metadata, owner.table.io, target)

    @property
    def io(self) -> Any:
        return self.owner.table.io

    def write(self, table: pa.Table, *, source_rows: bool = True) -> None:
        """Append a chunk of rows to the window's data files (partitioned, rolled at the target size).

        ``source_rows=False`` marks rows carried over from a replaced file: they are
        committed but not counted against the source window.
        """
        if table.num_rows == 0:
            return
        files = self._files if source_rows else self._carried
        try:
            for data_file in files.write(table):
                self._add(data_file, source_rows)
        except Exception as exc:
            raise self.owner._failure(exc, f"writing data files for {self.owner.config.target} failed") from exc

    def adopt(self, files: WrittenFiles) -> None:
        """Take data files another process wrote for this table (a backfill worker) into this commit."""
        for data_file in files.files:
            self._add(data_file, True)

    def flush(self, *, source_rows: bool = True) -> None:
        """Close every open file of the source rows (or of the carried rows)."""
        files = self._files if source_rows else self._carried
        try:
            for data_file in files.finish():
                self._add(data_file, source_rows)
        except Exception as exc:
            raise self.owner._failure(exc, f"writing data files for {self.owner.config.target} failed") from exc

    def _add(self, data_file: Any, source_rows: bool) -> None:
        self.written.files.append(data_file)
        self.written.bytes += data_file.file_size_in_bytes
        if source_rows:
            self.written.rows += data_file.record_count

    def replaced_files(self, column: str, lo_micros: int, hi_micros: int) -> list[tuple[Any, pa.Table]]:
        """Files holding rows with ``lo <= column <= hi``, and the rows of each that stay."""
        from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, LessThanOrEqual
        from pyiceberg.io.pyarrow import ArrowScan

        table = self.owner.table
        if table.current_snapshot() is None:
            return []
        # PyIceberg's predicates take (term, literal) positionally; its pydantic typing says otherwise
        row_filter = And(GreaterThanOrEqual(column, lo_micros), LessThanOrEqual(column, hi_micros))  # type: ignore[call-arg,arg-type]
        metadata = self.tx.table_metadata
        result = []
        try:
            for task in table.scan(row_filter=row_filter).plan_files():
                rows = ArrowScan(metadata, table.io, metadata.schema(), AlwaysTrue()).to_table([task])
                values = pc.cast(rows[column], pa.int64()) if rows.num_rows else rows[column]
                inside = pc.and_(pc.greater_equal(values, lo_micros), pc.less_equal(values, hi_micros))
                keep = rows.filter(pc.invert(pc.fill_null(inside, False)))
                result.append((task.file, keep))
        except Exception as exc:
            raise self.owner._failure(exc, f"reading files to replace in {self.owner.config.target} failed") from exc
        return result

    def replaced_keys(self, keys: pa.Table) -> KeyedRewrite:
        """Drop, in this commit, the files holding rows of one of ``keys`` (columns named as the
        table's); the rows of each that stay are written now, one file at a time, as carried rows."""
        from offloader.iceberg.keyed import files_holding_keys

        done, read = KeyedRewrite(replaced=[]), [0]
        try:
            for old, keep in files_holding_keys(self.owner.table, self.tx.table_metadata, keys, read):
                self.write(keep, source_rows=False)
                done.replaced.append((old, keep.slice(0, 0)))
                done.kept += keep.num_rows
                done.removed += int(old.record_count) - keep.num_rows
        except OffloaderError:
            raise
        except Exception as exc:
            raise self.owner._failure(exc, f"reading files to replace in {self.owner.config.target} failed") from exc
        done.scanned = read[0]
        return done

    def commit(self, marker: Mapping[str, str], replace: Iterable[tuple[Any, pa.Table]] = ()) -> int:
        """Commit the written files (and replaced files) as one snapshot carrying ``marker``.

        A conflict (409, or the SQL catalog's compare-and-swap missing) and a refusal of the
        credentials (401/403) mean nothing landed; every other failure, a 5xx or a lost
        connection included, leaves the outcome unknown: never taken for a conflict.
        """
        from pyiceberg.exceptions import CommitFailedException

        props = {k: str(v) for k, v in marker.items()}
        replace = list(replace)
        try:
            for _, keep in replace:
                self.write(keep, source_rows=False)
            self.flush(source_rows=True)
            self.flush(source_rows=False)
            with self._producer(props, bool(replace)) as producer:
                for old, _ in replace:
                    producer.delete_data_file(old)
                for data_file in self.written.files:
                    producer.append_data_file(data_file)
        except OffloaderError:
            raise
        except Exception as exc:
            raise self.owner._failure(exc, f"preparing the commit of {self.owner.config.target} failed") from exc
        try:
            self.owner.table = self.tx.commit_transaction()
        except CommitFailedException as exc:
            self.owner.suspect = True  # its staged metadata file may be left behind
            raise CommitConflictError(f"{self.owner.config.target}: another writer committed first ({exc})") from exc
        except Exception as exc:  # CommitStateUnknownException, any other 5xx, a reset: unknown
            self.owner.suspect = True
            raise refusal(exc, self.io.properties) or CommitUnknownError(
                f"{self.owner.config.target}: commit outcome unknown: {first_line(exc)}"
            ) from exc
        checkpoint("before_landed_record")
        record_landed(self.owner.table)
        snapshot = self.owner.table.current_snapshot()
        return int(snapshot.snapshot_id)

    def _producer(self, props: dict[str, str], overwrite: bool) -> Any:
        """An overwrite, or an append that merges small manifests (``commit.manifest-merge.*``)
        so that the manifests of the current snapshot, and the cost of the next commit, stay
        bounded however many windows the table has taken."""
        update = self.tx.update_snapshot(snapshot_properties=props)
        if overwrite:
            return update.overwrite()
        merge = self.tx.table_metadata.properties.get("commit.manifest-merge.enabled", "false").lower() == "true"
        return update.merge_append() if merge else update.fast_append()

    def discard(self) -> None:
        """Delete the files of a window that will not be committed (best effort)."""
        for files in (self._files, self._carried):
            for path in files.abandon():
                delete_quietly(self.io, path)
        self.written = WrittenFiles(files=[])

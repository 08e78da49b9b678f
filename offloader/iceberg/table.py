"""One destination table: its marker, its snapshots and files, and what maintenance does to them.

:class:`SinkTable` reads the progress marker from the snapshot lineage, finds a commit by
its id, prunes metadata files, lists and rewrites data files (compaction), expires
snapshots, lists and deletes files (orphan removal), scans rows (the consistency check) and
begins the write of a window (``write``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa

from offloader import ports
from offloader.chtypes import ColumnPlan
from offloader.config import TableConfig
from offloader.errors import (
    AuthenticationError,
    CatalogError,
    CommitConflictError,
    CommitUnknownError,
    OffloaderError,
    RecoveryError,
    first_line,
)
from offloader.iceberg import lineage, rollback
from offloader.iceberg.evolution import plan_evolution
from offloader.iceberg.failures import failure, refusal
from offloader.iceberg.files import (
    as_int,
    delete_quietly,
    io_properties,
    is_time_transform,
    list_files,
    metadata_version,
    walk_files,
)
from offloader.iceberg.internals import cached_metadata
from offloader.iceberg.mapping import iceberg_schema
from offloader.iceberg.recovery import landed_path, record_landed, refuse_if_behind
from offloader.iceberg.sorting import data_file_writer
from offloader.iceberg.write import WindowWrite
from offloader.ports import COMMIT_KEY, CORRECTIONS_KEY, CURSOR_KEY, HI_KEY, ROWS_KEY, RUN_KEY, CutPoint, DataFileEntry, Marker

# what keeps a commit's cost flat as the table ages (docs/storage.md)
BOUNDED_HISTORY = {"commit.manifest-merge.enabled": "true", "write.metadata.delete-after-commit.enabled": "true"}


class SinkTable:
    """One destination table and the transaction of the window being written."""

    def __init__(self, table: Any, config: TableConfig, *, writable: bool = True) -> None:
        self.table = table
        self.config = config
        self.suspect = True  # a metadata file may have been left by a failed commit: list the folder
        if writable:
            self._ensure_properties()

    def _failure(self, exc: BaseException, message: str) -> OffloaderError:
        """A library error as offloader raises it; the table's FileIO properties name its servers."""
        return failure(exc, message, io_properties(self.table))

    def _ensure_properties(self) -> None:
        """No blind commit retries; BOUNDED_HISTORY unless the table's owner set otherwise."""
        props = self.table.metadata.properties
        wanted = {"commit.retry.num-retries": "0"} if props.get("commit.retry.num-retries") != "0" else {}
        wanted |= {key: value for key, value in BOUNDED_HISTORY.items() if key not in props}
        if wanted:
            try:
                self.table = self.table.transaction().set_properties(wanted).commit_transaction()
                record_landed(self.table)
            except Exception as exc:
                settings = ", ".join(f"{k}={v}" for k, v in wanted.items())
                raise self._failure(exc, f"cannot set {settings} on {self.config.target}") from exc

    @property
    def schema(self) -> Any:
        return self.table.schema()

    @property
    def default_spec_id(self) -> int:
        """The id of the partition spec new files are written with."""
        return int(self.table.spec().spec_id)

    @property
    def metadata_location(self) -> str:
        """The current metadata file."""
        return str(self.table.metadata_location)

    @property
    def location(self) -> str:
        """The table's root location: its data and metadata files are under it."""
        return str(self.table.metadata.location)

    def column_kinds(self) -> dict[str, str]:
        """Each top-level column's kind, as the consistency checksum hashes it.

        ``timestamp``, ``date``, ``integer``, ``boolean`` or ``text`` (float, double,
        decimal and string, hashed as their text); any other type by its Iceberg name.
        """
        from pyiceberg import types as it

        kinds = {}
        for f in self.table.schema().fields:
            t = f.field_type
            if isinstance(t, it.TimestampType | it.TimestamptzType | it.TimestampNanoType):
                kinds[f.name] = "timestamp"
            elif isinstance(t, it.DateType):
                kinds[f.name] = "date"
            elif isinstance(t, it.IntegerType | it.LongType):
                kinds[f.name] = "integer"
            elif isinstance(t, it.BooleanType):
                kinds[f.name] = "boolean"
            elif isinstance(t, it.FloatType | it.DoubleType | it.DecimalType | it.StringType):
                kinds[f.name] = "text"
            else:
                kinds[f.name] = str(t)
        return kinds

    def refresh(self) -> None:
        try:
            self.table = self.table.refresh()
        except Exception as exc:
            raise self._failure(exc, f"cannot reload Iceberg table {self.config.target}") from exc

    # -- the marker ----------------------------------------------------------------------

    def marker(self) -> Marker | None:
        """The marker of the newest offloader commit in the current lineage."""
        return lineage.marker(self.table)

    def find_commit(self, commit_id: str) -> int | None:
        """The snapshot id that carries ``commit_id`` in the current lineage, if any."""
        return lineage.find_commit(self.table, commit_id)

    def cut_points(self) -> list[CutPoint]:
        """The offloader snapshots of the current lineage, newest first, each with the time it is complete up to."""
        return lineage.cut_points(self.table)

    def lineage(self) -> list[ports.LineageEntry]:
        """The snapshots of the current lineage, newest first (what a rollback can go back to)."""
        return lineage.entries(self.table)

    def roll_back(self, snapshot_id: int) -> None:
        """Make ``snapshot_id``, an ancestor of the current snapshot, current again, in one metadata commit."""
        self.table = rollback.roll_back(self.table, snapshot_id, self.config.target, io_properties(self.table))

    def prune_uncommitted_metadata(self) -> int:
        """Delete metadata files that lost a commit race or a crash and can never become current.

        Path-based readers (ClickHouse's ``icebergLocal``, DuckDB's ``iceberg_scan``) pick the
        newest ``*.metadata.json`` in the folder, not the catalog's pointer. A stray file whose
        version is at most the current one can never be committed (a commit needs its base to
        be current), so it goes; newer ones may be a commit in flight and stay."""
        metadata = self.table.metadata
        current = self.table.metadata_location
        keep = {entry.metadata_file for entry in metadata.metadata_log} | {current}
        version = metadata_version(current)
        folder = current.rsplit("/", 1)[0]
        try:
            listed = list_files(self.table.io, folder)
        except Exception as exc:
            raise self._failure(exc, f"cannot list the metadata files of {self.config.target}") from exc
        refuse_if_behind(self.table, listed, self.config.name)
        removed, newer = 0, False
        for path in listed:
            if not path.endswith(".metadata.json") or path in keep:
                continue
            other = metadata_version(path)
            newer = newer or other is None or version is None or other > version
            if other is not None and version is not None and other <= version:
                try:
                    self.table.io.delete(path)
                    removed += 1
                except Exception:  # noqa: S110 - best effort; the catalog stays the truth
                    pass
        self.suspect = newer  # a newer file may be a commit in flight: look again after ours
        return removed

    def prune_metadata(self, log: Any, *, after_commit: bool = False) -> None:
        """:meth:`prune_uncommitted_metadata`, logging a failure; ``after_commit``, only when a
        stray file may exist (a commit failed, or the last listing left a newer file)."""
        if after_commit and not self.suspect:
            return
        try:
            pruned = self.prune_uncommitted_metadata()
        except RecoveryError:
            raise
        except (CatalogError, AuthenticationError) as exc:  # a policy may allow writing but not listing
            log.warning("metadata_prune_failed", error=str(exc))
            return
        if pruned:
            log.info("uncommitted_metadata_pruned", files=pruned)

    def carried_marker(self, operation: str) -> dict[str, str]:
        """Snapshot properties for a maintenance commit: the current marker, carried forward.

        Compaction, repair and expiry leave the cursor where it is; carrying the marker into
        their snapshot keeps it at the head of the lineage, where the next run finds it
        even after the snapshots before it are expired.
        """
        marker = self.marker()
        props = {COMMIT_KEY: uuid.uuid4().hex, ROWS_KEY: "0", "offloader.operation": operation}
        if marker is not None:
            props.update({CURSOR_KEY: json.dumps(marker.cursor), RUN_KEY: marker.run_id})
            carried = {HI_KEY: marker.window_hi, CORRECTIONS_KEY: marker.corrections}
            props.update({key: value for key, value in carried.items() if value})
        return props

    def data_files(self, time_column: str) -> list[DataFileEntry]:
        """The data files of the current snapshot, with their time bounds."""
        from pyiceberg.conversions import from_bytes

        if self.table.current_snapshot() is None:
            return []
        schema = self.table.schema()
        field = schema.find_field(time_column)
        specs = self.table.specs()
        out = []
        try:
            for task in self.table.scan().plan_files():
                f = task.file
                spec = specs[f.spec_id]
                lower = f.lower_bounds.get(field.field_id) if f.lower_bounds else None
                upper = f.upper_bounds.get(field.field_id) if f.upper_bounds else None
                time_partition = None
                for index, pf in enumerate(spec.fields):
                    if pf.source_id == field.field_id and is_time_transform(pf.transform):
                        time_partition = f.partition[index]
                out.append(
                    DataFileEntry(
                        file=f, path=f.file_path, partition=f"{f.spec_id}:{f.partition!r}", spec_id=f.spec_id,
                        size=f.file_size_in_bytes, rows=f.record_count,
                        time_lower=as_int(from_bytes(field.field_type, lower)) if lower is not None else None,
                        time_upper=as_int(from_bytes(field.field_type, upper)) if upper is not None else None,
                        time_partition=time_partition, has_deletes=bool(task.delete_files),
                    )
                )  # fmt: skip
        except Exception as exc:
            raise self._failure(exc, f"cannot list the data files of {self.config.target}") from exc
        return out

    def time_partition_of(self, time_column: str, micros: int) -> int | None:
        """The value the spec's time transform of ``time_column`` gives ``micros`` (None without one)."""
        field = self.table.schema().find_field(time_column)
        for pf in self.table.spec().fields:
            if pf.source_id == field.field_id and is_time_transform(pf.transform):
                return int(pf.transform.transform(field.field_type)(micros))
        return None

    def read_file(self, entry: DataFileEntry) -> Iterator[pa.RecordBatch]:
        """The rows of one data file as record batches, in the table's current schema."""
        from pyiceberg.expressions import AlwaysTrue
        from pyiceberg.io.pyarrow import ArrowScan
        from pyiceberg.table import FileScanTask

        metadata = self.table.metadata
        try:
            scan = ArrowScan(metadata, self.table.io, metadata.schema(), AlwaysTrue())
            yield from scan.to_record_batches([FileScanTask(entry.file)])
        except Exception as exc:
            raise self._failure(exc, f"cannot read {entry.path} of {self.config.target}") from exc

    def rewrite(
        self, old: list[DataFileEntry], tables: Iterable[pa.Table], props: Mapping[str, str], target_size: int
    ) -> tuple[int, list[Any]]:
        """Replace the files ``old`` by files holding the rows of ``tables``, in ONE snapshot.

        The rows written must number exactly the rows of ``old``, or nothing is committed.
        Returns the snapshot id and the new DataFiles.
        """
        from pyiceberg.exceptions import CommitFailedException

        tx = cached_metadata(self.table.transaction())
        files = data_file_writer(tx.table_metadata, self.table.io, target_size, lanes=1, spill=True)
        try:
            added: list[Any] = []
            for rows in tables:
                added += files.write(rows)
            added += files.finish()
        except BaseException:
            for path in files.abandon():
                delete_quietly(self.table.io, path)
            raise
        expected = sum(e.rows for e in old)
        written = sum(f.record_count for f in added)
        paths = [f.file_path for f in added]
        if written != expected:
            for path in paths:
                delete_quietly(self.table.io, path)
            raise CatalogError(
                f"{self.config.target}: rewriting {len(old)} files wrote {written} rows instead of {expected}; nothing was committed"
            )
        try:
            with tx.update_snapshot(snapshot_properties=dict(props)).overwrite() as producer:
                for entry in old:
                    producer.delete_data_file(entry.file)
                for data_file in added:
                    producer.append_data_file(data_file)
            self.table = tx.commit_transaction()
            record_landed(self.table)
        except CommitFailedException as exc:
            for path in paths:
                delete_quietly(self.table.io, path)
            raise CommitConflictError(f"{self.config.target}: another writer committed first ({exc})") from exc
        except Exception as exc:
            raise refusal(exc, io_properties(self.table)) or CommitUnknownError(
                f"{self.config.target}: commit outcome unknown: {first_line(exc)}"
            ) from exc
        return int(self.table.current_snapshot().snapshot_id), added

    def snapshots(self) -> list[Any]:
        return list(self.table.metadata.snapshots)

    def protected_snapshots(self) -> set[int]:
        """Snapshots expiry must keep: branch and tag heads, and the lineage from the current
        snapshot back to the newest one carrying the offload marker (cursor and run id)."""
        from pyiceberg.table.refs import SnapshotRefType

        keep = {
            ref.snapshot_id
            for ref in self.table.metadata.refs.values()
            if ref.snapshot_ref_type in (SnapshotRefType.TAG, SnapshotRefType.BRANCH)
        }
        return keep | lineage.to_marker(self.table)

    def expire(self, snapshot_ids: list[int]) -> None:
        from pyiceberg.exceptions import CommitFailedException
        from pyiceberg.table import Transaction
        from pyiceberg.table.update.snapshot import ExpireSnapshots

        try:
            # table.maintenance.expire_snapshots(), on a transaction not copied per id (4 s -> 18 ms)
            tx = cached_metadata(Transaction(self.table, autocommit=True))
            ExpireSnapshots(transaction=tx).by_ids(snapshot_ids).commit()
            self.refresh()
            record_landed(self.table)
        except CommitFailedException as exc:
            raise CommitConflictError(f"{self.config.target}: another writer committed first ({exc})") from exc
        except Exception as exc:
            raise self._failure(exc, f"{self.config.target}: expiring snapshots failed") from exc

    def referenced_files(self) -> set[str]:
        """Every file a snapshot or the metadata still refers to: metadata files, manifest
        lists, manifests, data and delete files."""
        metadata = self.table.metadata
        io = self.table.io
        refs = {self.table.metadata_location, landed_path(metadata.location)}
        refs |= {entry.metadata_file for entry in metadata.metadata_log}
        refs |= {s.statistics_path for s in metadata.statistics}
        refs |= {s.statistics_path for s in getattr(metadata, "partition_statistics", [])}
        manifests: dict[str, Any] = {}
        try:
            for snapshot in metadata.snapshots:
                refs.add(snapshot.manifest_list)
                for manifest in snapshot.manifests(io):
                    manifests.setdefault(manifest.manifest_path, manifest)
            for path, manifest in manifests.items():
                refs.add(path)
                for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                    refs.add(entry.data_file.file_path)
        except Exception as exc:
            raise self._failure(exc, f"cannot read the manifests of {self.config.target}") from exc
        return refs

    def all_files(self) -> list[tuple[str, float, int]]:
        """(location, modification time, size) of every file under the table's location."""
        try:
            return walk_files(self.table.io, self.table.metadata.location)
        except Exception as exc:
            raise self._failure(exc, f"cannot list the files of {self.config.target}") from exc

    def delete_file(self, path: str) -> None:
        try:
            self.table.io.delete(path)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._failure(exc, f"cannot delete {path}") from exc

    def scan_batches(self, columns: list[str], column: str, lo_micros: int, hi_micros: int) -> Iterator[pa.RecordBatch]:
        """Stream ``columns`` of the rows with ``lo <= column <= hi``."""
        from pyiceberg.expressions import And, GreaterThanOrEqual, LessThanOrEqual

        row_filter = And(GreaterThanOrEqual(column, lo_micros), LessThanOrEqual(column, hi_micros))  # type: ignore[call-arg,arg-type]
        try:
            reader = self.table.scan(row_filter=row_filter, selected_fields=tuple(columns)).to_arrow_batch_reader()
            yield from reader
        except Exception as exc:
            raise self._failure(exc, f"cannot read {self.config.target}") from exc

    def row_count(self) -> int:
        return self._total("total-records")

    def file_count(self) -> int:
        return self._total("total-data-files")

    def _total(self, key: str) -> int:
        snapshot = self.table.current_snapshot()
        return 0 if snapshot is None or snapshot.summary is None else int(snapshot.summary.additional_properties.get(key, "0"))

    def begin(self, plans: list[ColumnPlan] | None = None) -> WindowWrite:
        """Start the transaction of one window; with the source's ``plans``, evolve the schema inside it when needed."""
        try:
            tx = cached_metadata(self.table.transaction())
            changes = plan_evolution(self.table.schema(), iceberg_schema(plans), self.config.name) if plans else []
            if changes:
                with tx.update_schema() as update:
                    for change in changes:
                        change(update)
            return WindowWrite(self, tx, changes=len(changes))
        except OffloaderError:
            raise
        except Exception as exc:
            raise self._failure(exc, f"cannot start a transaction on {self.config.target}") from exc

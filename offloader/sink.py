"""The Iceberg adapter: the catalog, the tables offloader owns, their files and commits.

Everything PyIceberg lives here. A :class:`SinkTable` is one destination table: created on
first use from config (format version 2, zstd level 3, PyIceberg's blind commit retry off),
its progress marker read from the snapshot history, its schema evolved inside the same
transaction as the first rows that need it, and its data files written first and committed
together as ONE snapshot whose summary carries the marker (cursor, run id, commit id,
source row count).

Library errors are translated once, here: :class:`AuthenticationError` when the catalog or
the object storage refused offloader's credentials (REST 401/403 and OAuth errors, S3
AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch; never retried), else
:class:`CatalogError`. At commit: :class:`CommitConflictError` when another writer got there
first (nothing of ours landed), :class:`AuthenticationError` when the commit was refused
(nothing landed either), :class:`CommitUnknownError` for any other failure, whose outcome
cannot be known from the reply (a 5xx, a reset: settle it with :meth:`SinkTable.find_commit`,
never by retrying).
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from offloader.config import DEFAULT_FILE_SIZE, CatalogConfig, TableConfig, connection_url, partition_transform, redact
from offloader.errors import (
    AuthenticationError,
    CatalogError,
    CommitConflictError,
    CommitUnknownError,
    OffloaderError,
    SchemaError,
    first_line,
)
from offloader.faults import fail
from offloader.ports import COMMIT_KEY, CURSOR_KEY, HI_KEY, ROWS_KEY, RUN_KEY, DataFileEntry, Marker, WrittenFiles

TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    "write.parquet.compression-level": "3",
    "commit.retry.num-retries": "0",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "100",
}


def _catalog_properties(config: CatalogConfig) -> dict[str, str]:
    """The properties PyIceberg gets: the configured ones with the secrets put in."""
    props = dict(config.properties)
    props.update({key: secret.reveal() for key, secret in config.secrets.items()})
    if "uri" in props:
        props["uri"] = connection_url(props["uri"], config.password)
    props.setdefault("type", "sql")
    if props.get("type") == "sql":
        props.setdefault("init_catalog_tables", "true")
    return props


# How object storage says it refused the credentials: S3's error codes, as the server sends
# them (and botocore keeps them) and as PyArrow's AWS SDK names them in its messages.
_S3_REFUSALS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}
_S3_REFUSED = re.compile(
    r"\b(AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|ACCESS_DENIED|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH)\b"
)
_BEARER_REFUSED = "Bearer token is invalid or expired"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it came from (``__cause__``, else ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _refusal(exc: BaseException, properties: Mapping[str, Any]) -> AuthenticationError | None:
    """An :class:`AuthenticationError` naming the server if ``exc``, or an error it came from,
    says the catalog or the object storage refused the credentials; None otherwise.

    ``properties`` are the catalog's (or a table FileIO's) properties, for the catalog URI and
    the S3 endpoint; the message never holds a secret.
    """
    from pyiceberg.exceptions import ForbiddenError, OAuthError, RESTError, UnauthorizedError

    for error in _chain(exc):
        if isinstance(error, OAuthError | UnauthorizedError | ForbiddenError) or _BEARER_REFUSED in str(error):
            kind = "Iceberg REST catalog" if properties.get("type") == "rest" else "Iceberg catalog"
            where = f"the {kind} {redact(str(properties.get('uri', '')))}".rstrip()
            return AuthenticationError(f"authentication failed at {where}: {first_line(error)}")
        if isinstance(error, RESTError):
            return None  # any other reply of the catalog (a 5xx naming its own storage's AccessDenied) is not ours
        response = getattr(error, "response", None)  # botocore's ClientError, under s3fs's errors
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        if code in _S3_REFUSALS or _S3_REFUSED.search(str(error)):
            endpoint = properties.get("s3.endpoint")
            where = f"the S3 endpoint {redact(str(endpoint))}" if endpoint else "S3"
            return AuthenticationError(f"authentication failed at {where}: {first_line(exc)}")
    return None


def _failure(exc: BaseException, message: str, properties: Mapping[str, Any]) -> OffloaderError:
    """The one error offloader raises for a library error: refused credentials, else a CatalogError."""
    return _refusal(exc, properties) or CatalogError(f"{message}: {first_line(exc)}")


REST_TIMEOUT = "rest.request-timeout"  # offloader's own property: seconds a REST call may take


def _rest_catalog(name: str, properties: dict[str, str]) -> Any:
    """PyIceberg's REST catalog with every HTTP request bounded in time.

    PyIceberg 0.12 sends REST requests without a timeout, so a catalog that stops answering
    would hang a cycle for ever. Each session it creates (its ``_create_session``, also used
    for the config and token requests) gets adapters whose ``send`` defaults the timeout to
    ``rest.request-timeout`` (60 s). A stalled commit then times out and is settled from the
    snapshot history like any unknown outcome. tests/test_storage_faults.py stalls the REST
    catalog and would hang, not pass, if an upgrade stopped calling ``_create_session``.
    """
    from pyiceberg.catalog.rest import RestCatalog

    seconds = float(properties.get(REST_TIMEOUT, "60"))

    class BoundedRestCatalog(RestCatalog):
        def _create_session(self) -> Any:
            session = super()._create_session()
            for adapter in set(session.adapters.values()):
                adapter.send = _bounded(adapter.send, seconds)  # type: ignore[method-assign]
            return session

    return BoundedRestCatalog(name, **properties)


def _bounded(send: Any, seconds: float) -> Any:
    def bounded_send(request: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = seconds
        return send(request, *args, **kwargs)

    return bounded_send


class Sink:
    """The Iceberg catalog offloader writes into."""

    def __init__(self, config: CatalogConfig) -> None:
        from pyiceberg.catalog import load_catalog

        self.config = config
        properties = _catalog_properties(config)  # the secrets revealed: a local of this frame only
        fail("catalog_connect")
        for attempt in range(3):
            try:
                if properties.get("type") == "rest":
                    self.catalog = _rest_catalog(config.name, properties)
                else:
                    self.catalog = load_catalog(config.name, **properties)
                break
            except Exception as exc:
                refused = _refusal(exc, config.properties)
                if refused is not None:
                    raise refused from exc
                # PyIceberg creates the SQL catalog's own tables check-then-create: two
                # processes starting together on a new database can collide once.
                if attempt == 2:
                    raise CatalogError(f"cannot open the Iceberg catalog {config.name!r}: {first_line(exc)}") from exc
                time.sleep(0.2 * (attempt + 1))

    def _failure(self, exc: BaseException, message: str) -> OffloaderError:
        return _failure(exc, message, self.config.properties)

    def ping(self) -> None:
        try:
            self.catalog.list_namespaces()
        except Exception as exc:
            raise self._failure(exc, "the Iceberg catalog does not answer") from exc

    def open(self, table: TableConfig, schema: Any, file_size: int | None = None) -> SinkTable:
        """Load the destination table, creating it (and its namespace) on first use."""
        from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError

        identifier = table.target
        try:
            try:
                return SinkTable(self.catalog.load_table(identifier), table)
            except NoSuchTableError:
                pass
            try:
                self.catalog.create_namespace_if_not_exists(table.target_namespace)
            except NamespaceAlreadyExistsError:
                pass
            except Exception:  # another runner created it at the same instant
                if not self.catalog.namespace_exists(table.target_namespace):
                    raise
            properties = dict(TABLE_PROPERTIES)
            if file_size:
                properties["write.target-file-size-bytes"] = str(file_size)
            spec = _partition_spec(table, schema)
            try:
                created = self.catalog.create_table(identifier, schema=schema, partition_spec=spec, properties=properties)
            except TableAlreadyExistsError:
                created = self.catalog.load_table(identifier)
            except Exception:  # a concurrent create can surface as the catalog's unique violation
                if not self.catalog.table_exists(identifier):
                    raise
                created = self.catalog.load_table(identifier)
            return SinkTable(created, table)
        except OffloaderError:
            raise
        except Exception as exc:
            raise self._failure(exc, f"cannot open Iceberg table {identifier}") from exc

    def load(self, identifier: str) -> Any | None:
        """The raw table if it exists (for status), else None."""
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.catalog.load_table(identifier)
        except NoSuchTableError:
            return None
        except Exception as exc:
            raise self._failure(exc, f"cannot load Iceberg table {identifier}") from exc


def _partition_spec(table: TableConfig, schema: Any) -> Any:
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import (
        BucketTransform,
        DayTransform,
        HourTransform,
        IdentityTransform,
        MonthTransform,
        TruncateTransform,
        VoidTransform,
        YearTransform,
    )

    simple = {
        "identity": IdentityTransform, "year": YearTransform, "month": MonthTransform,
        "day": DayTransform, "hour": HourTransform, "void": VoidTransform,
    }  # fmt: skip
    fields = []
    for index, expr in enumerate(table.partition_by):
        fn, column, param = partition_transform(expr)
        try:
            source_id = schema.find_field(column).field_id
        except ValueError:
            raise SchemaError(f"tables.{table.name}.partition_by: column {column!r} is not in the source table") from None
        if fn == "bucket" and param is not None:
            transform: Any = BucketTransform(param)
        elif fn == "truncate" and param is not None:
            transform = TruncateTransform(param)
        else:
            transform = simple[fn]()
        name = column if fn == "identity" else f"{column}_{fn}"
        fields.append(PartitionField(source_id=source_id, field_id=1000 + index, transform=transform, name=name))
    return PartitionSpec(*fields)


class SinkTable:
    """One destination table and the transaction of the window being written."""

    def __init__(self, table: Any, config: TableConfig, *, writable: bool = True) -> None:
        self.table = table
        self.config = config
        if writable:
            self._ensure_properties()

    def _failure(self, exc: BaseException, message: str) -> OffloaderError:
        """A library error as offloader raises it; the table's FileIO properties name its servers."""
        return _failure(exc, message, _io_properties(self.table))

    def _ensure_properties(self) -> None:
        """Tables written by offloader never let PyIceberg retry a commit blindly."""
        props = self.table.metadata.properties
        if props.get("commit.retry.num-retries") != "0":
            try:
                self.table = self.table.transaction().set_properties({"commit.retry.num-retries": "0"}).commit_transaction()
            except Exception as exc:
                raise self._failure(exc, f"cannot set commit.retry.num-retries=0 on {self.config.target}") from exc

    @property
    def schema(self) -> Any:
        return self.table.schema()

    def refresh(self) -> None:
        try:
            self.table = self.table.refresh()
        except Exception as exc:
            raise self._failure(exc, f"cannot reload Iceberg table {self.config.target}") from exc

    # -- the marker ----------------------------------------------------------------------

    def _lineage(self) -> Iterator[Any]:
        from pyiceberg.table.snapshots import ancestors_of

        yield from ancestors_of(self.table.current_snapshot(), self.table.metadata)

    def marker(self) -> Marker | None:
        """The marker of the newest offloader commit in the current lineage."""
        for snapshot in self._lineage():
            props = snapshot.summary.additional_properties if snapshot.summary else {}
            if CURSOR_KEY in props:
                return Marker(
                    cursor=json.loads(props[CURSOR_KEY]),
                    run_id=props.get(RUN_KEY, ""),
                    commit_id=props.get(COMMIT_KEY, ""),
                    snapshot_id=snapshot.snapshot_id,
                    source_rows=int(props.get(ROWS_KEY, "0")),
                    window_hi=props.get(HI_KEY),
                )
        return None

    def find_commit(self, commit_id: str) -> int | None:
        """The snapshot id that carries ``commit_id`` in the current lineage, if any."""
        for snapshot in self._lineage():
            props = snapshot.summary.additional_properties if snapshot.summary else {}
            if props.get(COMMIT_KEY) == commit_id:
                return int(snapshot.snapshot_id)
        return None

    def prune_uncommitted_metadata(self) -> int:
        """Delete metadata files that lost a commit race or a crash and can never become current.

        Path-based Iceberg readers (ClickHouse's ``icebergLocal``, DuckDB's ``iceberg_scan``)
        pick the newest ``*.metadata.json`` in the table's folder, not the catalog's
        pointer. A commit that failed (a conflict, a crash mid-commit) leaves its staged
        metadata file behind. Such a file whose version is at most the current one can never
        be committed any more (a commit needs its base to be current), so it is safe to
        remove; newer ones may belong to a commit in flight and are left alone.
        """
        metadata = self.table.metadata
        current = self.table.metadata_location
        keep = {entry.metadata_file for entry in metadata.metadata_log} | {current}
        version = _metadata_version(current)
        folder = current.rsplit("/", 1)[0]
        try:
            listed = _list_files(self.table.io, folder)
        except Exception as exc:
            raise self._failure(exc, f"cannot list the metadata files of {self.config.target}") from exc
        removed = 0
        for path in listed:
            if not path.endswith(".metadata.json") or path in keep:
                continue
            other = _metadata_version(path)
            if other is not None and version is not None and other <= version:
                try:
                    self.table.io.delete(path)
                    removed += 1
                except Exception:  # noqa: S110 - best effort; the catalog stays the truth
                    pass
        return removed

    def prune_metadata(self, log: Any) -> None:
        """:meth:`prune_uncommitted_metadata`, after a commit: a failure is logged, never fatal."""
        try:
            pruned = self.prune_uncommitted_metadata()
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
            if marker.window_hi:
                props[HI_KEY] = marker.window_hi
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
                    if pf.source_id == field.field_id and _is_time_transform(pf.transform):
                        time_partition = f.partition[index]
                out.append(
                    DataFileEntry(
                        file=f, path=f.file_path, partition=f"{f.spec_id}:{f.partition!r}", spec_id=f.spec_id,
                        size=f.file_size_in_bytes, rows=f.record_count,
                        time_lower=_as_int(from_bytes(field.field_type, lower)) if lower is not None else None,
                        time_upper=_as_int(from_bytes(field.field_type, upper)) if upper is not None else None,
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
            if pf.source_id == field.field_id and _is_time_transform(pf.transform):
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

        tx = self.table.transaction()
        files = _RollingFiles(tx.table_metadata, self.table.io, uuid.uuid4(), target_size, lanes=1)
        try:
            added: list[Any] = []
            for rows in tables:
                added += files.write(rows)
            added += files.finish()
        except BaseException:
            for path in files.abandon():
                _delete_quietly(self.table.io, path)
            raise
        expected = sum(e.rows for e in old)
        written = sum(f.record_count for f in added)
        paths = [f.file_path for f in added]
        if written != expected:
            for path in paths:
                _delete_quietly(self.table.io, path)
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
        except CommitFailedException as exc:
            for path in paths:
                _delete_quietly(self.table.io, path)
            raise CommitConflictError(f"{self.config.target}: another writer committed first ({exc})") from exc
        except Exception as exc:
            raise _refusal(exc, _io_properties(self.table)) or CommitUnknownError(
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
        for snapshot in self._lineage():
            keep.add(snapshot.snapshot_id)
            props = snapshot.summary.additional_properties if snapshot.summary else {}
            if CURSOR_KEY in props:
                break
        return keep

    def expire(self, snapshot_ids: list[int]) -> None:
        from pyiceberg.exceptions import CommitFailedException

        try:
            self.table.maintenance.expire_snapshots().by_ids(snapshot_ids).commit()
            self.refresh()
        except CommitFailedException as exc:
            raise CommitConflictError(f"{self.config.target}: another writer committed first ({exc})") from exc
        except Exception as exc:
            raise self._failure(exc, f"{self.config.target}: expiring snapshots failed") from exc

    def referenced_files(self) -> set[str]:
        """Every file a snapshot or the metadata still refers to: metadata files, manifest
        lists, manifests, data and delete files."""
        metadata = self.table.metadata
        io = self.table.io
        refs = {self.table.metadata_location}
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
            return _walk_files(self.table.io, self.table.metadata.location)
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
        snapshot = self.table.current_snapshot()
        if snapshot is None or snapshot.summary is None:
            return 0
        return int(snapshot.summary.additional_properties.get("total-records", "0"))

    # -- writing -------------------------------------------------------------------------

    def begin(self, source_schema: Any) -> WindowWrite:
        """Start the transaction of one window, evolving the schema inside it when needed."""
        try:
            tx = self.table.transaction()
            changes = plan_evolution(self.table.schema(), source_schema, self.config.name)
            if changes:
                with tx.update_schema() as update:
                    for change in changes:
                        change(update)
            return WindowWrite(self, tx, changes=len(changes))
        except OffloaderError:
            raise
        except Exception as exc:
            raise self._failure(exc, f"cannot start a transaction on {self.config.target}") from exc


class _RollingFiles:
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

        import pyiceberg.io.pyarrow  # noqa: F401 - registers the Parquet writer, whatever the table's FileIO
        from pyiceberg.io.fileformat import FileFormatFactory
        from pyiceberg.manifest import FileFormat
        from pyiceberg.table.locations import load_location_provider

        self.metadata = metadata
        self.io = io
        self.write_uuid = write_uuid
        self.target_size = target_size
        self.lanes = lanes
        self.schema = metadata.schema()
        self.spec = metadata.spec()
        self.format = FileFormatFactory.get(FileFormat.PARQUET)
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
        parts = list(_split_partitions(self.spec, self.schema, table))
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
            if _tell(writer) >= self.target_size:
                done.append(self._close(ident))
        return done

    def _prepare(self, rows: pa.Table) -> pa.Table:
        from pyiceberg.io.pyarrow import _to_requested_schema, pyarrow_to_schema

        file_schema = pyarrow_to_schema(
            rows.schema, name_mapping=self.schema.name_mapping, format_version=self.metadata.format_version
        )
        batches = [
            _to_requested_schema(self.schema, file_schema, batch, include_field_ids=True, format_model=self.format)
            for batch in rows.to_batches()
        ]
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
            sort_order_id=None,
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


def _tell(writer: Any) -> int:
    """Bytes a format writer has put in its file so far."""
    stream = getattr(writer, "_fos", None)
    try:
        return int(stream.tell()) if stream is not None else 0
    except Exception:
        return 0


def _split_partitions(spec: Any, schema: Any, table: pa.Table) -> Iterator[tuple[Any, pa.Table]]:
    """(partition key, rows) of a chunk. A chunk inside one partition (the usual case for
    time-ordered data) is passed through without a copy; others are split by PyIceberg."""
    from pyiceberg.io.pyarrow import _determine_partitions
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
    for part in _determine_partitions(spec, schema, table):
        yield part.partition_key, part.arrow_table_partition


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
        self._files = _RollingFiles(tx.table_metadata, owner.table.io, uuid.uuid4(), target)
        self._carried = _RollingFiles(tx.table_metadata, owner.table.io, uuid.uuid4(), target)

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
            raise CommitConflictError(f"{self.owner.config.target}: another writer committed first ({exc})") from exc
        except Exception as exc:  # CommitStateUnknownException, any other 5xx, a reset: unknown
            raise _refusal(exc, self.io.properties) or CommitUnknownError(
                f"{self.owner.config.target}: commit outcome unknown: {first_line(exc)}"
            ) from exc
        snapshot = self.owner.table.current_snapshot()
        return int(snapshot.snapshot_id)

    def _producer(self, props: dict[str, str], overwrite: bool) -> Any:
        update = self.tx.update_snapshot(snapshot_properties=props)
        return update.overwrite() if overwrite else update.fast_append()

    def discard(self) -> None:
        """Delete the files of a window that will not be committed (best effort)."""
        for files in (self._files, self._carried):
            for path in files.abandon():
                _delete_quietly(self.io, path)
        self.written = WrittenFiles(files=[])


def _io_properties(table: Any) -> Mapping[str, Any]:
    """The properties of a table's FileIO: the catalog's, with what the catalog vended for the table."""
    return getattr(table.io, "properties", None) or {}


def _as_int(value: Any) -> int | None:
    """A time bound as stored (microseconds); None for a column that is not a time."""
    return value if isinstance(value, int) else None


def _is_time_transform(transform: Any) -> bool:
    from pyiceberg.transforms import DayTransform, HourTransform, MonthTransform, YearTransform

    return isinstance(transform, YearTransform | MonthTransform | DayTransform | HourTransform)


def _delete_quietly(io: Any, path: str) -> None:
    try:
        io.delete(path)
    except Exception:  # noqa: S110 - an orphan file is harmless; orphan removal deletes it
        pass


def _walk_files(io: Any, folder: str, recursive: bool = True) -> list[tuple[str, float, int]]:
    """(location, mtime, size) of every file under ``folder`` (or directly in it), through the FileIO.

    Both of PyIceberg's FileIOs are served: PyArrowFileIO through its PyArrow file system,
    FsspecFileIO through its fsspec one. Any other FileIO cannot list, which is an error.
    """
    if hasattr(io, "parse_location") and hasattr(io, "fs_by_scheme"):
        return _walk_pyarrow(io, folder, recursive)
    if hasattr(io, "get_fs"):
        return _walk_fsspec(io, folder, recursive)
    raise CatalogError(f"cannot list {folder}: the FileIO {type(io).__name__} cannot list files")


def _walk_pyarrow(io: Any, folder: str, recursive: bool) -> list[tuple[str, float, int]]:
    from pyarrow.fs import FileSelector, FileType

    scheme, netloc, path = io.parse_location(folder)
    fs = io.fs_by_scheme(scheme, netloc)
    prefix = folder[: len(folder) - len(path)] if folder.endswith(path) else f"{scheme}://"
    infos = fs.get_file_info(FileSelector(path, allow_not_found=True, recursive=recursive))
    return [
        (prefix + info.path, info.mtime.timestamp() if info.mtime else 0.0, int(info.size or 0))
        for info in infos
        if info.type == FileType.File
    ]


def _walk_fsspec(io: Any, folder: str, recursive: bool) -> list[tuple[str, float, int]]:
    from datetime import datetime
    from urllib.parse import urlsplit

    scheme = urlsplit(folder).scheme or "file"
    fs = io.get_fs(scheme, urlsplit(folder).hostname) if scheme.startswith("abfs") else io.get_fs(scheme)
    # s3fs keeps listings in a cache that it also consults to open a file: a stale listing would
    # miss files written since, and a cached one would hide files another process writes later
    # (a metadata file would then "not exist"). List fresh, and keep nothing cached.
    fs.invalidate_cache()
    try:
        found = fs.find(folder, detail=True) if recursive else {e["name"]: e for e in fs.ls(folder, detail=True)}
    except FileNotFoundError:
        return []
    finally:
        fs.invalidate_cache()
    out = []
    for name, info in found.items():
        if info.get("type") != "file":
            continue
        stamp = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or 0.0
        mtime = stamp.timestamp() if isinstance(stamp, datetime) else float(stamp)
        location = name if "://" in name else f"{scheme}://{name}"
        out.append((location, mtime, int(info.get("size") or 0)))
    return out


def _metadata_version(path: str) -> int | None:
    name = path.rsplit("/", 1)[-1]
    head = name.split("-", 1)[0]
    if head.startswith("v"):
        head = head[1:].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _list_files(io: Any, folder: str) -> list[str]:
    """Full locations of the files directly in ``folder``, through the table's FileIO."""
    return [path for path, _, _ in _walk_files(io, folder, recursive=False)]


# ---------------------------------------------------------------------------------------
# Schema evolution

_PROMOTIONS = {("int", "long"), ("float", "double")}


def _type_key(t: Any) -> str:
    return str(t).split("(")[0]


def plan_evolution(current: Any, source: Any, table_name: str) -> list[Any]:
    """The schema updates that make ``current`` accept rows of ``source``; SchemaError if none can.

    Columns new in the source are added (optional); int→long, float→double and decimal
    precision widening are promoted; a source type narrower than the table's is written
    widened. A type changed otherwise, or a required column gone from the source, stops
    the table: no silent change.
    """
    from pyiceberg.types import DecimalType

    changes: list[Any] = []
    problems: list[str] = []
    source_fields = {f.name: f for f in source.fields}
    current_fields = {f.name: f for f in current.fields}
    for name, field in current_fields.items():
        if name not in source_fields and field.required:
            problems.append(f"required column {name!r} ({field.field_type}) was dropped from the source")
    for name, field in source_fields.items():
        have = current_fields.get(name)
        if have is None:
            changes.append(lambda u, f=field: u.add_column(f.name, f.field_type, doc=f.doc))
            continue
        old, new = have.field_type, field.field_type
        if old == new:
            continue
        if (_type_key(old), _type_key(new)) in _PROMOTIONS:
            changes.append(lambda u, n=name, t=new: u.update_column(n, field_type=t))
        elif (_type_key(new), _type_key(old)) in _PROMOTIONS:
            continue  # the source narrowed within what the table holds: written widened
        elif isinstance(old, DecimalType) and isinstance(new, DecimalType) and old.scale == new.scale:
            if new.precision > old.precision:
                changes.append(lambda u, n=name, t=new: u.update_column(n, field_type=t))
        else:
            problems.append(f"column {name!r} changed type from {old} to {new}, which Iceberg cannot evolve")
        if field.required is False and have.required:
            changes.append(lambda u, n=name: u.update_column(n, required=False))
    if problems:
        raise SchemaError(f"table {table_name}: " + "; ".join(problems) + "; the cursor was not moved")
    return changes

"""Every call offloader makes into PyIceberg's private API, and why.

PyIceberg's public API does not cover everything a writer that controls its own files and
commits needs. Each use of a private name is here, one function each, with the reason and
what breaks without it; ``tests/test_iceberg_internals.py`` pins each against the installed
PyIceberg, so an upgrade that renames or changes one fails a fast test instead of a
production cycle. Nothing else in offloader touches a PyIceberg name starting with ``_``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

REST_TIMEOUT = "rest.request-timeout"  # offloader's own property: seconds a REST call may take


def bounded_rest_catalog(name: str, properties: dict[str, str]) -> Any:
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


def parquet_format() -> Any:
    """PyIceberg's Parquet file format model, which creates the file writers.

    ``pyiceberg.io.pyarrow`` registers it with ``FileFormatFactory`` as a side effect of
    being imported, whatever FileIO the table uses (fsspec included): without the import,
    ``FileFormatFactory.get`` finds no Parquet writer and no window can be written.
    """
    import pyiceberg.io.pyarrow  # noqa: F401 - registers the Parquet writer
    from pyiceberg.io.fileformat import FileFormatFactory
    from pyiceberg.manifest import FileFormat

    return FileFormatFactory.get(FileFormat.PARQUET)


def written_bytes(writer: Any) -> int:
    """Bytes a Parquet file writer has put in its file so far: when to roll to the next file.

    PyIceberg's format writer keeps its output stream in the private ``_fos``; its public
    surface has no byte count. Without it every window would go into one file per
    partition, however big (the tests pin that the attribute exists and counts bytes).
    """
    stream = getattr(writer, "_fos", None)
    try:
        return int(stream.tell()) if stream is not None else 0
    except Exception:
        return 0


def to_requested_schema(schema: Any, file_schema: Any, batch: pa.RecordBatch, format_model: Any) -> pa.RecordBatch:
    """``batch`` in the table schema's Parquet layout, with field ids (``_to_requested_schema``).

    PyIceberg's own append path uses this private function to put field ids on the Arrow
    data it writes; offloader writes its files itself (rolling, two lanes) and needs the
    same layout, or readers would not map the columns by id.
    """
    from pyiceberg.io.pyarrow import _to_requested_schema

    return _to_requested_schema(schema, file_schema, batch, include_field_ids=True, format_model=format_model)


def determine_partitions(spec: Any, schema: Any, table: pa.Table) -> Iterator[tuple[Any, pa.Table]]:
    """(partition key, rows) of an Arrow table that spans several partitions (``_determine_partitions``).

    The public write path splits by partition only inside ``append``; offloader splits
    itself to keep its own files, with PyIceberg's function so that partition values are
    computed exactly as PyIceberg computes them.
    """
    from pyiceberg.io.pyarrow import _determine_partitions

    for part in _determine_partitions(spec, schema, table):
        yield part.partition_key, part.arrow_table_partition


def cached_metadata(tx: Any) -> Any:
    """``tx`` with its ``table_metadata`` computed once per staged change, and never copied.

    PyIceberg 0.12's ``Transaction.table_metadata`` replays the staged updates onto the
    table's metadata and deep-copies the result on EVERY read, and a snapshot producer
    reads it a dozen times per commit: the cost of a commit then grows with the table's
    snapshot list (a deep copy of 600 snapshots takes 12 ms here), which is what made a
    window of a long-lived table slow (upstream apache/iceberg-python#2673, fixed there by
    caching the property). The value only changes when the base metadata object or the
    tuple of staged updates is replaced (``_stage`` and ``refresh`` replace them, never
    mutate them), so it is cached on the identity of both; and it is :func:`replayed`
    without the deep copy, because every update PyIceberg applies copies on write.
    tests/unit/test_iceberg_internals.py pins both against the installed PyIceberg.
    """
    tx.__class__ = _cached_transaction_class(type(tx))
    return tx


def replayed(base: Any, updates: tuple[Any, ...], metadata_location: str | None = None) -> Any:
    """``update_table_metadata(base, updates, metadata_location=...)`` without its deep copy.

    The same steps as PyIceberg's (apply each update; when something changed, log the
    previous metadata file and stamp ``last_updated_ms``; check the spec and sort order
    against the schema); the copy only guards against a caller mutating the result, and
    nothing in PyIceberg or offloader mutates table metadata (every update builds new
    objects with ``model_copy``), so versions share their unchanged snapshots.
    """
    if not updates:
        return base
    from pyiceberg.table.update import _apply_table_update, _TableMetadataUpdateContext, _update_table_metadata_log
    from pyiceberg.utils.datetime import datetime_to_millis

    context = _TableMetadataUpdateContext()
    metadata = base
    for update in updates:
        metadata = _apply_table_update(update, metadata, context)
    if context.has_changes() and metadata_location:
        metadata = _update_table_metadata_log(metadata, metadata_location, base.last_updated_ms)
    if context.has_changes() and base.last_updated_ms == metadata.last_updated_ms:
        now = datetime_to_millis(dt.datetime.now().astimezone())
        metadata = metadata.model_copy(update={"last_updated_ms": now})
    metadata.spec().check_compatible(metadata.schema())
    metadata.sort_order().check_compatible(metadata.schema())
    return metadata


_CACHED_CLASSES: dict[type, type] = {}


def _cached_transaction_class(base: type) -> type:
    if getattr(base, "_offloader_cached", False):
        return base
    if base not in _CACHED_CLASSES:

        def table_metadata(self: Any) -> Any:
            key = (self._table.metadata, self._updates)
            hit = self.__dict__.get("_offloader_metadata")
            if hit is not None and hit[0] is key[0] and hit[1] is key[1]:
                return hit[2]
            value = replayed(*key)
            self.__dict__["_offloader_metadata"] = (key[0], key[1], value)
            return value

        _CACHED_CLASSES[base] = type(
            base.__name__, (base,), {"table_metadata": property(table_metadata), "_offloader_cached": True}
        )
    return _CACHED_CLASSES[base]


_SNAPSHOT_JSON: OrderedDict[str, dict[int, tuple[Any, str]]] = OrderedDict()  # table uuid -> snapshot id -> JSON
_SNAPSHOT_JSON_LOCK = threading.Lock()


def metadata_json(metadata: Any) -> str:
    """The table metadata as PyIceberg writes it, each snapshot serialised once in its life.

    A commit writes the whole metadata file, every retained snapshot included (672 for a
    week of 15-minute commits), and serialising those snapshots was most of what a commit
    cost beyond the first. A snapshot never changes after it is made, and the metadata of
    one commit holds the same snapshot objects as the last (:func:`replayed` does not copy
    them), so the JSON of each is kept per table, by snapshot id and object, and the file is
    the rest of the metadata plus those pieces. Format v1 (whose snapshots are rewritten on
    the way out) and PyIceberg's legacy ``-1`` snapshot id take PyIceberg's own path.
    tests/unit/test_iceberg_internals.py pins the output against ``model_dump_json``.
    """
    from pyiceberg.utils.config import Config

    if metadata.format_version == 1 or not metadata.snapshots or Config().get_bool("legacy-current-snapshot-id"):
        return str(metadata.model_dump_json())
    key = str(metadata.table_uuid)
    with _SNAPSHOT_JSON_LOCK:
        known = _SNAPSHOT_JSON.pop(key, {})
    pieces: dict[int, tuple[Any, str]] = {}
    for snapshot in metadata.snapshots:
        entry = known.get(snapshot.snapshot_id)
        pieces[snapshot.snapshot_id] = entry if entry and entry[0] is snapshot else (snapshot, snapshot.model_dump_json())
    with _SNAPSHOT_JSON_LOCK:
        _SNAPSHOT_JSON[key] = pieces
        while len(_SNAPSHOT_JSON) > 64:
            _SNAPSHOT_JSON.popitem(last=False)
    rest = metadata.model_dump_json(exclude={"snapshots"})
    return f'{rest[:-1]},"snapshots":[{",".join(json for _, json in pieces.values())}]}}'


def lean_sql_catalog(name: str, properties: dict[str, str]) -> Any:
    """PyIceberg's SQL catalog with a commit whose cost does not grow with the table's history.

    ``SqlCatalog.commit_table`` reloads the table (parsing its whole metadata file) and
    stages the new metadata with ``update_table_metadata``, which deep-copies it, snapshot
    list included; with 600 snapshots that is 18 ms of a 45 ms window, growing with every
    commit. Two overrides make both constant:

    - ``_convert_orm_to_iceberg`` (how ``load_table`` turns the catalog row into a table)
      keeps the parsed metadata of the last few metadata files it read or committed, keyed
      by location: a metadata file is written once under a fresh name and never changed,
      so the same location always parses to the same metadata;
    - ``_update_and_stage_table`` stages an existing table's metadata with :func:`replayed`
      (no deep copy), and remembers it under its new location for the next load;
    - ``_write_metadata`` writes the new metadata file with :func:`metadata_json`, which
      serialises each snapshot once rather than at every commit.

    A new table, and every other step (the conditional UPDATE that detects a concurrent
    commit, the metadata file write), stay PyIceberg's. tests/unit/test_iceberg_internals.py
    pins both overrides against the installed PyIceberg.
    """
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.serializers import Compressor
    from pyiceberg.table import StagedTable, Table
    from pyiceberg.table.locations import load_location_provider

    parsed: OrderedDict[str, Any] = OrderedDict()
    lock = threading.Lock()  # tables commit from the service's worker threads

    class LeanSqlCatalog(SqlCatalog):
        @staticmethod
        def _write_metadata(metadata: Any, io: Any, metadata_path: str) -> None:
            output = io.new_output(metadata_path)
            data = metadata_json(metadata).encode()
            with output.create(overwrite=False) as stream:
                stream.write(Compressor.get_compressor(output.location).bytes_compressor()(data))

        def _remember(self, location: str, metadata: Any) -> None:
            with lock:
                parsed[location] = metadata
                parsed.move_to_end(location)
                while len(parsed) > 32:
                    parsed.popitem(last=False)

        def _convert_orm_to_iceberg(self, orm_table: Any) -> Any:
            location = orm_table.metadata_location
            with lock:
                metadata = parsed.get(location) if location else None
            if metadata is None:
                table = super()._convert_orm_to_iceberg(orm_table)
                self._remember(table.metadata_location, table.metadata)
                return table
            self._remember(location, metadata)
            return Table(
                identifier=(*self.identifier_to_tuple(orm_table.table_namespace), orm_table.table_name),
                metadata=metadata,
                metadata_location=location,
                io=self._load_file_io(metadata.properties, location),
                catalog=self,
            )

        def _update_and_stage_table(self, current: Any, identifier: Any, requirements: Any, updates: Any) -> Any:
            if current is None:
                return super()._update_and_stage_table(current, identifier, requirements, updates)
            for requirement in requirements:
                requirement.validate(current.metadata)
            metadata = replayed(current.metadata, updates, current.metadata_location)
            version = self._parse_metadata_version(current.metadata_location) + 1
            location = load_location_provider(metadata.location, metadata.properties).new_table_metadata_file_location(version)
            self._remember(location, metadata)
            return StagedTable(
                identifier=identifier,
                metadata=metadata,
                metadata_location=location,
                io=self._load_file_io(properties=metadata.properties, location=location),
                catalog=self,
            )

    return LeanSqlCatalog(name, **properties)

"""The contract between the table operations and the adapters behind them.

The operations (offload, maintain, check, repair, reset) depend on this module only, never
on a concrete adapter: the value types a marker and a data file are described by, the keys
of the marker in a snapshot summary, and one :class:`typing.Protocol` per adapter:

- :class:`Engine`: a ClickHouse connection (``clickhouse``: chDB or HTTP);
- :class:`Sink`, :class:`SinkTable` and :class:`WindowWrite`: the Iceberg catalog, one
  destination table, and the open write of one window (``iceberg``);
- :class:`StateStore`: the watermark mirror, run history, audit log, runner locks and the
  replica table (``state``);
- :class:`Workers`: where a backfill's slices are written (``workers``: this process, local
  processes, or Ray);
- :data:`ArrowQuery`: a query of the embedded engine over an Arrow table (``clickhouse``).

The composition root (``app``) builds the concrete adapters and hands them over as these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

if TYPE_CHECKING:
    from offloader.chtypes import ColumnPlan, TypeOptions
    from offloader.config import TableConfig

# ``query(sql, arrow_input)``: the embedded ClickHouse engine over an Arrow table (checksums).
ArrowQuery = Callable[[str, pa.Table], list[tuple[Any, ...]]]

# The keys of the offload marker in a snapshot summary.
CURSOR_KEY = "offloader.cursor"
RUN_KEY = "offloader.run-id"
COMMIT_KEY = "offloader.commit-id"
ROWS_KEY = "offloader.source-rows"
HI_KEY = "offloader.window-hi"
CORRECTIONS_KEY = "offloader.corrections"  # the last source correction applied (corrections.py), carried by every commit
CUT_KEY = "offloader.cut"  # the run's cut: one time for every table of a cycle
FROZEN_KEY = "offloader.frozen-cut"  # replace mode: the rows up to this time will not change


def plain_location(path: str) -> str:
    """A location without its ``file:`` scheme, so listings and metadata compare equal."""
    for prefix in ("file://", "file:"):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


@dataclass(frozen=True)
class Marker:
    """The progress marker of the last offloader commit in a table's snapshot lineage."""

    cursor: list[Any]
    run_id: str
    commit_id: str
    snapshot_id: int
    source_rows: int
    window_hi: str | None = None
    corrections: str | None = None


@dataclass(frozen=True)
class CutPoint:
    """A snapshot that holds every source row up to ``complete_to`` (its window's end)."""

    complete_to: str
    snapshot_id: int
    timestamp_ms: int
    cut: str | None = None
    frozen: str | None = None


@dataclass(frozen=True)
class LineageEntry:
    """One snapshot of a table's current lineage, as ``offloader rollback`` lists it."""

    snapshot_id: int
    timestamp_ms: int
    operation: str  # the snapshot's operation (append, overwrite, ...), with offloader's own name when it set one
    rows: int  # rows the table holds at this snapshot
    cursor: list[Any] | None  # the cursor its own summary carries (None: not an offloader commit)


@dataclass(frozen=True)
class DataFileEntry:
    """One live data file of a table, as maintenance sees it."""

    file: Any  # the catalog library's own data file object, opaque outside the adapter
    path: str
    partition: str  # a printable, comparable key of (spec, partition values)
    spec_id: int
    size: int
    rows: int
    time_lower: int | None  # bounds of the time column, microseconds
    time_upper: int | None
    time_partition: int | None  # the value of a time transform of the time column, if the spec has one
    has_deletes: bool


@dataclass
class WrittenFiles:
    """Data files written for one window, not yet committed."""

    files: list[Any]
    rows: int = 0
    bytes: int = 0


@dataclass
class KeyedRewrite:
    """The files a correction window rewrites: their rows that stay are already written into
    the window's open write (as carried rows), so only the old files remain to drop."""

    replaced: list[tuple[Any, pa.Table]]  # (old data file, an empty table): the commit's ``replace``
    kept: int = 0  # rows carried over into new files: the cost
    removed: int = 0  # older copies (and deleted keys) removed
    scanned: int = 0  # files read to find them


@dataclass(frozen=True)
class Recovered:
    """What ``catalog recover`` did to one table (``action``: registered, current, would register)."""

    table_name: str
    action: str
    metadata_location: str
    version: int
    cursor: list[Any] | None
    snapshot_id: int | None
    passed_over: tuple[str, ...] = ()  # newer files never known to have landed, left unregistered


@dataclass(frozen=True)
class Mirror:
    """The state store's copy of a table's committed cursor (the Iceberg marker is the truth)."""

    table_name: str
    cursor: list[Any] | None
    snapshot_id: int | None
    run_id: str | None
    updated_at: float


@dataclass
class RunRecord:
    """One run of one table, as written to ``offloader_runs``."""

    run_id: str
    table_name: str
    started_at: float
    finished_at: float | None = None
    window_lo: str | None = None
    window_hi: str | None = None
    windows: int = 0
    rows_written: int = 0
    bytes_written: int = 0
    files_written: int = 0
    snapshot_id: int | None = None
    duration_seconds: float | None = None
    outcome: str = "running"  # running | committed | nothing_new | failed | skipped | stopped | abandoned
    error_class: str | None = None
    error_message: str | None = None
    replica: str | None = None  # the ``[replica] id`` of the process that ran it


@dataclass(frozen=True)
class ReplicaRecord:
    """One `offloader run` process, as written to ``offloader_replicas``."""

    replica_id: str
    host: str
    pid: int
    version: str
    started_at: float
    heartbeat_at: float


@dataclass
class AuditRecord:
    """One maintenance action on one table, as written to ``maintenance_audit_log``."""

    id: str
    table_name: str
    action: str
    started_at: float
    duration_seconds: float = 0.0
    outcome: str = "ok"  # ok | nothing_to_do | failed | skipped
    dry_run: int = 0
    files_before: int | None = None
    files_after: int | None = None
    bytes_before: int | None = None
    bytes_after: int | None = None
    snapshot_id: int | None = None
    detail: str | None = None


class Engine(Protocol):
    """What the operations need from a ClickHouse connection."""

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...
    def command(self, sql: str, params: dict[str, Any] | None = None) -> None: ...
    def stream(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[pa.RecordBatch]: ...
    def close(self) -> None: ...


class StateStore(Protocol):
    """The watermark mirror, run history, maintenance audit log, per-table runner locks and replicas."""

    def mirror(self, table: str) -> Mirror | None: ...
    def mirrors(self) -> dict[str, Mirror]: ...
    def set_mirror(
        self, table: str, target: str, cursor: list[Any] | None, snapshot_id: int | None, run_id: str | None
    ) -> None: ...
    def delete_mirror(self, table: str) -> None: ...
    def record_run(self, run: RunRecord) -> None: ...
    def abandon_runs(self, table: str, by: str, at: float) -> int: ...
    def runs(self, table: str | None = None, limit: int = 20, outcome: str | None = None) -> list[RunRecord]: ...
    def last_runs(self) -> dict[str, RunRecord]: ...
    def reached(self, table: str, upto: str, limit: int = 5000) -> list[str]: ...
    def prune_runs(self, older_than: float) -> int: ...
    def record_audit(self, record: AuditRecord) -> None: ...
    def audits(self, table: str | None = None, action: str | None = None, limit: int = 50) -> list[AuditRecord]: ...
    def lock(self, table: str, wait: float = 0.0) -> AbstractContextManager[bool]: ...
    def held(self, table: str) -> bool: ...
    def beat_replica(self, replica: ReplicaRecord) -> None: ...
    def replicas(self) -> list[ReplicaRecord]: ...
    def remove_replica(self, replica_id: str) -> None: ...
    def prune_replicas(self, older_than: float) -> int: ...


class WindowWrite(Protocol):
    """The open write of one window: data files written, not yet committed."""

    schema_changes: int  # schema updates staged in it (the source gained or changed columns)

    @property
    def owner(self) -> SinkTable: ...
    @property
    def written(self) -> WrittenFiles: ...
    @property
    def arrow_schema(self) -> pa.Schema: ...

    def write(self, table: pa.Table, *, source_rows: bool = True) -> None: ...
    def adopt(self, files: WrittenFiles) -> None: ...
    def flush(self, *, source_rows: bool = True) -> None: ...
    def replaced_files(self, column: str, lo_micros: int, hi_micros: int) -> list[tuple[Any, pa.Table]]: ...
    def replaced_keys(self, keys: pa.Table) -> KeyedRewrite: ...
    def commit(self, marker: Mapping[str, str], replace: Iterable[tuple[Any, pa.Table]] = ()) -> int: ...
    def discard(self) -> None: ...


class SinkTable(Protocol):
    """One destination table: its marker, snapshots and files."""

    @property
    def schema(self) -> Any: ...
    @property
    def default_spec_id(self) -> int: ...
    @property
    def metadata_location(self) -> str: ...
    @property
    def location(self) -> str: ...
    def column_kinds(self) -> dict[str, str]: ...
    def refresh(self) -> None: ...
    def marker(self) -> Marker | None: ...
    def find_commit(self, commit_id: str) -> int | None: ...
    def cut_points(self) -> list[CutPoint]: ...
    def lineage(self) -> list[LineageEntry]: ...
    def roll_back(self, snapshot_id: int) -> None: ...
    def prune_metadata(self, log: Any, *, after_commit: bool = False) -> None: ...
    def carried_marker(self, operation: str) -> dict[str, str]: ...
    def data_files(self, time_column: str) -> list[DataFileEntry]: ...
    def time_partition_of(self, time_column: str, micros: int) -> int | None: ...
    def read_file(self, entry: DataFileEntry) -> Iterator[pa.RecordBatch]: ...
    def rewrite(
        self, old: list[DataFileEntry], tables: Iterable[pa.Table], props: Mapping[str, str], target_size: int
    ) -> tuple[int, list[Any]]: ...
    def snapshots(self) -> list[Any]: ...
    def protected_snapshots(self) -> set[int]: ...
    def expire(self, snapshot_ids: list[int]) -> None: ...
    def referenced_files(self) -> set[str]: ...
    def all_files(self) -> list[tuple[str, float, int]]: ...
    def delete_file(self, path: str) -> None: ...
    def scan_batches(self, columns: list[str], column: str, lo_micros: int, hi_micros: int) -> Iterator[pa.RecordBatch]: ...
    def row_count(self) -> int: ...
    def file_count(self) -> int: ...
    def begin(self, plans: list[ColumnPlan] | None = None) -> WindowWrite: ...


class Sink(Protocol):
    """The Iceberg catalog: the destination tables, opened or created."""

    def ping(self) -> None: ...
    def plan_columns(self, columns: list[tuple[str, str]], options: TypeOptions) -> list[ColumnPlan]: ...
    def open(self, table: TableConfig, plans: list[ColumnPlan], file_size: int | None = None) -> SinkTable: ...
    def load(self, table: TableConfig, *, writable: bool = True) -> SinkTable | None: ...
    def recover(
        self, table: TableConfig, *, location: str | None = None, metadata: str | None = None,
        snapshot_ids: set[int] | None = None, dry_run: bool = False,
    ) -> Recovered: ...  # fmt: skip


class Workers(Protocol):
    """A pool that runs a backfill's slice tasks; a lost worker's task is taken again."""

    size: int

    def submit(self, key: int, task: Callable[..., Any], *args: Any) -> None: ...
    def next_done(self, timeout: float) -> list[tuple[int, Any]]: ...
    def close(self) -> None: ...

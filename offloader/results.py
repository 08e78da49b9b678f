"""What the table operations report: their results, and the hooks that follow them.

:class:`TableResult` is one offload run of one table and :class:`WindowResult` one of its
commits; :class:`ActionResult` is one audited operation on one table (a maintenance action,
a check, a repair, a reset, a rollback). :class:`Observer` is the one set of hooks the service follows
every operation with (metrics, progress); each hook does nothing unless overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from offloader.errors import LockBusyError, OffloaderError

if TYPE_CHECKING:
    from offloader.config import TableConfig


# The maintenance actions, in the order they run, and every operation the audit log records.
MAINTENANCE_ACTIONS = ("compact", "expire_snapshots", "remove_orphans")
AUDITED_ACTIONS = (*MAINTENANCE_ACTIONS, "check", "repair", "reset", "recover", "rollback")


@dataclass
class WindowResult:
    """One committed window."""

    rows: int
    bytes: int
    files: int
    snapshot_id: int
    cursor: list[Any]


@dataclass
class TableResult:
    """What one run of one table did."""

    table: str
    run_id: str
    outcome: str  # committed | nothing_new | skipped | stopped | failed | not_started (the stop came first)
    rows: int = 0
    bytes: int = 0
    files: int = 0
    windows: int = 0
    snapshot_id: int | None = None
    cursor: list[Any] | None = None
    error: OffloaderError | None = None
    reason: str = ""
    duration: float = 0.0
    conflicts: int = 0
    mismatches: int = 0
    attempts: int = 1
    window_results: list[WindowResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome in {"committed", "nothing_new"}

    @property
    def held_elsewhere(self) -> bool:
        """Left alone because another runner (a replica, a one-shot command) held the table's lock."""
        return self.outcome == "skipped" and isinstance(self.error, LockBusyError)

    def add(self, done: WindowResult) -> None:
        """Count one committed window in the run."""
        self.rows += done.rows
        self.bytes += done.bytes
        self.files += done.files
        self.windows += 1
        self.snapshot_id = done.snapshot_id
        self.cursor = done.cursor
        self.window_results.append(done)


@dataclass
class ActionResult:
    """What one audited operation did (or, in a dry run, would do) to one table."""

    table: str
    action: str
    outcome: str = "ok"  # ok | nothing_to_do | failed | skipped
    dry_run: bool = False
    files_before: int | None = None
    files_after: int | None = None
    bytes_before: int | None = None
    bytes_after: int | None = None
    files_removed: int = 0
    files_added: int = 0
    bytes_removed: int = 0
    snapshots_expired: int = 0
    snapshot_id: int | None = None
    detail: str = ""
    duration: float = 0.0
    error: OffloaderError | None = None
    data_files: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome in {"ok", "nothing_to_do"}


class Observer:
    """Hooks the service follows the operations with (metrics, progress). All optional."""

    def window_committed(self, table: TableConfig, result: WindowResult) -> None: ...
    def conflict(self, table: TableConfig) -> None: ...
    def mismatch(self, table: TableConfig) -> None: ...
    def progress(self, table: TableConfig, done: int, total: int) -> None: ...
    def action_finished(self, table: TableConfig, result: ActionResult) -> None: ...
    def held_elsewhere(self, table: TableConfig) -> None: ...
    def replica_delay(self, table: TableConfig, seconds: float) -> None: ...
    def view_replaced(self, table: TableConfig) -> None: ...
    def view_failed(self, table: TableConfig) -> None: ...

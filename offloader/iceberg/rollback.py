"""Making an earlier snapshot of a table's current lineage current again: one metadata commit.

The main branch is set back to the snapshot (PyIceberg's ``ManageSnapshots.rollback_to_snapshot``);
no data file is written or deleted, and the snapshots rolled back from stay in the metadata,
off the lineage, until snapshot expiry drops them. The commit asserts that the branch still
points where it pointed when the table was loaded, so a writer that committed in between
makes it a conflict, never a silent loss of that writer's snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from offloader.errors import CommitConflictError, CommitUnknownError, first_line
from offloader.iceberg.failures import refusal
from offloader.iceberg.recovery import record_landed


def roll_back(table: Any, snapshot_id: int, target: str, io_properties: Mapping[str, Any]) -> Any:
    """Set the main branch of ``table`` to ``snapshot_id``, an ancestor of its current snapshot; the table after it."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.table.update.snapshot import ManageSnapshots

    tx = table.transaction()
    try:
        ManageSnapshots(transaction=tx).rollback_to_snapshot(snapshot_id)  # staged on the transaction
    except ValueError as exc:  # not a snapshot of the table, or not an ancestor of its current one
        raise CommitConflictError(f"{target}: cannot roll back to snapshot {snapshot_id}: {first_line(exc)}") from exc
    try:
        table = tx.commit_transaction()
        record_landed(table)
        return table
    except CommitFailedException as exc:
        raise CommitConflictError(f"{target}: another writer committed first ({exc})") from exc
    except Exception as exc:
        raise refusal(exc, io_properties) or CommitUnknownError(f"{target}: rollback outcome unknown: {first_line(exc)}") from exc

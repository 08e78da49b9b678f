"""A table's snapshot lineage as offloader reads it: the marker, a commit by its id, the cut points,
the snapshots a rollback can go back to.

The lineage is the chain of snapshots from the current one back through its parents. Each
offloader commit carries a marker in its summary (``ports.CURSOR_KEY`` and the rest); the
newest marker is the table's progress. Every snapshot carrying ``ports.HI_KEY`` is a *cut
point*: the table holds, at that snapshot, every source row up to that time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from offloader.ports import (
    COMMIT_KEY,
    CORRECTIONS_KEY,
    CURSOR_KEY,
    CUT_KEY,
    FROZEN_KEY,
    HI_KEY,
    ROWS_KEY,
    RUN_KEY,
    CutPoint,
    LineageEntry,
    Marker,
)


def _lineage(table: Any) -> Iterator[Any]:
    from pyiceberg.table.snapshots import ancestors_of

    yield from ancestors_of(table.current_snapshot(), table.metadata)


def _props(snapshot: Any) -> dict[str, str]:
    return dict(snapshot.summary.additional_properties) if snapshot.summary else {}


def marker(table: Any) -> Marker | None:
    """The marker of the newest offloader commit in the current lineage."""
    for snapshot in _lineage(table):
        props = _props(snapshot)
        if CURSOR_KEY in props:
            return Marker(
                cursor=json.loads(props[CURSOR_KEY]),
                run_id=props.get(RUN_KEY, ""),
                commit_id=props.get(COMMIT_KEY, ""),
                snapshot_id=snapshot.snapshot_id,
                source_rows=int(props.get(ROWS_KEY, "0")),
                window_hi=props.get(HI_KEY),
                corrections=props.get(CORRECTIONS_KEY),
            )
    return None


def find_commit(table: Any, commit_id: str) -> int | None:
    """The snapshot id that carries ``commit_id`` in the current lineage, if any."""
    for snapshot in _lineage(table):
        if _props(snapshot).get(COMMIT_KEY) == commit_id:
            return int(snapshot.snapshot_id)
    return None


def to_marker(table: Any) -> set[int]:
    """The snapshots from the current one back to the newest carrying the marker, both included."""
    keep: set[int] = set()
    for snapshot in _lineage(table):
        keep.add(snapshot.snapshot_id)
        if CURSOR_KEY in _props(snapshot):
            break
    return keep


def cut_points(table: Any) -> list[CutPoint]:
    """Every snapshot of the current lineage that says what time it is complete up to, newest first."""
    points = []
    for snapshot in _lineage(table):
        props = _props(snapshot)
        if HI_KEY in props:
            points.append(
                CutPoint(
                    complete_to=props[HI_KEY],
                    snapshot_id=int(snapshot.snapshot_id),
                    timestamp_ms=int(snapshot.timestamp_ms),
                    cut=props.get(CUT_KEY),
                    frozen=props.get(FROZEN_KEY),
                )
            )
    return points


def entries(table: Any) -> list[LineageEntry]:
    """Every snapshot of the current lineage, newest first, with the cursor its own summary carries."""
    out = []
    for snapshot in _lineage(table):
        props = _props(snapshot)
        operation = str(snapshot.summary.operation.value) if snapshot.summary else "?"
        own = props.get("offloader.operation")
        out.append(
            LineageEntry(
                snapshot_id=int(snapshot.snapshot_id),
                timestamp_ms=int(snapshot.timestamp_ms),
                operation=f"{operation} ({own})" if own else operation,
                rows=int(props.get("total-records", "0")),
                cursor=json.loads(props[CURSOR_KEY]) if CURSOR_KEY in props else None,
            )
        )
    return out

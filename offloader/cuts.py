"""Consistent cuts across tables: the one cut of a cycle, and the snapshots of every table at a time.

Bronze, silver and gold are offloaded one after another. So that a reader joining them sees
one moment of the source, a cycle takes ONE cut before its first table runs: the ClickHouse
server's now() minus the largest safety lag of its tables (:func:`cycle_cut`). No table of the
cycle goes past it; a table whose own bound is earlier (a lagging replica) stops at its own.
Each snapshot an offload commits carries the run's cut (``ports.CUT_KEY``), the end of its
window (``ports.HI_KEY``) and, in replace mode, the frozen cut (``ports.FROZEN_KEY``).

A table is *exact at* time ``t`` when one of its snapshots' windows ends at ``t``, or when a
run that completed (committed, or found nothing new) reached ``t``: its newest snapshot whose
window ends at or before ``t`` then holds exactly the source rows up to ``t``. :func:`as_of`
finds the latest time at or before a given one at which every chosen table is exact, and
each table's snapshot at it, with the query that reads it in ClickHouse, DuckDB, Spark and
Trino. The run history is kept ``state.history_retention`` and snapshots
``maintenance.retain``: older cuts are found only from the snapshots that remain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from offloader import federation
from offloader.config import Config, TableConfig
from offloader.cursor import format_time, parse_time
from offloader.ports import CutPoint, Engine, Sink, StateStore
from offloader.source import server_now


def cycle_cut(config: Config, tables: Sequence[TableConfig], engine: Callable[[], Engine], log: Any) -> str | None:
    """The cut of a cycle over ``tables``: the server's now() minus their largest safety lag.

    None when the source cannot be asked (whatever the failure); each table then meets
    the same failure in its own run, and its outcome says what failed.
    """
    if not tables:
        return None
    lag = max(t.safety_lag if t.safety_lag is not None else config.source.safety_lag for t in tables)
    try:
        return format_time(server_now(engine()) - timedelta(seconds=lag))
    except Exception as exc:  # noqa: BLE001 - whatever it is, each table meets it again and its outcome says so
        log.debug("cycle_cut_unknown", error_type=type(exc).__name__, error=str(exc).splitlines()[0] if str(exc) else "")
        return None


@dataclass
class TableAt:
    """One table at the cut: its snapshot, and how to read it."""

    name: str
    target: str
    snapshot_id: int | None = None
    complete_to: str | None = None
    frozen: str | None = None
    committed_at: str | None = None
    location: str | None = None
    metadata_location: str | None = None
    queries: dict[str, str] = field(default_factory=dict)


@dataclass
class Cuts:
    """The answer of :func:`as_of`: the consistent cut (None when there is none) and every table at it."""

    as_of: str
    cut: str | None
    tables: list[TableAt]

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of,
            "cut": self.cut,
            "consistent": self.cut is not None,
            "tables": [asdict(t) for t in self.tables],
        }


def as_of(config: Config, tables: Sequence[TableConfig], sink: Sink, state: StateStore, moment: str) -> Cuts:
    """The latest time at or before ``moment`` at which every table in ``tables`` is exact."""
    upto = format_time(parse_time(moment))
    points: dict[str, list[CutPoint]] = {}
    exact: dict[str, set[str]] = {}
    loaded = {}
    for table in tables:
        found = sink.load(table, writable=False)
        loaded[table.name] = found
        points[table.name] = [p for p in (found.cut_points() if found else []) if _at_or_before(p.complete_to, upto)]
        runs = state.reached(table.name, upto)
        exact[table.name] = {_norm(p.complete_to) for p in points[table.name]} | {_norm(r) for r in runs}
    common = set.intersection(*exact.values()) if exact else set()
    cut = max(common, key=parse_time) if common else None
    answer = []
    for table in tables:
        at = TableAt(table.name, table.target)
        chosen = _newest_at_or_before(points[table.name], cut or upto)
        found = loaded[table.name]
        if chosen is not None and found is not None:
            at.snapshot_id, at.complete_to, at.frozen = chosen.snapshot_id, chosen.complete_to, chosen.frozen
            at.committed_at = format_time(datetime.fromtimestamp(chosen.timestamp_ms / 1000, UTC))
            at.location, at.metadata_location = found.location, found.metadata_location
            at.queries = queries(config, table, at.location, at.metadata_location, chosen.snapshot_id)
        answer.append(at)
    return Cuts(upto, cut, answer)


def queries(config: Config, table: TableConfig, location: str, metadata: str, snapshot_id: int) -> dict[str, str]:
    """How four engines read ``table`` at ``snapshot_id`` (each a query to paste)."""
    catalog = config.catalog.name
    clickhouse = federation.reader(config, location, metadata)  # as the federated views reach the warehouse
    duck_path = metadata.removeprefix("file://")
    return {
        "clickhouse": f"SELECT * FROM (SELECT * FROM {clickhouse} SETTINGS iceberg_snapshot_id = {snapshot_id})",
        "duckdb": f"SELECT * FROM iceberg_scan('{duck_path}', snapshot_from_id => {snapshot_id})",
        "spark": f"SELECT * FROM {catalog}.{table.target} VERSION AS OF {snapshot_id}",
        "trino": f"SELECT * FROM {catalog}.{table.target} FOR VERSION AS OF {snapshot_id}",
    }


def _norm(text: str) -> str:
    return format_time(parse_time(text))


def _at_or_before(text: str, upto: str) -> bool:
    return parse_time(text) <= parse_time(upto)


def _newest_at_or_before(points: list[CutPoint], upto: str) -> CutPoint | None:
    """The newest snapshot (points are newest first) whose window ends at or before ``upto``."""
    return next((p for p in points if _at_or_before(p.complete_to, upto)), None)

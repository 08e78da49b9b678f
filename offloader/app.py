"""The composition root: where config becomes objects, and a cycle runs tables in order.

Only here are the concrete adapters built (ClickHouse engine, Iceberg sink, state store).
:meth:`App.run_cycle` runs tables in dependency order (bronze, silver, gold); a table whose
upstream failed this cycle is skipped and says why. :meth:`App.status` gathers what an
operator asks first: cursor, lag, rows in Iceberg, last run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from offloader import source as source_mod
from offloader.config import Config, TableConfig
from offloader.errors import OffloaderError
from offloader.offload import Observer, TableOffload, TableResult
from offloader.sink import Sink, SinkTable
from offloader.source import Cursor, Source, parse_time
from offloader.state import StateStore


@dataclass
class TableStatus:
    table: str
    layer: str
    target: str
    cursor: list[Any] | None
    source_newest: str | None
    lag_seconds: float | None
    iceberg_rows: int | None
    snapshot_id: int | None
    last_run: dict[str, Any] | None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class App:
    """offloader wired from one Config."""

    def __init__(self, config: Config, *, engine: source_mod.Engine | None = None) -> None:
        self.config = config
        if config.data_dir is not None:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = structlog.get_logger("offloader")
        self.state = StateStore(config.state)
        self.state.migrate()
        self.sink = Sink(config.catalog)
        self._engine = engine
        self._owns_engine = engine is None
        self._engine_lock = threading.Lock()

    @property
    def engine(self) -> source_mod.Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = source_mod.connect(self.config.source)
            return self._engine

    def close(self) -> None:
        if self._engine is not None and self._owns_engine:
            self._engine.close()
        self._engine = None
        self.state.close()

    # -- running ---------------------------------------------------------------------------

    def run_table(self, table: TableConfig, observer: Observer | None = None, stop: threading.Event | None = None) -> TableResult:
        return TableOffload(table, self.config, self.engine, self.sink, self.state, observer=observer, stop=stop).run()

    def run_cycle(
        self, tables: Iterable[TableConfig] | None = None, observer: Observer | None = None, stop: threading.Event | None = None
    ) -> list[TableResult]:
        """One cycle: every table in dependency order; dependents of a failed table are skipped."""
        chosen = list(tables) if tables is not None else self.config.ordered_tables()
        names = {t.name for t in chosen}
        results: dict[str, TableResult] = {}
        for table in chosen:
            if stop is not None and stop.is_set():
                break
            failed = [d for d in table.depends_on if d in names and d in results and not results[d].ok]
            if failed:
                result = TableResult(
                    table.name, "", "skipped", reason=f"upstream {', '.join(failed)} did not complete this cycle"
                )
                self.log.warning("table_skipped", table=table.name, reason=result.reason)
                results[table.name] = result
                continue
            try:
                results[table.name] = self.run_table(table, observer, stop)
            except OffloaderError as exc:  # the state store failing before the run could be recorded
                results[table.name] = TableResult(table.name, "", "failed", error=exc, reason=str(exc).splitlines()[0])
                self.log.error("table_failed", table=table.name, error_type=exc.kind, error=str(exc))
        self._prune_history()
        return list(results.values())

    def _prune_history(self) -> None:
        """Drop run history older than ``state.history_retention``."""
        import time

        try:
            pruned = self.state.prune_runs(time.time() - self.config.state.history_retention)
        except OffloaderError as exc:
            self.log.warning("history_prune_failed", error=str(exc))
            return
        if pruned:
            self.log.info("history_pruned", runs=pruned)

    # -- status ------------------------------------------------------------------------------

    def status(self) -> list[TableStatus]:
        mirrors = self.state.mirrors()
        runs = self.state.last_runs()
        out = []
        for table in self.config.ordered_tables():
            problems = []
            cursor = mirrors[table.name].cursor if table.name in mirrors else None
            rows = snapshot = None
            try:
                loaded = self.sink.load(table.target)
                if loaded is not None:
                    sink_table = SinkTable(loaded, table, writable=False)
                    marker = sink_table.marker()
                    rows = sink_table.row_count()
                    snapshot = marker.snapshot_id if marker else None
                    cursor = marker.cursor if marker else cursor
                else:
                    rows = 0
            except OffloaderError as exc:
                problems.append(str(exc).splitlines()[0])
            newest = lag = None
            try:
                newest = Source(self.engine, table.source_database, table.source_table, table.cursor).newest_time()
                if newest is not None:
                    behind = parse_time(Cursor.from_json(cursor).time) if cursor else None
                    lag = (parse_time(newest) - behind).total_seconds() if behind else None
                    lag = max(lag, 0.0) if lag is not None else None
            except OffloaderError as exc:
                problems.append(str(exc).splitlines()[0])
            run = runs.get(table.name)
            out.append(
                TableStatus(
                    table=table.name,
                    layer=table.layer,
                    target=table.target,
                    cursor=cursor,
                    source_newest=newest,
                    lag_seconds=lag,
                    iceberg_rows=rows,
                    snapshot_id=snapshot,
                    last_run=None
                    if run is None
                    else {
                        "run_id": run.run_id,
                        "outcome": run.outcome,
                        "rows": run.rows_written,
                        "started_at": datetime.fromtimestamp(run.started_at, UTC).isoformat(timespec="seconds"),
                        "duration_seconds": run.duration_seconds,
                        "error": run.error_message,
                    },
                    problem="; ".join(problems) or None,
                )  # fmt: skip
            )
        return out

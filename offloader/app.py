"""The composition root: where config becomes objects, and a cycle runs tables in order.

Only here are the concrete adapters built (ClickHouse engine, Iceberg sink, state store).
:meth:`App.run_cycle` runs tables in dependency order (bronze, silver, gold); a table whose
upstream failed this cycle is skipped and says why. :meth:`App.backfill` picks where a
backfill's slices are written and drives it; :func:`write_backfill_slice` is the task a
backfill worker runs. :meth:`App.status` gathers what an operator asks first: cursor, lag,
rows in Iceberg, last run.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from offloader import backfill, clickhouse, consistency, cuts, federation, log, maintenance, recovery, replicas, reset, workers
from offloader.config import Config, TableConfig, format_duration
from offloader.cursor import Cursor, parse_time
from offloader.errors import ConfigError, OffloaderError
from offloader.iceberg import Sink
from offloader.job import TableJob
from offloader.offload import Offload
from offloader.ports import Engine, Recovered, ReplicaRecord
from offloader.results import MAINTENANCE_ACTIONS, ActionResult, Observer, TableResult
from offloader.source import Source
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
    ttl_headroom_seconds: float | None = None
    ttl_risk: bool = False
    unreadable: list[str] = field(default_factory=list)  # the parts that could not be read: catalog, source
    owner: str | None = None  # the live replica that owns the table (replicas.py); None with no replica live
    iceberg_files: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if out["ttl_headroom_seconds"] == float("inf"):
            out["ttl_headroom_seconds"] = "inf"  # nothing waits: JSON has no infinity
        return out


class App:
    """offloader wired from one Config."""

    def __init__(self, config: Config, *, engine: Engine | None = None) -> None:
        self.config = config
        if engine is None and config.source.embedded and not clickhouse.embedded_engine_available():
            raise ConfigError(
                f"source.dsn = {config.source.display_dsn!r} needs the embedded ClickHouse engine: {clickhouse.NO_EMBEDDED_ENGINE}"
            )
        if config.data_dir is not None:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = structlog.get_logger("offloader")
        if config.catalog.warehouse.startswith("s3") and "s3.region" not in config.catalog.properties:
            self.log.warning(
                "s3_region_unset", hint="set catalog.s3.region (or AWS_REGION): without it every start looks the region up"
            )
        self.state = StateStore(config.state)
        self.state.migrate()
        self.sink = Sink(config.catalog)
        self.federation = federation.Federation(config)
        self._engine = engine
        self._owns_engine = engine is None
        self._engine_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = clickhouse.connect(self.config.source)
            return self._engine

    def close(self) -> None:
        if self._engine is not None and self._owns_engine:
            self._engine.close()
        self._engine = None
        self.state.close()

    def job(
        self, table: TableConfig, *, observer: Observer | None = None, stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> TableJob:  # fmt: skip
        """What one operation on ``table`` needs, wired from this app's adapters."""
        views = self.federation
        return TableJob(
            table, self.config, lambda: self.engine, self.sink, self.state, clickhouse.arrow_engine,
            observer=observer or Observer(), stop=stop or threading.Event(), clock=clock,
            after_commit=(lambda j, s: views.after_commit(j.table, j.engine, s, j.observer, j.log)) if views.enabled else None,
        )  # fmt: skip

    # -- running ---------------------------------------------------------------------------

    def run_table(
        self, table: TableConfig, observer: Observer | None = None, stop: threading.Event | None = None, cut: str | None = None
    ) -> TableResult:
        """One run of one table up to ``cut`` at most, retrying transient errors with backoff (``[schedule] retry_*``).

        Whatever stops a run (the source down, the state store failing, a bug) is its outcome,
        recorded in the run history all the same."""
        policy = self.config.schedule
        stop = stop or threading.Event()
        attempt = 1
        while True:
            result = Offload(self.job(table, observer=observer, stop=stop), cut).run()
            error = result.error
            if result.outcome != "failed" or error is None or not error.retryable or attempt >= policy.retry_attempts:
                result.attempts = attempt
                return result
            delay = min(policy.retry_backoff * 2 ** (attempt - 1), policy.retry_backoff_max)
            attempt += 1
            self.log.warning(
                "table_retry", table=table.name, attempt=attempt, attempts=policy.retry_attempts,
                delay_seconds=delay, error_type=error.kind, error=result.reason,
            )  # fmt: skip
            if stop.wait(delay):
                result.attempts = attempt - 1
                return result

    def run_cycle(
        self,
        tables: Iterable[TableConfig] | None = None,
        observer: Observer | None = None,
        stop: threading.Event | None = None,
        max_parallel: int | None = None,
        elsewhere: Mapping[str, str] | None = None,
    ) -> list[TableResult]:
        """One cycle over ``tables`` (default: all) in dependency order.

        Tables whose upstreams are done run in parallel, up to ``max_parallel``. A table
        runs only when every upstream in this cycle completed (committed or found nothing
        new); otherwise it is skipped and says why. A failed table never stops its siblings.
        A table whose upstream another replica owns (``elsewhere``: table -> replica) first
        waits while that upstream is being offloaded (``replicas.wait_for_upstreams``).
        Every table of the cycle stops at the same cut (``cuts.cycle_cut``), so that a reader
        joining them at their snapshots of that cut sees one moment of the source.
        """
        from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

        chosen = list(tables) if tables is not None else self.config.ordered_tables()
        names = {t.name for t in chosen}
        stop = stop or threading.Event()
        parallel = max(1, max_parallel or self.config.schedule.max_parallel)
        results: dict[str, TableResult] = {}
        waiting = list(chosen)
        cut = cuts.cycle_cut(self.config, chosen, lambda: self.engine, self.log)
        running: dict[Future[TableResult], TableConfig] = {}
        with ThreadPoolExecutor(parallel, thread_name_prefix="offloader-table") as pool:
            while waiting or running:
                for table in list(waiting):
                    upstream = [d for d in table.depends_on if d in names]
                    blocked = [d for d in upstream if d in results and not results[d].ok and not results[d].held_elsewhere]
                    if blocked:
                        reason = f"upstream {', '.join(blocked)} did not complete this cycle"
                        results[table.name] = TableResult(table.name, "", "skipped", reason=reason)
                        self.log.warning("table_skipped", table=table.name, reason=reason)
                        waiting.remove(table)
                    elif stop.is_set():
                        results[table.name] = TableResult(table.name, "", "not_started", reason="the service is stopping")
                        waiting.remove(table)
                    elif all(d in results for d in upstream) and len(running) < parallel:
                        held = {d: "another runner" for d in upstream if results[d].held_elsewhere}  # wait for it
                        waits = {**(elsewhere or {}), **held}
                        running[pool.submit(self._run_after_upstreams, table, waits, observer, stop, cut)] = table
                        waiting.remove(table)
                if not running:
                    continue
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    table = running.pop(future)
                    results[table.name] = future.result()
        self._prune_history()
        return [results[t.name] for t in chosen if t.name in results]

    def _run_after_upstreams(
        self, table: TableConfig, elsewhere: Mapping[str, str], observer: Observer | None, stop: threading.Event,
        cut: str | None,
    ) -> TableResult:  # fmt: skip
        wait = self.config.replica.upstream_wait
        replicas.wait_for_upstreams(self.state, table, elsewhere, wait, stop, self.log)
        return self.run_table(table, observer, stop, cut)

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

    def backfill(
        self, table: TableConfig, *, start: str | None = None, end: str | None = None, processes: int = 1,
        ray: str | None = None, slice_rows: int = backfill.DEFAULT_SLICE_ROWS, observer: Observer | None = None,
        stop: threading.Event | None = None,
    ) -> backfill.BackfillResult:  # fmt: skip
        """The table's history from its cursor (or ``start``) up to ``end``, written by ``processes`` workers."""
        problems = []
        if processes < 1:
            problems.append(f"--workers must be at least 1 (got {processes})")
        if slice_rows < 1:
            problems.append(f"--slice-rows must be at least 1 (got {slice_rows})")
        if self.config.source.embedded and (processes > 1 or ray):
            problems.append(
                f"--workers {processes}{' --ray' if ray else ''} needs a ClickHouse server: the embedded engine "
                f"({self.config.source.display_dsn}) opens its data directory in one process only; use --workers 1"
            )
        if problems:
            raise ConfigError(problems)
        pool: Any
        if ray:
            pool = workers.RayTasks(ray, processes)
        elif processes > 1:
            pool = workers.Processes(processes)
        else:
            pool = workers.InProcess()
        task = None if isinstance(pool, workers.InProcess) else functools.partial(write_backfill_slice, self.config, table.name)
        job = self.job(table, observer=observer, stop=stop)
        return backfill.Backfill(job, pool, task, slice_rows=slice_rows).run(start, end)

    # -- maintenance and consistency --------------------------------------------------------

    def maintain(
        self, tables: Iterable[TableConfig] | None = None, *, dry_run: bool = False,
        observer: Observer | None = None, stop: threading.Event | None = None,
        actions: tuple[str, ...] = MAINTENANCE_ACTIONS,
    ) -> list[ActionResult]:  # fmt: skip
        """Compaction, snapshot expiry and orphan removal of every table (or of ``tables``)."""
        results = []
        for table in tables if tables is not None else self.config.ordered_tables():
            if stop is not None and stop.is_set():
                break
            results += maintenance.Maintenance(self.job(table, observer=observer, stop=stop)).run(actions, dry_run=dry_run)
        return results

    def check(
        self, tables: Iterable[TableConfig] | None = None, *, since: str | None = None, repair: bool = False,
        observer: Observer | None = None, stop: threading.Event | None = None,
    ) -> list[consistency.CheckResult]:  # fmt: skip
        """Compare ClickHouse and Iceberg per time bucket; repair the differing buckets when asked."""
        results = []
        for table in tables if tables is not None else self.config.ordered_tables():
            if stop is not None and stop.is_set():
                break
            results.append(consistency.Check(self.job(table, observer=observer, stop=stop)).run(since, repair))
        return results

    def reset(self, table: TableConfig, to: str, observer: Observer | None = None) -> reset.ResetResult:
        """Move the table's cursor back to ``to`` in one commit (rows after it are deleted from Iceberg)."""
        return reset.Reset(self.job(table, observer=observer)).run(to)

    def recover(self, table: TableConfig, *, location: str | None, metadata: str | None, dry_run: bool) -> Recovered:
        """Register the table again from its warehouse files (the catalog lost it, or is behind)."""
        return recovery.recover(self.job(table), location=location, metadata=metadata, dry_run=dry_run)

    def ttl_headroom(self, table: TableConfig, cursor: list[Any] | None) -> float | None:
        """Seconds before the source TTL deletes the oldest row not offloaded yet (None without a TTL)."""
        source = Source(self.engine, table.source_database, table.source_table, table.cursor)
        return source.ttl_headroom(Cursor.from_json(cursor) if cursor else None)

    # -- status ------------------------------------------------------------------------------

    def cuts_as_of(self, tables: Iterable[TableConfig], moment: str) -> cuts.Cuts:
        """Each table's snapshot at the latest consistent cut at or before ``moment``."""
        return cuts.as_of(self.config, list(tables), self.sink, self.state, moment)

    def owners(self) -> dict[str, str | None]:
        """The live replica that owns each table (None for all when no replica runs)."""
        return replicas.assign([t.name for t in self.config.tables], [r.replica_id for r in self.live_replicas()])

    def live_replicas(self) -> list[ReplicaRecord]:
        """The `offloader run` replicas whose heartbeat is within ``[replica] lease``."""
        return replicas.live_of(self.state.replicas(), time.time(), self.config.replica.lease)

    def status(self, tables: Iterable[TableConfig] | None = None, *, with_history: bool = True) -> list[TableStatus]:
        """Cursor (from the Iceberg marker), lag behind the source, rows in Iceberg, last run."""
        mirrors = self.state.mirrors()
        runs = self.state.last_runs() if with_history else {}
        owners = self.owners()
        out = []
        for table in tables if tables is not None else self.config.ordered_tables():
            problems, unreadable = [], []
            cursor = mirrors[table.name].cursor if table.name in mirrors else None
            rows = snapshot = files = None
            copied_to = None  # the time up to which Iceberg holds the source's rows
            try:
                sink_table = self.sink.load(table, writable=False)
                if sink_table is not None:
                    marker = sink_table.marker()
                    rows, files = sink_table.row_count(), sink_table.file_count()
                    snapshot = marker.snapshot_id if marker else None
                    cursor = marker.cursor if marker else None  # Iceberg is the truth: a mirror ahead of it is not progress
                    if marker is not None and table.mode == "replace":
                        copied_to = marker.window_hi
                else:
                    rows, files, cursor = 0, 0, None
            except OffloaderError as exc:
                problems.append(str(exc).splitlines()[0])
                unreadable.append("catalog")
            newest = lag = None
            try:
                copied_to = copied_to or (Cursor.from_json(cursor).time if cursor else None)
                newest = Source(self.engine, table.source_database, table.source_table, table.cursor).newest_time(copied_to)
                if newest is not None:
                    behind = parse_time(copied_to) if copied_to else None
                    lag = (parse_time(newest) - behind).total_seconds() if behind else None
                    lag = max(lag, 0.0) if lag is not None else None
            except OffloaderError as exc:
                problems.append(str(exc).splitlines()[0])
                unreadable.append("source")
            headroom = None
            try:
                headroom = self.ttl_headroom(table, cursor)
            except OffloaderError as exc:
                if str(exc).splitlines()[0] not in problems:  # the source down fails both reads alike
                    problems.append(str(exc).splitlines()[0])
                if "source" not in unreadable:
                    unreadable.append("source")
            risk = headroom is not None and headroom < self.config.maintenance.ttl_margin
            if risk and headroom is not None:
                problems.append(
                    f"TTL risk: the oldest row not offloaded yet is deleted by the source TTL in {format_duration(headroom)} "
                    f"(margin maintenance.ttl_margin = {format_duration(self.config.maintenance.ttl_margin)})"
                )
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
                    iceberg_files=files,
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
                        "replica": run.replica,
                    },
                    problem="; ".join(problems) or None,
                    ttl_headroom_seconds=headroom,
                    ttl_risk=risk,
                    unreadable=unreadable,
                    owner=owners.get(table.name),
                )  # fmt: skip
            )
        return out


_worker_windows: dict[tuple[str, str], Any] = {}  # one backfill worker process: its table's open windows


def write_backfill_slice(config: Config, table_name: str, run_id: str, piece: backfill.Slice) -> backfill.SliceFiles:
    """A backfill worker's task (a local worker process or a Ray task): one slice's data files.

    The worker opens the source and the table once per backfill run and keeps them for its
    next slices; it never touches the state store (the driver records and commits).
    """
    from offloader.window import Windows

    key = (table_name, run_id)
    if key not in _worker_windows:
        _worker_windows.clear()
        log.configure(config.logging.level, config.logging.format)
        engine = clickhouse.connect(config.source)
        job = TableJob(
            config.table(table_name), config, lambda: engine, Sink(config.catalog), StateStore(config.state),
            clickhouse.arrow_engine,
        )  # fmt: skip
        _worker_windows[key] = Windows(job, run_id, job.log.bind(run_id=run_id, operation="backfill_worker"))
    return backfill.write_slice(_worker_windows[key], run_id, piece)

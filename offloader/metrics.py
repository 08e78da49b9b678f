"""Prometheus metrics of offloader: their names, labels, and how a run updates them.

The registry is passed in (a fresh one per test); the service exposes it on ``/metrics``.
Names follow Prometheus conventions (base units, ``_total`` counters); docs/metrics.md maps
them to the predecessor's names and to the alert rules in alerts/.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from offloader import __version__
from offloader.config import TableConfig
from offloader.cursor import parse_time
from offloader.results import AUDITED_ACTIONS, MAINTENANCE_ACTIONS, ActionResult, Observer, TableResult, WindowResult

disable_created_metrics()  # the `_created` series would be about half of /metrics, and nothing reads them

RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics(Observer):
    """Every metric offloader exports, updated from windows, runs and cycles."""

    def __init__(self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        r = self.registry
        self.rows = Counter("offloader_rows", "Rows committed to Iceberg.", ["table", "layer"], registry=r)
        self.bytes = Counter("offloader_bytes_written", "Bytes of data files committed.", ["table"], registry=r)
        self.files = Counter("offloader_files_written", "Data files committed.", ["table"], registry=r)
        self.run_duration = Histogram(
            "offloader_run_duration_seconds", "Duration of one run of one table.", ["table"], buckets=RUN_BUCKETS, registry=r
        )
        self.cycle_duration = Histogram(
            "offloader_cycle_duration_seconds", "Duration of one cycle over all tables.", buckets=RUN_BUCKETS, registry=r
        )
        self.errors = Counter("offloader_errors", "Failed runs, by error type.", ["table", "error_type"], registry=r)
        self.lag = Gauge(
            "offloader_lag_seconds", "How far the committed cursor is behind the newest source row.", ["table"], registry=r
        )
        self.watermark = Gauge(
            "offloader_watermark_timestamp_seconds", "The committed cursor's time, as a Unix timestamp.", ["table"], registry=r
        )
        self.last_success = Gauge(
            "offloader_last_success_timestamp_seconds", "When the table last completed a run.", ["table"], registry=r
        )
        self.consecutive_failures = Gauge(
            "offloader_consecutive_failures", "Failed runs of the table since its last success.", ["table"], registry=r
        )
        self.mismatches = Counter(
            "offloader_window_mismatch", "Windows whose rows written differed from count() in ClickHouse.", ["table"], registry=r
        )
        self.conflicts = Counter(
            "offloader_commit_conflicts", "Commits that lost to another writer and were re-planned.", ["table"], registry=r
        )
        self.cycle_last_duration = Gauge(
            "offloader_cycle_last_duration_seconds", "Duration of the last finished cycle.", registry=r
        )
        self.cycle_started = Gauge(
            "offloader_cycle_started_timestamp_seconds", "When the cycle in flight started; 0 when none runs.", registry=r
        )
        # maintenance, consistency and TTL (offloader maintain / check, and the daily slot)
        self.maintenance_actions = Counter(
            "offloader_maintenance_actions", "Maintenance actions, by outcome (ok, failed, skipped).",
            ["table", "action", "outcome"], registry=r,
        )  # fmt: skip
        self.maintenance_duration = Histogram(
            "offloader_maintenance_duration_seconds", "Duration of one maintenance action on one table.",
            ["table", "action"], buckets=RUN_BUCKETS, registry=r,
        )  # fmt: skip
        self.maintenance_files_removed = Counter(
            "offloader_maintenance_files_removed", "Files taken out of the table (compacted away) or deleted (orphans).",
            ["table", "action"], registry=r,
        )  # fmt: skip
        self.maintenance_files_added = Counter(
            "offloader_maintenance_files_added", "Data files written by compaction.", ["table"], registry=r
        )
        self.maintenance_bytes_removed = Counter(
            "offloader_maintenance_bytes_removed",
            "Bytes of the files removed or compacted away.",
            ["table", "action"],
            registry=r,
        )
        self.snapshots_expired = Counter(
            "offloader_maintenance_snapshots_expired", "Snapshots expired from table metadata.", ["table"], registry=r
        )
        self.maintenance_last_success = Gauge(
            "offloader_maintenance_last_success_timestamp_seconds", "When maintenance of the table last succeeded.",
            ["table"], registry=r,
        )  # fmt: skip
        self.data_files = Gauge(
            "offloader_data_files", "Data files in the table's current snapshot, after maintenance.", ["table"], registry=r
        )
        self.mismatch_ratio = Gauge(
            "offloader_consistency_mismatch_ratio", "Share of the compared time buckets that differ between ClickHouse and Iceberg.",
            ["table"], registry=r,
        )  # fmt: skip
        self.missing_rows = Gauge(
            "offloader_consistency_missing_rows", "Rows ClickHouse holds that Iceberg lacks, over the compared range.",
            ["table"], registry=r,
        )  # fmt: skip
        self.extra_rows = Gauge(
            "offloader_consistency_extra_rows", "Rows Iceberg holds beyond ClickHouse's, over the compared range.",
            ["table"], registry=r,
        )  # fmt: skip
        self.last_check = Gauge(
            "offloader_consistency_last_check_timestamp_seconds", "When the table was last checked.", ["table"], registry=r
        )
        self.ttl_headroom = Gauge(
            "offloader_ttl_headroom_seconds",
            "Time left before the source table's TTL deletes its oldest row not yet offloaded (+Inf when none waits).",
            ["table"], registry=r,
        )  # fmt: skip
        self.replica_delay_gauge = Gauge(
            "offloader_source_replica_delay_seconds",
            "absolute_delay of the source table's replicas in system.replicas, read before each run (0: not replicated).",
            ["table"], registry=r,
        )  # fmt: skip
        self.build_info = Gauge("offloader_build_info", "offloader's version.", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        # replicas (replicas.py): who this process is, whom it saw live, what it owns
        self.replica_info = Gauge("offloader_replica_info", "This process's replica id.", ["replica", "host"], registry=r)
        self.replicas_live = Gauge("offloader_replicas_live", "Live replicas seen at the last cycle.", registry=r)
        self.table_owned = Gauge(
            "offloader_table_owned", "1 when this replica owned the table at its last cycle, else 0.", ["table"], registry=r
        )
        self.held_elsewhere_runs = Counter(
            "offloader_table_held_elsewhere",
            "Runs left alone because another runner held the table's lock.",
            ["table"],
            registry=r,
        )
        self.view_failures = Counter(
            "offloader_federate_view_failures", "Failed replacements of a table's federated view.", ["table"], registry=r
        )
        self.view_stale = Gauge(
            "offloader_federate_view_stale", "1 while the last replacement of the federated view failed.", ["table"], registry=r
        )

    def exposition(self) -> tuple[str, bytes]:
        """The content type and body of ``/metrics``: every metric in the text format."""
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def declare(self, tables: list[TableConfig]) -> None:
        """Export every table's series from the start, at zero."""
        for table in tables:
            self.rows.labels(table=table.name, layer=table.layer)
            for metric in (self.bytes, self.files, self.mismatches, self.conflicts):
                metric.labels(table=table.name)
            self.consecutive_failures.labels(table=table.name).set(0)
            self.held_elsewhere_runs.labels(table=table.name)
            for action in AUDITED_ACTIONS:
                for outcome in ("ok", "failed", "skipped"):
                    self.maintenance_actions.labels(table=table.name, action=action, outcome=outcome)

    # -- Observer ----------------------------------------------------------------------------

    def window_committed(self, table: TableConfig, result: WindowResult) -> None:
        self.rows.labels(table=table.name, layer=table.layer).inc(result.rows)
        self.bytes.labels(table=table.name).inc(result.bytes)
        self.files.labels(table=table.name).inc(result.files)
        self.set_watermark(table, result.cursor[0] if result.cursor else None)

    def conflict(self, table: TableConfig) -> None:
        self.conflicts.labels(table=table.name).inc()

    def mismatch(self, table: TableConfig) -> None:
        self.mismatches.labels(table=table.name).inc()

    def held_elsewhere(self, table: TableConfig) -> None:
        self.held_elsewhere_runs.labels(table=table.name).inc()

    def view_replaced(self, table: TableConfig) -> None:
        self.view_stale.labels(table=table.name).set(0)

    def view_failed(self, table: TableConfig) -> None:
        self.view_failures.labels(table=table.name).inc()
        self.view_stale.labels(table=table.name).set(1)

    # -- replicas ----------------------------------------------------------------------------

    def set_replica(self, replica: str, host: str) -> None:
        self.replica_info.labels(replica=replica, host=host).set(1)

    def set_share(self, tables: list[TableConfig], mine: set[str], live: int) -> None:
        """What this replica owned at its last cycle; a table it does not own has no failures of its own."""
        self.replicas_live.set(live)
        for table in tables:
            self.table_owned.labels(table=table.name).set(int(table.name in mine))
            if table.name not in mine:
                self.consecutive_failures.labels(table=table.name).set(0)

    # -- runs and cycles ---------------------------------------------------------------------

    def run_finished(self, table: TableConfig, result: TableResult) -> None:
        self.run_duration.labels(table=table.name).observe(result.duration)
        failures = self.consecutive_failures.labels(table=table.name)
        if result.ok:
            failures.set(0)
            self.last_success.labels(table=table.name).set(self.clock())
        elif result.outcome == "failed":
            failures.inc()
            kind = result.error.kind if result.error is not None else "unknown"
            self.errors.labels(table=table.name, error_type=kind).inc()

    def set_watermark(self, table: TableConfig, cursor_time: str | None) -> None:
        if cursor_time:
            self.watermark.labels(table=table.name).set(parse_time(cursor_time).timestamp())

    def set_lag(self, table: TableConfig, seconds: float | None) -> None:
        if seconds is not None:
            self.lag.labels(table=table.name).set(max(seconds, 0.0))

    # -- maintenance, consistency, TTL -----------------------------------------------------

    def action_finished(self, table: TableConfig, result: ActionResult) -> None:
        name = table.name
        outcome = {"nothing_to_do": "ok"}.get(result.outcome, result.outcome)
        self.maintenance_actions.labels(table=name, action=result.action, outcome=outcome).inc()
        self.maintenance_duration.labels(table=name, action=result.action).observe(result.duration)
        if result.dry_run:
            return
        if result.action in {"compact", "remove_orphans"}:
            self.maintenance_files_removed.labels(table=name, action=result.action).inc(result.files_removed)
            self.maintenance_bytes_removed.labels(table=name, action=result.action).inc(result.bytes_removed)
        if result.action == "compact":
            self.maintenance_files_added.labels(table=name).inc(result.files_added)
        if result.action == "expire_snapshots":
            self.snapshots_expired.labels(table=name).inc(result.snapshots_expired)
        if result.data_files is not None:
            self.data_files.labels(table=name).set(result.data_files)
        if result.action in MAINTENANCE_ACTIONS and result.ok:
            self.maintenance_last_success.labels(table=name).set(self.clock())
        if result.action == "check" and result.extra.get("compared"):
            self.mismatch_ratio.labels(table=name).set(result.extra["ratio"])
            self.missing_rows.labels(table=name).set(result.extra["missing_rows"])
            self.extra_rows.labels(table=name).set(result.extra["extra_rows"])
            self.last_check.labels(table=name).set(self.clock())

    def set_ttl_headroom(self, table: TableConfig, seconds: float | None) -> None:
        if seconds is not None:
            self.ttl_headroom.labels(table=table.name).set(seconds)

    def replica_delay(self, table: TableConfig, seconds: float) -> None:
        self.replica_delay_gauge.labels(table=table.name).set(seconds)

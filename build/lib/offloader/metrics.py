"""Prometheus metrics of offloader: their names, labels, and how a run updates them.

The registry is passed in (a fresh one per test); the service exposes it on ``/metrics``.
Names follow Prometheus conventions (base units, ``_total`` counters); docs/metrics.md maps
them to the predecessor's names and to the alert rules in alerts/.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from offloader import __version__
from offloader.config import TableConfig
from offloader.offload import Observer, TableResult, WindowResult
from offloader.source import parse_time

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
        self.build_info = Gauge("offloader_build_info", "offloader's version.", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)

    def declare(self, tables: list[TableConfig]) -> None:
        """Export every table's series from the start, at zero."""
        for table in tables:
            self.rows.labels(table=table.name, layer=table.layer)
            for metric in (self.bytes, self.files, self.mismatches, self.conflicts):
                metric.labels(table=table.name)
            self.consecutive_failures.labels(table=table.name).set(0)

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

"""The long-running service: cycles on a schedule, liveness, graceful shutdown.

APScheduler 3.x runs the offload cycle on ``[schedule] cron`` (or a seconds-level
``interval``), once at start-up unless ``run_at_start = false``, and tables with a ``cron``
of their own on theirs. Cycles run one at a time in a single worker (``max_instances = 1``,
``coalesce``): a cycle that overran is never followed by a burst of catch-up runs. A
heartbeat job in an executor of its own proves the scheduler is ticking, for ``/healthz``.
Maintenance (compaction, expiry, orphans) and the consistency check run daily at
``schedule.maintenance_cron`` in the same worker, so they never overlap a cycle.

The service is one replica (``replicas``): it registers at start, refreshes its row every
``[replica] heartbeat`` in an executor of its own, deletes it on a clean shutdown, and each
cycle and maintenance slot runs only the tables it owns among the live replicas.

SIGTERM or SIGINT stops new work; the table in flight finishes its window or abandons it
before the commit (never half a commit), and the process exits 0 within ``shutdown_timeout``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from offloader import footprint, replicas, scheduler, stops
from offloader.app import App
from offloader.config import TableConfig
from offloader.cursor import format_time
from offloader.metrics import Metrics
from offloader.results import TableResult

HEARTBEAT_SECONDS = 1.0


class Service:
    """offloader as a daemon: scheduler, metrics and the state behind the HTTP endpoints."""

    def __init__(self, app: App, metrics: Metrics | None = None, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.config = app.config
        self.metrics = metrics or Metrics()
        self.metrics.declare(list(self.config.tables))
        self.restore_check_gauges()
        self.monotonic = monotonic
        self.stop = threading.Event()
        self.log = structlog.get_logger("offloader")
        self.last_tick = monotonic()
        self.health_timeout = max(10.0, 10 * HEARTBEAT_SECONDS)
        self.cycles_done = 0
        self._idle = threading.Event()
        self._idle.set()
        self.scheduler = scheduler.background()
        self.replica = replicas.Membership(app.state, self.config.replica)
        self._cycle_seconds, self._lease_warned = float("inf"), False
        self.metrics.set_replica(self.replica.id, self.replica.host)

    # -- jobs ------------------------------------------------------------------------------

    def _trigger(self, cron: str | None) -> Any:
        return scheduler.trigger(
            cron or (None if self.config.schedule.interval else self.config.schedule.cron), self.config.schedule.interval
        )

    def start(self) -> None:
        """Register the jobs and start the scheduler (returns at once)."""
        schedule = self.config.schedule
        own = [t for t in self.config.tables if t.cron]
        shared = [t for t in self.config.ordered_tables() if not t.cron]
        # next_run_time=None would add the job paused: leave it out to wait for the trigger
        first: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if schedule.run_at_start else {}
        if shared:
            self.scheduler.add_job(self.run_cycle, self._trigger(None), args=[shared], id="cycle", name="offload cycle", **first)
        for table in own:
            self.scheduler.add_job(
                self.run_cycle, self._trigger(table.cron), args=[[table]], id=f"table:{table.name}",
                name=f"offload {table.name}", **first,
            )  # fmt: skip
        self.scheduler.add_job(self._beat, "interval", seconds=HEARTBEAT_SECONDS, id="heartbeat", executor="heartbeat")
        self._join()
        self.scheduler.add_job(
            self._replica_beat, "interval", seconds=self.config.replica.heartbeat, id="replica", executor="replica"
        )
        self.scheduler.add_job(self._maintenance, self._trigger(schedule.maintenance_cron), id="maintenance", name="maintenance")
        self.scheduler.start()
        self.log.info("service_started", tables=len(self.config.tables), cron=schedule.cron, interval=schedule.interval)

    def _beat(self) -> None:
        self.last_tick = self.monotonic()

    def _join(self) -> None:
        """Register this replica before the first cycle."""
        schedule = self.config.schedule
        self._replica_beat()
        self.log.info("replica_joined", host=self.replica.host, pid=self.replica.pid, lease=self.config.replica.lease)
        self._cycle_seconds = scheduler.period(None if schedule.interval else schedule.cron, schedule.interval)

    def _check_lease(self, live: list[str]) -> None:
        """Warn once, when another replica is live, if a dead replica's tables would wait past one cycle."""
        lease = self.config.replica.lease
        if len(live) > 1 and not self._lease_warned and lease >= self._cycle_seconds:
            self._lease_warned = True
            self.log.warning(
                "replica_lease_long", lease=lease, cycle_seconds=self._cycle_seconds, replicas=live,
                hint="a dead replica's tables wait more than one cycle: set replica.lease below the cycle interval",
            )  # fmt: skip

    def _replica_beat(self) -> None:
        try:
            self.replica.beat()
        except Exception as exc:  # the state store down: the lease lapses, the table locks still guard every run
            self.log.warning("replica_heartbeat_failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def _maintenance(self) -> None:
        """The daily slot: compaction, expiry and orphan removal, then the consistency check."""
        if self.stop.is_set():
            return
        self._idle.clear()
        started = time.perf_counter()
        try:
            self.log.info("maintenance_started", tables=len(self.config.tables))
            mine = self.replica.share(self.config.ordered_tables()).mine  # each replica maintains what it owns
            actions = self.app.maintain(mine, observer=self.metrics, stop=self.stop)
            checks = []
            settings = self.config.maintenance
            if settings.check and not self.stop.is_set():
                since = None
                if settings.check_since is not None:
                    since = format_time(datetime.now(UTC) - timedelta(seconds=settings.check_since))
                checks = self.app.check(mine, since=since, repair=settings.repair, observer=self.metrics, stop=self.stop)
            self.log.info(
                "maintenance_finished", seconds=round(time.perf_counter() - started, 3),
                failed=sorted({f"{a.table}:{a.action}" for a in actions if a.outcome == "failed"}),
                differing=sorted(c.table for c in checks if c.differing),
            )  # fmt: skip
        except Exception:  # the scheduler must outlive any bug in maintenance
            self.log.exception("maintenance_crashed")
        finally:
            footprint.give_back_memory()
            self._idle.set()

    def restore_check_gauges(self) -> None:
        """The consistency gauges from each table's last recorded check, so a restart keeps them."""
        import json

        for table in self.config.tables:
            try:
                last = self.app.state.audits(table.name, "check", limit=1)
            except Exception:  # noqa: S112 - gauges stay unset until the next check
                continue
            if not last or last[0].outcome != "ok" or not last[0].detail:
                continue
            try:
                found = json.loads(last[0].detail)
                self.metrics.mismatch_ratio.labels(table=table.name).set(float(found["ratio"]))
                self.metrics.missing_rows.labels(table=table.name).set(int(found["missing_rows"]))
                self.metrics.extra_rows.labels(table=table.name).set(int(found["extra_rows"]))
                self.metrics.last_check.labels(table=table.name).set(last[0].started_at)
            except (ValueError, KeyError, TypeError):
                continue

    def run_cycle(self, tables: list[TableConfig]) -> list[TableResult]:
        """One cycle over ``tables``; metrics updated per table and per cycle."""
        if self.stop.is_set():
            return []
        self._idle.clear()
        started = time.perf_counter()
        self.metrics.cycle_started.set(time.time())
        try:
            share = self.replica.share(tables)
            self.metrics.set_share(tables, {t.name for t in share.mine}, len(share.live))
            self._check_lease(share.live)
            self.log.info("cycle_started", tables=len(tables), owned=[t.name for t in share.mine], replicas=share.live)
            results = self.app.run_cycle(share.mine, observer=self.metrics, stop=self.stop, elsewhere=share.elsewhere)
            by_name = {t.name: t for t in tables}
            for result in results:
                if result.outcome != "not_started" and (result.outcome != "skipped" or result.error is None):
                    self.metrics.run_finished(by_name[result.table], result)
            self._update_lag(tables)
            failed = [r.table for r in results if not r.ok and not r.held_elsewhere and r.outcome != "not_started"]
            self.log.info(
                "cycle_finished", seconds=round(time.perf_counter() - started, 3), tables=len(results),
                rows=sum(r.rows for r in results), failed=failed,
            )  # fmt: skip
            return results
        except Exception:  # the scheduler must outlive any bug in one cycle
            self.log.exception("cycle_crashed")
            return []
        finally:
            seconds = time.perf_counter() - started
            self.metrics.cycle_duration.observe(seconds)
            self.metrics.cycle_last_duration.set(seconds)
            self.metrics.cycle_started.set(0)
            self.cycles_done += 1
            footprint.give_back_memory()
            self._idle.set()

    def _update_lag(self, tables: list[TableConfig]) -> None:
        for status in self.app.status(tables, with_history=False):
            table = self.config.table(status.table)
            if status.cursor:
                self.metrics.set_watermark(table, str(status.cursor[0]))
            self.metrics.set_lag(table, status.lag_seconds)
            self.metrics.set_ttl_headroom(table, status.ttl_headroom_seconds)

    # -- health ------------------------------------------------------------------------------

    def healthy(self) -> bool:
        """The scheduler runs and its heartbeat is fresh."""
        return scheduler.running(self.scheduler) and self.monotonic() - self.last_tick < self.health_timeout

    def next_runs(self) -> dict[str, str | None]:
        """Each table's next scheduled run (ISO, UTC)."""
        out: dict[str, str | None] = {}
        for job in self.scheduler.get_jobs():
            if job.id == "cycle" or job.id.startswith("table:"):
                tables = job.args[0]
                when = job.next_run_time.isoformat() if job.next_run_time else None
                for table in tables:
                    out[table.name] = when
        return out

    # -- lifetime ----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the service, one that came while it was starting too."""
        stops.take_over(self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.log.info("shutdown_requested", signal=signal.Signals(signum).name)
        self.stop.set()

    def wait(self) -> None:
        """Block until a stop is requested, then shut down within ``shutdown_timeout``."""
        while not self.stop.wait(0.5):
            pass
        self.shutdown()

    def shutdown(self) -> bool:
        """Stop taking work; wait for the cycle in flight. True when it finished in time."""
        self.stop.set()
        try:
            self.scheduler.shutdown(wait=False)
        except Exception:  # noqa: S110 - already stopped
            pass
        finished = self._idle.wait(self.config.schedule.shutdown_timeout)
        try:
            self.replica.leave()  # the others take its tables at their next cycle, without waiting for the lease
        except Exception as exc:  # the row lapses with its lease
            self.log.warning("replica_leave_failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        self.log.info("service_stopped", clean=finished)
        return finished

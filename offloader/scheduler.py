"""The APScheduler adapter: the scheduler the service runs its jobs on, and its triggers.

The only module that imports APScheduler. :func:`cron_problem` is how config validation
checks a cron expression at start-up with the very parser the scheduler uses; the service
builds its scheduler and triggers here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a 5-field cron expression the scheduler takes, or None."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expression)
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def trigger(cron: str | None, interval: float | None = None) -> Any:
    """Every ``interval`` seconds when there is no cron and an interval is set, else ``cron`` (UTC)."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if cron is None and interval:
        return IntervalTrigger(seconds=interval, timezone=UTC)
    return CronTrigger.from_crontab(cron, timezone=UTC)


def period(cron: str | None, interval: float | None = None) -> float:
    """The shortest time between two runs of :func:`trigger` ``(cron, interval)``, over its next few runs."""
    if cron is None and interval:
        return interval
    fires, when = [], datetime.now(UTC)
    for _ in range(6):
        when = trigger(cron).get_next_fire_time(None, when + timedelta(seconds=1))
        fires.append(when)
    return min((b - a).total_seconds() for a, b in zip(fires, fires[1:], strict=False))


def background() -> Any:
    """A scheduler in threads of its own: one for the jobs, one for the heartbeat, one for the
    replica's heartbeat in the state store (a slow state store never delays /healthz); runs coalesce."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    return BackgroundScheduler(
        timezone=UTC,
        executors={"default": ThreadPoolExecutor(1), "heartbeat": ThreadPoolExecutor(1), "replica": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
    )


def running(scheduler: Any) -> bool:
    """Whether ``scheduler`` has started and not shut down."""
    from apscheduler.schedulers.base import STATE_RUNNING

    return bool(scheduler.state == STATE_RUNNING)

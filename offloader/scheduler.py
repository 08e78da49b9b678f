"""The APScheduler adapter: the scheduler the service runs its jobs on, and its triggers.

The only module that imports APScheduler. :func:`cron_problem` is how config validation
checks a cron expression at start-up with the very parser the scheduler uses; the service
builds its scheduler and triggers here.
"""

from __future__ import annotations

from datetime import UTC
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


def background() -> Any:
    """A scheduler in threads of its own: one for the jobs, one for the heartbeat; runs coalesce."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    return BackgroundScheduler(
        timezone=UTC,
        executors={"default": ThreadPoolExecutor(1), "heartbeat": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 300},
    )


def running(scheduler: Any) -> bool:
    """Whether ``scheduler`` has started and not shut down."""
    from apscheduler.schedulers.base import STATE_RUNNING

    return bool(scheduler.state == STATE_RUNNING)

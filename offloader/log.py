"""Logging: structlog, JSON lines when not on a terminal, readable console output when on one.

The service (``run``, ``demo run``) logs to stdout, as containers expect; the one-shot
commands log to stderr, so that their output on stdout (``status --json``) stays clean. Event
names are stable (``offload_committed``, ``window_verified``, ``table_failed``) and every
line of a table run carries ``table`` and ``run_id``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once for the process."""
    stream = stream or sys.stderr
    json_lines = fmt == "json" or (fmt == "auto" and not stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_lines:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: keep them quiet unless debugging.
    logging.basicConfig(level=logging.WARNING if level != "debug" else logging.DEBUG, stream=stream)
    # Their retries and driver warnings are reported by offloader itself, once, as events.
    for name in ("urllib3", "clickhouse_connect", "pyiceberg", "apscheduler"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.ERROR)

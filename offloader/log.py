"""Logging: structlog, JSON lines when not on a terminal, readable console output when on one.

The service (``run``, ``demo run``) logs to stdout, as containers expect; the one-shot
commands log to stderr, so that their output on stdout (``status --json``) stays clean. Event
names are stable (``offload_committed``, ``window_verified``, ``table_failed``) and every
line of a table run carries ``table`` and ``run_id``, and every line of the process its
``replica`` id (:func:`bind_process`).

A logged exception carries its traceback (in JSON, an ``exception`` list of frames) but never
the frames' local variables, where passwords and secret keys live (a connection URL, a
driver's arguments); only ``--debug`` shows them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_json_lines: bool | None = None  # how the process logs, once configured
_process_fields: dict[str, Any] = {}  # bound in every line of the process, every thread (bind_process)


def bind_process(**fields: Any) -> None:
    """Fields every log line of this process carries from now on, in every thread (the replica id)."""
    _process_fields.update(fields)


def _add_process_fields(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in _process_fields.items():
        event.setdefault(key, value)
    return event


class _QuietLibraries(logging.Filter):
    """Drops the libraries' records below ERROR (all of them shown with ``--log-level debug``)."""

    debug = False
    NAMES = ("urllib3", "clickhouse_connect", "pyiceberg", "apscheduler")

    def filter(self, record: logging.LogRecord) -> bool:
        if self.debug or record.levelno >= logging.ERROR:
            return True
        return record.name.split(".", 1)[0] not in self.NAMES


_progress = {"pending": False}  # a progress line is on the terminal, not ended yet


def show_progress(text: str, stream: TextIO, *, done: bool = False) -> None:
    """Write a progress line over the previous one; ``done`` ends it."""
    stream.write(f"\r\033[K{text}{chr(10) if done else ''}")
    stream.flush()
    _progress["pending"] = not done


def clear_progress(stream: TextIO | None = None) -> None:
    """Erase a pending progress line, so that what is written next starts on a clean line."""
    if _progress["pending"]:
        out = stream or sys.stderr
        out.write("\r\033[K")
        out.flush()
        _progress["pending"] = False


class _ClearsProgress:
    """The log stream on a terminal: a log line first erases the progress line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        clear_progress(self.stream)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None, debug: bool = False) -> None:
    """Configure structlog once for the process; ``debug`` adds the frames' locals to tracebacks."""
    global _json_lines
    stream = stream or sys.stderr
    json_lines = fmt == "json" or (fmt == "auto" and not stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_process_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_lines:
        tracebacks = structlog.tracebacks.ExceptionDictTransformer(show_locals=debug)
        processors += [structlog.processors.ExceptionRenderer(tracebacks), structlog.processors.JSONRenderer()]
    else:
        formatter: Any = structlog.dev.plain_traceback  # better-exceptions, if installed, would show locals
        if structlog.dev.rich is not None:
            formatter = structlog.dev.RichTracebackFormatter(show_locals=debug)
        processors += [structlog.dev.ConsoleRenderer(colors=stream.isatty(), exception_formatter=formatter)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(_ClearsProgress(stream) if stream.isatty() else stream),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: keep them quiet unless debugging.
    logging.basicConfig(level=logging.WARNING if level != "debug" else logging.DEBUG, stream=stream)
    # Their retries and driver warnings are reported by offloader itself, once, as events; a
    # filter on the handlers, because a library may set its own loggers' levels when imported.
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
            handler.addFilter(_QuietLibraries())
    _QuietLibraries.debug = level == "debug"
    _json_lines = json_lines


def internal_error(exc: BaseException) -> None:
    """Log an internal error that ends the process with its traceback (no locals), when the log
    is JSON lines (read by machines); on a console the one-line message must do (``--debug``)."""
    if _json_lines:
        structlog.get_logger("offloader").error("internal_error", error=f"{type(exc).__name__}: {exc}", exc_info=exc)

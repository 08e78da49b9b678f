"""On a terminal, a log line never lands glued to a progress line: the line is erased first."""

from __future__ import annotations

import io

import structlog

from offloader import log


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_line_erases_the_pending_progress_line_first() -> None:
    term = FakeTerminal()
    log.configure("info", "console", term)
    try:
        log.show_progress("  trades: 1,000/3,000 rows ( 33.3%)", term)
        structlog.get_logger("offloader").warning("commit_conflict", attempt=1)
        log.show_progress("  trades: 3,000/3,000 rows (100.0%)", term, done=True)
        structlog.get_logger("offloader").warning("after_the_end")
    finally:
        log.configure("info", "json", io.StringIO())
    text = term.getvalue()
    progress, rest = text.split("( 33.3%)", 1)
    assert rest.startswith("\r\033[K"), repr(rest[:20])  # erased before the warning is written
    assert "commit_conflict" in rest.split("\r\033[K", 2)[1]
    assert text.endswith("\n") and "(100.0%)\n" in text  # the last progress line is ended, not erased
    tail = text.split("(100.0%)\n", 1)[1]
    assert "after_the_end" in tail and not tail.startswith("\r")


def test_progress_clear_is_a_no_op_without_a_pending_line() -> None:
    term = FakeTerminal()
    log.clear_progress(term)
    assert term.getvalue() == ""

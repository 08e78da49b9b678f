"""The command line against real components: status, history, once's per-table lines."""

from __future__ import annotations

import json

import pytest
import structlog
from helpers import Workspace, assert_exact, events, trades_table


def test_status_reports_cursor_lag_rows_and_last_run(ws: Workspace) -> None:
    """`status --json` gives each table's committed cursor, lag behind the source, rows in Iceberg and last run."""
    ws.tables = [trades_table(), trades_table("later", source="k2.later", target="cold.later")]
    ws.create_trades()
    ws.create_trades("later")
    ws.insert_trades(1000, start="2026-01-01 00:00:00", step_us=1_000_000)
    once = ws.cli("once", "--table", "trades")
    assert once.returncode == 0, once.stderr
    assert once.stdout.startswith("trades: committed 1,000 rows")
    ws.insert_trades(10, start="2026-01-01 01:00:00", first_seq=1000)
    status = ws.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    by_table = {s["table"]: s for s in json.loads(status.stdout)}
    trades = by_table["trades"]
    assert trades["cursor"] == ["2026-01-01 00:16:39.000000", 999]
    assert trades["iceberg_rows"] == 1000
    assert trades["lag_seconds"] == pytest.approx(3600 + 0.009 - 999)
    assert trades["last_run"]["outcome"] == "committed" and trades["last_run"]["rows"] == 1000
    assert by_table["later"]["last_run"] is None and by_table["later"]["cursor"] is None
    text = ws.cli("status")
    assert "trades" in text.stdout and "2026-01-01 00:16:39.000000 / 999" in text.stdout


def test_history_lists_every_run_with_its_outcome(ws: Workspace) -> None:
    """`history` shows each table run: outcome, rows, files, windows and error class."""
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(100, start="2026-01-01 00:00:00")
    assert ws.cli("once").returncode == 0
    assert ws.cli("once").returncode == 0
    history = ws.cli("history", "--table", "trades")
    header, *lines = history.stdout.strip().splitlines()
    assert header.split() == ["started", "table", "outcome", "rows", "files", "windows", "took", "replica", "run", "error"]
    assert len(lines) == 2, history.stdout
    assert lines[0].split()[3:6] == ["nothing_new", "0", "0"] and lines[1].split()[3:7] == ["committed", "100", "1", "1"]
    assert header.index("rows") == lines[1].index("100"), "the columns are aligned under the header"
    cut = ws.cli("history", "--table", "trades", "--limit", "1")
    assert len(cut.stdout.strip().splitlines()) == 3 and "(the newest 1 runs; --limit N shows more)" in cut.stdout
    refused = ws.cli("history", "--limit", "-1")
    assert refused.returncode == 2 and "expected a whole number of at least 1" in refused.stderr


def test_failed_upstream_skips_its_dependents_and_exits_1(ws: Workspace) -> None:
    """A failing table does not stop its siblings; its dependents are skipped, each saying why, and the exit is 1."""
    ws.tables = [
        trades_table(),
        trades_table("broken", source="k2.missing", target="cold.broken"),
        trades_table("silver", source="k2.trades", target="cold.silver", layer="silver", depends_on=["broken"]),
    ]
    ws.create_trades()
    ws.insert_trades(10, start="2026-01-01 00:00:00")
    result = ws.cli("once")
    assert result.returncode == 1
    assert "trades: committed 10 rows" in result.stdout
    assert "broken: FAILED: source table k2.missing does not exist" in result.stderr
    assert "silver: skipped: upstream broken did not complete this cycle" in result.stdout


def test_transient_errors_are_retried_with_backoff_and_each_retry_is_logged(ws: Workspace) -> None:
    """A table whose source is down is retried with backoff, each retry logged (a warning) with its attempt number, then fails."""
    import socket

    from offloader.app import App

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    ws.source_dsn = f"http://default@127.0.0.1:{port}/k2"
    ws.tables = [trades_table()]
    ws.schedule.update(retry_attempts=3, retry_backoff="0.1s", retry_backoff_max="1s")
    app = App(ws.config())  # the HTTP source, not the test's chDB
    with structlog.testing.capture_logs() as logs:
        (result,) = app.run_cycle()
    app.close()
    assert result.outcome == "failed" and result.attempts == 3
    retries = events(logs, "table_retry")
    assert [r["attempt"] for r in retries] == [2, 3]
    assert [r["delay_seconds"] for r in retries] == [0.1, 0.2]
    assert all(r["error_type"] == "source_error" and r["table"] == "trades" and r["log_level"] == "warning" for r in retries)
    assert result.reason.startswith(f"cannot connect to ClickHouse at http://default@127.0.0.1:{port}/k2"), result.reason


def test_sigterm_during_once_abandons_the_window_in_flight_and_a_rerun_is_exact(ws: Workspace) -> None:
    """SIGTERM during `once` stops before the next commit, exits 130, and a re-run completes the table exactly."""
    import signal
    import time

    ws.tables = [trades_table()]
    ws.source["max_window"] = "1m"
    ws.create_trades()
    ws.insert_trades(60_000, start="2026-01-01 00:00:00", step_us=100_000)  # 100 windows
    proc = ws.start("once", env={"OFFLOADER_SLOW_AT": "after_commit:1"})  # 100 s in all: never done before the signal
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if ws.iceberg_table("cold.trades").current_snapshot() is not None:
                break
        except Exception:  # noqa: S110 - the table does not exist yet
            pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "trades: stopped after" in out
    table = ws.iceberg_table("cold.trades")
    assert table.scan().to_arrow().num_rows == sum(
        int(s.summary.additional_properties["offloader.source-rows"]) for s in table.snapshots()
    ), "only whole windows were committed"
    rerun = ws.cli("once")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_exact(ws)

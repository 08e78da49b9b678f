"""Exactly-once offload against real components: chDB source, PostgreSQL catalog and state,
Iceberg files read back by PyIceberg and by ClickHouse's own icebergLocal reader."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections import Counter
from typing import Any

import pyarrow as pa
import pytest
import structlog
from helpers import (
    Workspace,
    assert_bars_exact,
    assert_exact,
    bars_table,
    cold_keys,
    create_bars,
    events,
    full_rows,
    trades_table,
    wait_for,
)


def run_together(apps: list[Any]) -> list[list[Any]]:
    """One cycle of each app, all started at the same instant in threads of their own; each app's
    results, one per configured table. An exception raised in a thread is raised here."""
    barrier = threading.Barrier(len(apps))
    results: list[list[Any] | None] = [None for _ in apps]
    errors: list[BaseException] = []

    def runner(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = apps[i].run_cycle()
        except BaseException as exc:  # the test's thread re-raises it
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(len(apps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    done = [r for r in results if r is not None]
    assert [len(r) for r in done] == [len(app.config.tables) for app in apps], results
    return done


@pytest.mark.storage
def test_initial_incremental_and_rerun(ws: Workspace) -> None:
    """An initial load, an incremental load and a re-run leave Iceberg equal to the source, the re-run adding nothing."""
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(5000, start="2026-01-01 00:00:00")
    app = ws.app()
    (first,) = app.run_cycle()
    assert first.outcome == "committed" and first.rows == 5000
    assert_exact(ws)
    src_full = sorted(
        ws.engine.rows(
            "SELECT toString(exchange_timestamp), toString(ingestion_timestamp), sequence_number, symbol, "
            "toString(side), toString(price), toString(quantity) FROM k2.trades"
        )
    )
    cold = full_rows(ws)
    assert [r[2:] for r in cold] == [r[2:] for r in src_full]

    ws.insert_trades(3000, start="2026-01-01 01:00:00", first_seq=5000)
    (second,) = app.run_cycle()
    assert second.outcome == "committed" and second.rows == 3000
    assert_exact(ws)

    snapshots = len(ws.iceberg_table("cold.trades").snapshots())
    (third,) = app.run_cycle()
    assert third.outcome == "nothing_new" and third.rows == 0
    assert len(ws.iceberg_table("cold.trades").snapshots()) == snapshots
    assert_exact(ws)
    app.close()


def test_snapshot_summary_carries_the_marker(ws: Workspace) -> None:
    """Each commit's snapshot summary carries the cursor reached, the run id and the source row count."""
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(100, start="2026-01-01 00:00:00", step_us=1_000_000)
    app = ws.app()
    (result,) = app.run_cycle()
    summary = ws.iceberg_table("cold.trades").current_snapshot().summary.additional_properties
    assert summary["offloader.run-id"] == result.run_id
    assert summary["offloader.source-rows"] == "100"
    assert summary["offloader.cursor"] == '["2026-01-01 00:01:39.000000", 99]'
    mirror = app.state.mirror("trades")
    assert mirror is not None and mirror.cursor == ["2026-01-01 00:01:39.000000", 99]
    app.close()


def test_backlog_split_into_windows(ws: Workspace) -> None:
    """A backlog longer than max_window is committed as several windows, one snapshot each."""
    ws.tables = [trades_table()]
    ws.source["max_window"] = "10m"
    ws.create_trades()
    ws.insert_trades(6000, start="2026-01-01 00:00:00", step_us=1_000_000)  # 100 minutes
    app = ws.app()
    (result,) = app.run_cycle()
    assert result.outcome == "committed" and result.windows >= 10
    table = ws.iceberg_table("cold.trades")
    assert len(table.snapshots()) == result.windows
    assert_exact(ws)
    app.close()


@pytest.mark.storage
@pytest.mark.parametrize("point", ["after_read", "after_write", "after_commit", "after_state"])
def test_sigkill_at_each_point_then_rerun_is_exact(ws: Workspace, point: str) -> None:
    """A process SIGKILLed at each named point of a cycle, then re-run, leaves Iceberg equal to the source."""
    ws.tables = [trades_table()]
    ws.source["max_window"] = "20m"
    ws.create_trades()
    ws.insert_trades(3600, start="2026-01-01 00:00:00", step_us=1_000_000)  # 3 windows
    killed = ws.run_once(kill_at=f"{point}:2")
    assert killed.returncode == -9, killed.stderr[-2000:]
    ws.insert_trades(500, start="2026-01-01 02:00:00", first_seq=3600)
    rerun = ws.run_once()
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_exact(ws)
    again = ws.run_once()
    assert again.returncode == 0 and "nothing new" in again.stdout
    assert_exact(ws)
    from offloader.state import StateStore

    history = StateStore(ws.config().state).runs("trades")
    assert [r.outcome for r in history] == ["nothing_new", "committed", "abandoned"], "the killed run stays marked running"
    assert history[2].error_message is not None and f"found by run {history[1].run_id}" in history[2].error_message


def test_two_runners_together_take_each_row_once(ws: Workspace) -> None:
    """Two runners started together on the same tables leave each row in Iceberg exactly once: for each
    table the one holding its lock commits every row, the other skips it (or finds nothing new) without
    ever meeting it at commit."""
    ws.tables = [trades_table(), trades_table("trades2")]
    ws.source["max_window"] = "5m"
    ws.create_trades()
    ws.create_trades("trades2")
    ws.insert_trades(3000, start="2026-01-01 00:00:00", step_us=100_000)
    ws.insert_trades(3000, start="2026-01-01 00:00:00", step_us=100_000, table="k2.trades2")
    apps = [ws.app(), ws.app()]
    together = run_together(apps)
    outcomes = [[r.outcome for r in results] for results in together]
    assert all(o in {"committed", "nothing_new", "skipped"} for run in outcomes for o in run), outcomes
    for name in ("trades", "trades2"):  # the runner holding a table's lock takes all its rows; the other takes none
        runs = [r for results in together for r in results if r.table == name]
        assert [r.outcome for r in runs].count("committed") == 1 and sum(r.rows for r in runs) == 3000, runs
        assert sum(r.conflicts for r in runs) == 0, "the lock kept the other runner from writing: no commit conflict"
    for app in apps:
        (again, again2) = app.run_cycle()
        assert again.outcome == again2.outcome == "nothing_new", (again, again2)
    assert_exact(ws)
    assert_exact(ws, "k2.trades2", "cold.trades2")
    for app in apps:
        app.close()


def test_writers_without_a_shared_lock_resolve_conflicts_exactly_once(ws: Workspace, tmp_path: Any) -> None:
    """Two writers whose locks do not see each other conflict at commit (the loser counts it, logs
    commit_conflict and re-plans from the winner's marker), and still take each row once."""
    from concurrent.futures import ThreadPoolExecutor

    import psycopg2

    from offloader.app import App
    from offloader.config import StateConfig

    ws.tables = [trades_table()]
    ws.source["max_window"] = "2m"
    ws.create_trades()
    ws.insert_trades(2000, start="2026-01-01 00:00:00", step_us=50_000)
    config = ws.config()
    other = App(
        config.__class__(**{**config.__dict__, "state": StateConfig(dsn=f"sqlite:///{tmp_path}/other-state.db")}),
        engine=ws.engine,
    )
    apps = [ws.app(), other]
    (first,) = apps[0].run_cycle()  # the table exists: both writers plan from its marker
    assert first.outcome == "committed", first.reason
    ws.insert_trades(2000, start="2026-01-01 01:00:00", step_us=50_000, first_seq=2000)
    # The SQL catalog commits by an UPDATE of the table's row: the test holds that row until
    # both writers wait on it, so that both have planned and written before either commits.
    holder = psycopg2.connect(ws.pg_dsn)
    try:
        holder.cursor().execute("SELECT 1 FROM iceberg_tables WHERE table_name = 'trades' FOR UPDATE")
        with structlog.testing.capture_logs() as logs, ThreadPoolExecutor(1) as pool:
            running = pool.submit(run_together, apps)
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            watcher = psycopg2.connect(ws.pg_dsn)
            watcher.autocommit = True
            try:
                wait_for(lambda: running.done() or _scalar(watcher, waiting) == 2, timeout=120, what="both commits waiting")
            finally:
                watcher.close()
            holder.rollback()
            together = [result for results in running.result(timeout=300) for result in results]
    finally:
        holder.close()
    assert sorted(r.outcome for r in together) == ["committed", "nothing_new"], [(r.outcome, r.reason) for r in together]
    conflicts = [entry for entry in logs if entry["event"] == "commit_conflict"]
    assert sum(r.conflicts for r in together) == len(conflicts) == 1, "the two writers met at commit, and one lost"
    assert sum(r.rows for r in together) == 2000, "the loser re-planned from the winner's marker: no row twice"
    for app in apps:
        (again,) = app.run_cycle()
        assert again.outcome == "nothing_new", again.reason
    assert_exact(ws)
    for app in apps:
        app.close()


def _scalar(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


@pytest.mark.storage
def test_mirror_deleted_or_set_back_is_repaired(ws: Workspace) -> None:
    """A deleted or set-back state mirror is repaired from the Iceberg marker, with no row taken twice."""
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(2000, start="2026-01-01 00:00:00")
    app = ws.app()
    app.run_cycle()
    truth = app.state.mirror("trades")
    assert truth is not None

    app.state.delete_mirror("trades")
    (result,) = app.run_cycle()
    assert result.outcome == "nothing_new"
    assert app.state.mirror("trades").cursor == truth.cursor

    app.state.set_mirror("trades", ws.target("cold.trades"), ["2025-12-31 00:00:00.000000", 0], None, "hand-edit")
    ws.insert_trades(1000, start="2026-01-01 03:00:00", first_seq=2000)
    (result,) = app.run_cycle()
    assert result.outcome == "committed" and result.rows == 1000
    assert_exact(ws)
    app.close()


@pytest.mark.storage
def test_mirror_ahead_of_iceberg_stops_the_table_until_mirror_reset(ws: Workspace) -> None:
    """A mirror ahead of Iceberg stops the table with a clear error and exit 1; `mirror reset` lets the next run resume exactly."""
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(1000, start="2026-01-01 00:00:00")
    app = ws.app()
    app.run_cycle()
    app.state.set_mirror("trades", ws.target("cold.trades"), ["2030-01-01 00:00:00.000000", 0], None, "hand-edit")
    ws.insert_trades(500, start="2026-01-02 00:00:00", first_seq=1000)
    app.close()
    result = ws.run_once()
    assert result.returncode == 1
    assert "trades: FAILED" in result.stderr and "mirror" in result.stderr and "ahead" not in result.stdout
    assert "2030-01-01" in result.stderr and "mirror reset --table trades" in result.stderr
    assert len(cold_keys(ws)) == 1000

    forgotten = ws.cli("mirror", "reset", "--table", "trades")
    assert forgotten.returncode == 0 and "forgotten" in forgotten.stdout, forgotten.stderr
    resumed = ws.run_once()
    assert resumed.returncode == 0 and "committed 500 rows" in resumed.stdout, resumed.stderr[-2000:]
    assert_exact(ws)


def test_backlog_split_by_rows_never_splits_a_timestamp(ws: Workspace) -> None:
    """max_window_rows ends a window at the time of its N-th row: windows hold N rows, or more
    only by the ties of their last time, and every row is taken once."""
    ws.tables = [trades_table(max_window_rows=1000)]
    ws.source["max_window"] = "1d"
    ws.create_trades()
    ws.insert_trades(1500, start="2026-01-01 00:00:00", step_us=1000)
    ws.insert_trades(2500, start="2026-01-01 00:00:01.600000", same_ts=True, first_seq=1500)
    ws.insert_trades(1500, start="2026-01-01 00:00:02", step_us=1000, first_seq=4000)
    app = ws.app()
    (result,) = app.run_cycle()
    assert result.outcome == "committed"
    assert [w.rows for w in result.window_results] == [1000, 3000, 1000, 500]
    assert_exact(ws)
    app.close()


def test_ten_thousand_rows_on_one_timestamp_across_window_boundaries(ws: Workspace) -> None:
    """10,000 rows sharing one timestamp, amid tiny windows, are taken exactly once and never split."""
    ws.tables = [trades_table()]
    ws.source["max_window"] = "1ms"
    ws.create_trades()
    ws.insert_trades(50, start="2026-01-01 00:00:00.000000", step_us=300)
    ws.insert_trades(10_000, start="2026-01-01 00:00:00.007000", same_ts=True, first_seq=50)
    ws.insert_trades(50, start="2026-01-01 00:00:00.007100", step_us=300, first_seq=10_050)
    app = ws.app()
    (result,) = app.run_cycle()
    assert result.outcome == "committed"
    assert_exact(ws)
    burst = [w for w in result.window_results if w.rows >= 10_000]
    assert len(burst) == 1, "the 10,000 rows of one timestamp landed in exactly one window"
    app.close()


def test_late_rows_within_the_safety_lag_are_taken_later(ws: Workspace) -> None:
    """Rows newer than now() minus the safety lag wait; rows arriving late within the lag are taken exactly once."""
    ws.tables = [trades_table()]
    ws.source["safety_lag"] = "1h"
    ws.create_trades()
    now = ws.engine.rows("SELECT toString(now64(6, 'UTC'))")[0][0]
    ws.engine.command(
        "INSERT INTO k2.trades SELECT now64(3, 'UTC') - toIntervalMinute(m), now64(6, 'UTC') - toIntervalMinute(m), "
        "number, 'BTC-USDT', 'buy', 1, 1 FROM (SELECT number, [180, 120, 30, 10][number + 1] AS m FROM numbers(4))"
    )
    app = ws.app()
    (result,) = app.run_cycle()
    assert result.rows == 2, "only the rows older than the safety lag were taken"
    # a row arrives late: its timestamp is 40 minutes old, inside the lag
    ws.engine.command(
        "INSERT INTO k2.trades SELECT now64(3, 'UTC') - toIntervalMinute(40), now64(6, 'UTC') - toIntervalMinute(40), "
        "100, 'BTC-USDT', 'sell', 2, 2"
    )
    app.close()
    ws.source["safety_lag"] = "0s"
    app = ws.app()
    (result,) = app.run_cycle()
    assert result.rows == 3 and now
    assert_exact(ws)
    app.close()


def test_window_count_mismatch_commits_nothing(ws: Workspace) -> None:
    """When the rows read differ from count() of the window, the window fails, says so, and commits nothing."""
    ws.tables = [trades_table("flaky", source="k2.flaky", target="cold.flaky")]
    ws.create_trades()
    ws.insert_trades(20_000, start="2026-01-01 00:00:00")
    # a view whose rows differ at every read: ClickHouse evaluates rand() per query
    ws.engine.command("CREATE VIEW k2.flaky AS SELECT * FROM k2.trades WHERE rand() % 2 = 0")
    result = ws.run_once()
    assert result.returncode == 1
    assert "count() in ClickHouse" in result.stderr and "nothing was committed" in result.stderr
    table = ws.iceberg_table("cold.flaky")
    assert table.current_snapshot() is None


def test_uint64_overflow_fails_cleanly_with_nothing_committed(ws: Workspace) -> None:
    """A UInt64 above the signed maximum fails the window naming column and value, with nothing committed."""
    ws.tables = [trades_table("big", source="k2.big", target="cold.big")]
    ws.engine.command("CREATE DATABASE IF NOT EXISTS k2")
    ws.engine.command(
        "CREATE TABLE k2.big (ingestion_timestamp DateTime64(6, 'UTC'), sequence_number UInt64, exchange_timestamp DateTime64(3, 'UTC'), "
        "volume UInt64) ENGINE = MergeTree ORDER BY ingestion_timestamp"
    )
    ws.engine.command(
        "INSERT INTO k2.big VALUES ('2026-01-01 00:00:00', 1, '2026-01-01 00:00:00', 5), "
        "('2026-01-01 00:00:01', 2, '2026-01-01 00:00:01', 9223372036854775808)"
    )
    result = ws.run_once()
    assert result.returncode == 1
    assert "volume" in result.stderr and "9223372036854775808" in result.stderr
    table = ws.iceberg_table("cold.big")
    assert table.current_snapshot() is None
    # the same rows into a table configured for decimal(20, 0)
    ws.tables[0].update(uint64="decimal", target="cold.big_decimal")
    result = ws.run_once()
    assert result.returncode == 0, result.stderr
    values = sorted(r[0] for r in ws.iceberg_local("cold.big_decimal", "toString(volume)"))
    assert values == ["5", "9223372036854775808"]


def test_column_added_in_source_evolves_schema_in_the_same_commit(ws: Workspace) -> None:
    """A column added in ClickHouse joins the Iceberg schema in the same snapshot as the first rows carrying it."""
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(100, start="2026-01-01 00:00:00")
    app = ws.app()
    app.run_cycle()
    ws.engine.command("ALTER TABLE k2.trades ADD COLUMN venue_fee Nullable(Decimal(18, 8))")
    ws.engine.command(
        "INSERT INTO k2.trades SELECT '2026-01-01 01:00:00', '2026-01-01 01:00:00', 1000 + number, 'BTC-USDT', 'buy', 1, 1, "
        "toDecimal64(number / 100, 8) FROM numbers(10)"
    )
    (result,) = app.run_cycle()
    assert result.outcome == "committed" and result.windows == 1
    table = ws.iceberg_table("cold.trades")
    assert "venue_fee" in [f.name for f in table.schema().fields]
    snapshots = table.snapshots()
    assert len(snapshots) == 2, "the schema change did not make a snapshot of its own"
    assert snapshots[-1].schema_id == table.schema().schema_id
    fees = sorted(ws.iceberg_local("cold.trades", "toString(venue_fee)", order=""), key=str)
    assert fees.count(("\\N",)) + fees.count((None,)) == 100
    assert_exact(ws)
    app.close()


def test_column_made_nullable_in_source_is_relaxed_and_its_nulls_offloaded(ws: Workspace) -> None:
    """A column ClickHouse makes Nullable (same type) becomes optional in Iceberg; its NULL rows arrive exactly."""
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(100, start="2026-01-01 00:00:00")
    app = ws.app()
    app.run_cycle()
    assert ws.iceberg_table("cold.trades").schema().find_field("price").required
    ws.engine.command("ALTER TABLE k2.trades MODIFY COLUMN price Nullable(Decimal(18, 8))")
    ws.engine.command(
        "INSERT INTO k2.trades SELECT '2026-01-01 01:00:00', '2026-01-01 01:00:00', 1000 + number, 'BTC-USDT', 'buy', "
        "if(number % 2 = 0, NULL, toDecimal64(1, 8)), 1 FROM numbers(10)"
    )
    (result,) = app.run_cycle()
    assert result.outcome == "committed" and result.rows == 10, result.reason
    assert not ws.iceberg_table("cold.trades").schema().find_field("price").required
    prices = ws.iceberg_local("cold.trades", "toString(price)", order="")
    assert prices.count(("\\N",)) + prices.count((None,)) == 5
    assert_exact(ws)
    app.close()


@pytest.mark.storage
def test_replace_mode_rewrites_open_rows_exactly(ws: Workspace) -> None:
    """mode = "replace" rewrites exactly the trailing rows that still change, and a re-run changes nothing."""
    ws.tables = [bars_table()]
    create_bars(ws)
    ws.engine.command(
        "INSERT INTO k2.trades SELECT now64(3, 'UTC') - toIntervalSecond(number * 7), now64(6, 'UTC') - toIntervalSecond(number * 7), "
        "number, ['BTC-USDT', 'ETH-USDT'][number % 2 + 1], 'buy', 1, toDecimal64(number, 8) FROM numbers(100)"
    )

    def bars_source() -> list[tuple[Any, ...]]:
        return sorted(
            ws.engine.rows("SELECT toString(toDateTime64(window_start, 6, 'UTC')), symbol, trades, toString(volume) FROM k2.bars")
        )

    def bars_cold() -> list[tuple[Any, ...]]:
        return sorted(ws.iceberg_local("cold.bars", "toString(window_start), symbol, trades, toString(volume)"))

    app = ws.app()
    app.run_cycle()
    assert bars_cold() == bars_source()
    # the newest bar changes: more trades land in the open interval
    ws.engine.command(
        "INSERT INTO k2.trades SELECT now64(3, 'UTC'), now64(6, 'UTC'), 1000 + number, 'BTC-USDT', 'sell', 1, 3 FROM numbers(5)"
    )
    app.run_cycle()
    assert bars_cold() == bars_source()
    before = bars_cold()
    app.run_cycle()
    assert bars_cold() == before == bars_source()
    assert_bars_exact(ws)
    app.close()


def test_hostile_column_names_in_the_source_are_quoted_safely(ws: Workspace) -> None:
    """Source columns named with quotes, backticks and SQL are quoted, offloaded and read back intact."""
    ws.tables = [trades_table("odd", source="k2.odd", target="cold.odd", partition_by=[])]
    ws.engine.command("CREATE DATABASE IF NOT EXISTS k2")
    ws.engine.command(
        "CREATE TABLE k2.odd (ingestion_timestamp DateTime64(6, 'UTC'), sequence_number UInt64, "
        '`x; DROP TABLE k2.odd; --` String, `it\'s "quoted"` Int32, `back``tick` Float64) '
        "ENGINE = MergeTree ORDER BY ingestion_timestamp"
    )
    ws.engine.command("INSERT INTO k2.odd VALUES ('2026-01-01 00:00:00', 1, 'ok', 7, 1.5), ('2026-01-01 00:00:01', 2, '', -1, 0)")
    app = ws.app()
    (result,) = app.run_cycle()
    assert result.outcome == "committed" and result.rows == 2
    assert ws.engine.rows("SELECT count() FROM k2.odd") == [(2,)]
    names = [f.name for f in ws.iceberg_table("cold.odd").schema().fields]
    assert names[2:] == ["x; DROP TABLE k2.odd; --", 'it\'s "quoted"', "back`tick"]
    cold = ws.iceberg_arrow("cold.odd").sort_by("sequence_number").to_pylist()
    assert [(r["x; DROP TABLE k2.odd; --"], r['it\'s "quoted"'], r["back`tick"]) for r in cold] == [("ok", 7, 1.5), ("", -1, 0.0)]
    app.close()


@pytest.mark.storage(fileio=True)
def test_metadata_left_by_a_lost_commit_is_pruned_for_path_based_readers(ws: Workspace) -> None:
    """A staged metadata file of a commit that lost its race is removed, so path-based readers read the committed table."""
    import uuid

    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(100, start="2026-01-01 00:00:00")
    app = ws.app()
    app.run_cycle()
    current = ws.iceberg_table("cold.trades").metadata_location
    folder, name = current.rsplit("/", 1)
    version = int(name.split("-", 1)[0].split(".", 1)[0].removeprefix("v"))
    loser = f"{folder}/{version + 1:05d}-{uuid.uuid4()}.metadata.json"
    body = json.loads(ws.storage.read_file(current))
    body["current-snapshot-id"] = 1
    body["snapshots"].append(dict(body["snapshots"][-1], **{"snapshot-id": 1, "manifest-list": f"{folder}/gone.avro"}))
    ws.storage.put_file(loser, json.dumps(body).encode())
    ws.insert_trades(50, start="2026-01-01 01:00:00", first_seq=100)
    (result,) = app.run_cycle()
    assert result.outcome == "committed"
    assert ws.storage.file_mtime(loser) is None, "the lost commit's metadata file was pruned"
    assert_exact(ws)
    app.close()


def test_random_sigkills_then_rerun_is_exact(ws: Workspace) -> None:
    """`offloader once` SIGKILLed at random moments, again and again with new rows arriving, ends exact after a re-run."""
    import random
    import signal
    import time

    rng = random.Random(20261123)  # noqa: S311 - kill timings, not secrets
    ws.tables = [trades_table()]
    ws.source["max_window"] = "2m"
    ws.create_trades()
    first = 0
    for round_ in range(6):
        ws.insert_trades(40_000, start=f"2026-01-01 0{round_}:00:00", step_us=20_000, first_seq=first)
        first += 40_000
        proc = ws.start("once", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 4.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = ws.run_once()
    assert final.returncode == 0, final.stderr[-2000:]
    assert_exact(ws)


def test_unusual_cursor_types_nanoseconds_time_zone_and_string_tie_breaker(ws: Workspace) -> None:
    """A DateTime64(9) cursor in a non-UTC zone with a String tie-breaker full of escapes is taken exactly once."""
    ws.tables = [
        {
            "name": "odd_cursor", "source": "k2.odd_cursor", "target": "cold.odd_cursor", "layer": "bronze",
            "cursor": ["ts", "tag"], "truncate_datetime64": True,
        }
    ]  # fmt: skip
    ws.source["max_window"] = "1ms"
    ws.engine.command("CREATE DATABASE IF NOT EXISTS k2")
    ws.engine.command(
        "CREATE TABLE k2.odd_cursor (ts DateTime64(9, 'Asia/Tokyo'), tag String, v UInt32) ENGINE = MergeTree ORDER BY (ts, tag)"
    )
    tags = ["a", "a\\\\b", "tab\\there", "new\\nline", "quote\\'", 'dq"', "back`tick", "ünï", ""]
    values = ", ".join(
        f"(toDateTime64('2026-01-01 09:00:00', 9, 'Asia/Tokyo') + toIntervalNanosecond({(i // 3) * 700_001}), '{t}', {i})"
        for i, t in enumerate(tags * 20)
    )
    ws.engine.command(f"INSERT INTO k2.odd_cursor (ts, tag, v) VALUES {values}")
    app = ws.app()
    (first,) = app.run_cycle()
    assert first.outcome == "committed", first.reason
    ws.engine.command(
        "INSERT INTO k2.odd_cursor SELECT toDateTime64('2026-01-01 09:00:01', 9, 'Asia/Tokyo') + toIntervalNanosecond(number), "
        "concat('late\\\\', toString(number)), 1000 + number FROM numbers(50)"
    )
    (second,) = app.run_cycle()
    assert second.outcome == "committed" and second.rows == 50
    source = sorted(ws.engine.rows("SELECT tag, v FROM k2.odd_cursor"))
    cold = sorted(ws.iceberg_local("cold.odd_cursor", "tag, v"))
    assert cold == source and len(cold) == len(tags) * 20 + 50
    app.close()


def test_tables_are_created_format_v2_zstd3_with_their_partition_spec_and_file_size(ws: Workspace) -> None:
    """Tables are created from config: format v2, the partition spec asked for, zstd level 3 files rolled at the target size."""
    import pyarrow.parquet as pq

    ws.tables = [trades_table(partition_by=["day(exchange_timestamp)", "symbol"], target_file_size="64KiB")]
    ws.offload["batch_size"] = "256KiB"  # files roll over between chunks
    ws.create_trades()
    ws.insert_trades(60_000, start="2026-01-01 23:50:00", step_us=20_000)  # crosses midnight: two days
    app = ws.app()
    (result,) = app.run_cycle()
    table = ws.iceberg_table("cold.trades")
    assert table.metadata.format_version == 2
    assert table.properties["write.parquet.compression-codec"] == "zstd"
    assert table.properties["write.parquet.compression-level"] == "3"
    assert table.properties["commit.retry.num-retries"] == "0"
    assert [(str(f.transform), f.name) for f in table.spec().fields] == [
        ("day", "exchange_timestamp_day"),
        ("identity", "symbol"),
    ]
    files = [task.file for task in table.scan().plan_files()]
    partitions = {(f.partition[0], f.partition[1]) for f in files}
    assert len(partitions) == 6, "two days times three symbols"
    assert len(files) > len(partitions), "files rolled over at the 64 KiB target"
    assert result.files == len(files)
    meta = pq.ParquetFile(files[0].file_path.removeprefix("file://")).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert_exact(ws)
    app.close()


@pytest.mark.parametrize("moment", ["before", "after"])
def test_unknown_commit_outcome_is_settled_from_the_snapshot_history(
    ws: Workspace, moment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit whose reply is lost is looked up by its commit id: landed means kept, not landed means retried; never twice."""
    ws.tables = [trades_table()]
    ws.source["max_window"] = "20m"
    ws.create_trades()
    ws.insert_trades(3600, start="2026-01-01 00:00:00", step_us=1_000_000)
    app = ws.app()
    monkeypatch.setenv("OFFLOADER_LOSE_COMMIT_REPLY", moment)  # offloader/faults.py
    with structlog.testing.capture_logs() as logs:
        (lost,) = app.run_cycle()
    monkeypatch.delenv("OFFLOADER_LOSE_COMMIT_REPLY")
    unknown, settled = events(logs, "commit_unknown"), events(logs, "commit_settled")
    assert unknown and [s["commit_id"] for s in settled] == [u["commit_id"] for u in unknown], logs
    assert all(s["landed"] is (moment == "after") for s in settled)
    if moment == "before":
        assert lost.outcome == "failed" and "the commit did not land" in lost.reason, lost.reason
        assert len(unknown) == 1 and ws.iceberg_table("cold.trades").current_snapshot() is None
    else:
        assert lost.outcome == "committed" and lost.rows == 3600 and len(unknown) == lost.windows == 3, lost.reason
    (rerun,) = app.run_cycle()
    assert rerun.outcome == ("committed" if moment == "before" else "nothing_new"), rerun.reason
    assert_exact(ws)
    app.close()


@pytest.mark.storage
@pytest.mark.parametrize("point", ["after_write", "after_commit"])
def test_replace_mode_sigkill_then_rerun_equals_the_source(ws: Workspace, point: str) -> None:
    """A replace-mode table SIGKILLed mid-cycle and re-run holds exactly the source's bars: none lost, none twice."""
    ws.tables = [bars_table(replace_lookback="10m", max_window="20m")]
    create_bars(ws)
    ws.engine.command(
        "INSERT INTO k2.trades SELECT now64(3, 'UTC') - toIntervalSecond(number * 3), now64(6, 'UTC') - toIntervalSecond(number * 3), "
        "number, ['BTC-USDT', 'ETH-USDT', 'SOL-USDT'][number % 3 + 1], 'buy', 1, toDecimal64(number, 8) FROM numbers(1200)"
    )  # one hour of trades: three windows
    killed = ws.run_once(kill_at=f"{point}:2")
    assert killed.returncode == -9, killed.stderr[-2000:]
    ws.engine.command(
        "INSERT INTO k2.trades SELECT now64(3, 'UTC'), now64(6, 'UTC'), 5000 + number, 'BTC-USDT', 'sell', 1, 7 FROM numbers(3)"
    )
    rerun = ws.run_once()
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    key = "toString(toDateTime64(window_start, 6, 'UTC')), symbol, trades, toString(volume)"
    source = sorted(ws.engine.rows(f"SELECT {key} FROM k2.bars"))
    cold = sorted(ws.iceberg_local("cold.bars", key))
    assert [k for k, n in Counter((r[0], r[1]) for r in cold).items() if n > 1] == [], "a bar twice"
    assert cold == source
    assert_bars_exact(ws)


def test_every_type_round_trips_through_the_offload_pipeline(ws: Workspace) -> None:
    """Edge values of every mapped type, offloaded by a real cycle, come back unchanged from PyIceberg and icebergLocal."""
    import datetime as dt

    from typecases import EDGES, as_icebergLocal_reads, create, expected_rows, norm

    stamps = [dt.datetime(2026, 1, 1, 0, 0, i, tzinfo=dt.UTC) for i in range(3)]
    columns = [*EDGES, ("ts", "DateTime64(6, 'UTC')", [f"'2026-01-01 00:00:0{i}'" for i in range(3)], stamps)]
    ws.engine.command("CREATE DATABASE IF NOT EXISTS k2")
    create(ws.engine._conn, "k2.edges", columns)
    ws.tables = [
        {
            "name": "edges",
            "source": "k2.edges",
            "target": "cold.edges",
            "layer": "bronze",
            "cursor": ["ts"],
            "partition_by": ["day(ts)"],
        }
    ]
    app = ws.app()
    (result,) = app.run_cycle()
    assert result.outcome == "committed" and result.rows == 3, result.reason
    expected = expected_rows(columns)
    assert norm(ws.iceberg_arrow("cold.edges").sort_by("id").to_pylist()) == expected
    location = ws.iceberg_table("cold.edges").metadata.location.removeprefix("file://")
    here = os.getcwd()
    os.chdir(ws.root)
    try:
        table = pa.ipc.open_file(
            pa.py_buffer(ws.engine._conn.query(f"SELECT * FROM icebergLocal('{location}') ORDER BY id", "Arrow").bytes())
        ).read_all()
    finally:
        os.chdir(here)
    null_struct = {"nt": {"x": 0, "y": dt.date(1970, 1, 1), "e": ""}}
    assert norm(table.to_pylist()) == as_icebergLocal_reads(expected, null_struct)
    app.close()

"""Keeping the cold tier healthy, against real components: compaction, snapshot expiry, orphan
removal, the consistency check and its repair, cursor reset and TTL headroom. Every result is
read back with PyIceberg and with ClickHouse's own icebergLocal reader."""

from __future__ import annotations

import datetime
import json
import threading
import time
from typing import Any

import pytest
from helpers import Workspace, assert_bars_exact, assert_exact, bars_table, create_bars, full_rows, run_cli, trades_table

DAY_US = 86_400_000_000
RACE_SECONDS = 300  # the racing test's bound on how long it takes maintenance and the cycles to meet


def daily_table(**overrides: Any) -> dict[str, Any]:
    """Trades partitioned by day of the cursor column: a day before the cursor's is closed."""
    return trades_table(partition_by=["day(ingestion_timestamp)"], **overrides)


def data_files(ws: Workspace, target: str = "cold.trades") -> list[str]:
    return [task.file.file_path for task in ws.iceberg_table(target).scan().plan_files()]


def small_cycles(ws: Workspace, app: Any, days: int = 3, per_day: int = 4, rows: int = 500) -> None:
    """Many small cycles: ``per_day`` batches on each of ``days`` days, one cycle after each."""
    seq = 0
    for day in range(days):
        for part in range(per_day):
            ws.insert_trades(rows, start=f"2026-01-0{day + 1} {part * 5:02d}:00:00", first_seq=seq)
            seq += rows
            (result,) = app.run_cycle()
            assert result.outcome == "committed", result.reason


@pytest.mark.storage(fileio=True)
def test_maintain_compacts_closed_partitions_keeping_rows_and_cursor(ws: Workspace) -> None:
    """After many small cycles, `maintain` leaves fewer files, identical rows, and a next cycle that adds nothing."""
    ws.tables = [daily_table()]
    ws.create_trades()
    app = ws.app()
    small_cycles(ws, app)
    before_files = data_files(ws)
    before_rows = full_rows(ws)
    before_arrow = ws.iceberg_arrow("cold.trades").sort_by("sequence_number")
    marker = app.state.mirror("trades")
    app.close()

    dry = ws.cli("maintain", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "trades: compact: would do" in dry.stdout and "8 small files" in dry.stdout
    assert data_files(ws) == before_files, "a dry run changes nothing"

    done = ws.cli("maintain")
    assert done.returncode == 0, done.stderr
    after_files = data_files(ws)
    # days 1 and 2 are closed (the cursor is on day 3): 4 files each become 1; day 3 is untouched
    assert len(after_files) == len(before_files) - 6
    day3 = [f for f in before_files if "2026-01-03" in f]
    assert sorted(f for f in after_files if "2026-01-03" in f) == sorted(day3)
    assert full_rows(ws) == before_rows, "icebergLocal reads the same rows"
    assert ws.iceberg_arrow("cold.trades").sort_by("sequence_number").equals(before_arrow), "PyIceberg reads the same rows"
    summary = ws.iceberg_table("cold.trades").current_snapshot().summary.additional_properties
    assert json.loads(summary["offloader.cursor"]) == marker.cursor and summary["offloader.operation"] == "compact"

    app = ws.app()
    (again,) = app.run_cycle()
    assert again.outcome == "nothing_new" and again.rows == 0
    assert app.state.mirror("trades").cursor == marker.cursor
    ws.insert_trades(300, start="2026-01-03 23:00:00", first_seq=10_000)
    (more,) = app.run_cycle()
    assert more.rows == 300
    assert_exact(ws)
    audit = app.state.audits("trades", "compact")
    assert [a.outcome for a in audit] == ["ok"] and [a.dry_run for a in audit] == [0], "a dry run records nothing"
    assert audit[0].files_before == len(before_files) and audit[0].files_after == len(after_files)
    app.close()

    second = ws.cli("maintain", "--table", "trades")
    assert second.returncode == 0 and "compact: nothing to do" in second.stdout, second.stdout + second.stderr


def test_compaction_without_a_time_partition_waits_for_rows_to_settle(ws: Workspace) -> None:
    """Without a time partition on the cursor, only files wholly older than cursor - settle are packed."""
    ws.tables = [trades_table(partition_by=[])]
    ws.maintenance = {"settle": "1d"}
    ws.create_trades()
    app = ws.app()
    small_cycles(ws, app, days=3, per_day=2)
    before = data_files(ws)
    (result,) = [r for r in app.maintain(actions=("compact",))]
    assert result.outcome == "ok", result.detail
    # the cursor is on day 3 (10:00 at the latest batch's end); files ending before day 2 10:00 qualify
    assert result.files_removed >= 2 and result.files_added == 1
    assert len(data_files(ws)) == len(before) - result.files_removed + 1
    assert_exact(ws)
    app.close()


@pytest.mark.storage(fileio=True)
def test_expiry_keeps_what_the_offload_needs(ws: Workspace) -> None:
    """Expiring every old snapshot keeps the marker: the next cycle resumes exactly at the cursor."""
    from offloader.maintenance import Maintenance

    ws.tables = [daily_table()]
    ws.create_trades()
    app = ws.app()
    small_cycles(ws, app, days=2, per_day=3)
    cursor = app.state.mirror("trades").cursor
    snapshots = len(ws.iceberg_table("cold.trades").snapshots())
    later = Maintenance(app.job(app.config.table("trades"), clock=lambda: time.time() + 30 * 86400))
    (expired,) = later.run(("expire_snapshots",))
    assert expired.outcome == "ok" and expired.snapshots_expired == snapshots - 1
    table = ws.iceberg_table("cold.trades")
    assert len(table.snapshots()) == 1
    props = table.current_snapshot().summary.additional_properties
    assert json.loads(props["offloader.cursor"]) == cursor
    assert_exact(ws)  # expiry never touches the rows
    (again,) = app.run_cycle()
    assert again.outcome == "nothing_new"
    ws.insert_trades(200, start="2026-01-02 23:00:00", first_seq=50_000)
    (more,) = app.run_cycle()
    assert more.outcome == "committed" and more.rows == 200
    assert_exact(ws)

    # files only the expired snapshots referenced are orphans now; old enough, they go
    (orphans,) = Maintenance(app.job(app.config.table("trades"), clock=lambda: time.time() + 30 * 86400)).run(("remove_orphans",))
    assert orphans.outcome in {"ok", "nothing_to_do"}, orphans.detail
    assert_exact(ws)
    app.close()


def test_protected_snapshots_reach_back_to_the_marker(ws: Workspace) -> None:
    """A foreign snapshot on top (no marker) keeps the lineage back to the newest marker protected."""
    ws.tables = [daily_table()]
    ws.create_trades()
    ws.insert_trades(100, start="2026-01-01 00:00:00")
    app = ws.app()
    app.run_cycle()
    marker_snapshot = ws.iceberg_table("cold.trades").current_snapshot().snapshot_id
    raw = app.sink.load(app.config.table("trades")).table
    raw.transaction().update_snapshot(snapshot_properties={"writer": "someone-else"}).fast_append().commit()
    sink_table = app.sink.load(app.config.table("trades"), writable=False)
    raw = sink_table.table
    protected = sink_table.protected_snapshots()
    assert marker_snapshot in protected and raw.current_snapshot().snapshot_id in protected
    assert sink_table.marker() is not None and sink_table.marker().snapshot_id == marker_snapshot
    app.close()


@pytest.mark.storage(fileio=True)
def test_orphans_older_than_the_safety_age_are_removed_younger_kept(ws: Workspace) -> None:
    """An unreferenced file older than orphan_age is deleted; a younger one (a write in flight) stays."""
    from offloader.maintenance import Maintenance

    ws.tables = [daily_table()]
    ws.create_trades()
    ws.insert_trades(1000, start="2026-01-01 00:00:00")
    app = ws.app()
    app.run_cycle()
    location = ws.iceberg_table("cold.trades").metadata.location
    old = f"{location}/data/00000-crashed-window.parquet"
    young = f"{location}/data/00001-window-in-flight.parquet"
    ws.storage.put_file(old, b"PAR1 not referenced by any snapshot")
    time.sleep(1.5)  # object stores keep whole seconds
    ws.storage.put_file(young, b"PAR1 a window still being written")
    old_mtime, young_mtime = ws.storage.file_mtime(old), ws.storage.file_mtime(young)
    assert old_mtime is not None and young_mtime is not None and young_mtime > old_mtime
    # seen from the moment the old file is just past orphan_age (1 d) and the young one is not
    clock = lambda: (old_mtime + young_mtime) / 2 + 86400  # noqa: E731
    table = app.config.table("trades")

    (dry,) = Maintenance(app.job(table, clock=clock)).run(("remove_orphans",), dry_run=True)
    assert dry.outcome == "ok" and ws.storage.file_mtime(old) is not None, dry.detail
    assert "1 unreferenced files older than 1d" in dry.detail and "00000-crashed-window.parquet" in dry.detail

    (done,) = Maintenance(app.job(table, clock=clock)).run(("remove_orphans",))
    assert done.outcome == "ok", done.detail
    assert ws.storage.file_mtime(old) is None, "the old orphan is removed"
    assert ws.storage.file_mtime(young) is not None, "a file younger than orphan_age is never removed"
    assert_exact(ws)
    (record,) = app.state.audits("trades", "remove_orphans", limit=1)
    assert record.outcome == "ok" and record.files_before - record.files_after == 1
    app.close()


def _delete_one_row_by_hand(ws: Workspace, sequence_number: int) -> None:
    from pyiceberg.expressions import EqualTo

    table = ws.iceberg_table("cold.trades")
    table.delete(EqualTo("sequence_number", sequence_number))


@pytest.mark.storage
def test_check_finds_and_repair_fixes_a_deleted_row_and_a_late_row(ws: Workspace) -> None:
    """A row deleted from Iceberg by hand and a late row behind the cursor are reported by check, fixed by repair."""
    ws.tables = [daily_table()]
    ws.create_trades()
    ws.insert_trades(3000, start="2026-01-01 00:00:00", step_us=5_000_000)  # 4h10m
    app = ws.app()
    app.run_cycle()
    app.close()
    assert ws.cli("check").returncode == 0

    _delete_one_row_by_hand(ws, 100)  # 00:08:20, first bucket
    ws.insert_trades(1, start="2026-01-01 02:30:00.5", first_seq=900_000)  # behind the cursor, after its window
    found = ws.cli("check", "--table", "trades")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "trades: DIFFERS: 2 of 5 buckets differ" in found.stdout
    assert "2026-01-01 00:00:00.000000  clickhouse=720  iceberg=719  (-1)" in found.stdout
    assert "2026-01-01 02:00:00.000000  clickhouse=721  iceberg=720  (-1)" in found.stdout

    repaired = ws.cli("check", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "trades: repaired: 2 of 5 buckets differ" in repaired.stdout
    assert_exact(ws)
    snapshots = len(ws.iceberg_table("cold.trades").snapshots())

    twice = ws.cli("check", "--repair")
    assert twice.returncode == 0 and "trades: consistent: 0 of 5 buckets differ" in twice.stdout
    assert len(ws.iceberg_table("cold.trades").snapshots()) == snapshots, "a second repair changes nothing"

    app = ws.app()
    (again,) = app.run_cycle()
    assert again.outcome == "nothing_new", "the repair left the cursor where it was"
    actions = [a.action for a in app.state.audits("trades")]
    assert actions.count("check") == 4 and actions.count("repair") == 1
    app.close()


def test_check_gauges_and_a_checksum_difference_with_equal_counts(ws: Workspace) -> None:
    """Equal counts with different keys differ by checksum; the gauges say how much."""
    from offloader.metrics import Metrics

    ws.tables = [daily_table()]
    ws.create_trades()
    ws.insert_trades(1000, start="2026-01-01 00:00:00", step_us=1_000_000)
    app = ws.app()
    app.run_cycle()
    _delete_one_row_by_hand(ws, 10)  # one row fewer on each side, not the same one: the counts agree
    ws.engine.command("ALTER TABLE k2.trades DELETE WHERE sequence_number = 20 SETTINGS mutations_sync = 2")
    metrics = Metrics()
    (result,) = app.check(observer=metrics)
    assert result.outcome == "differs" and len(result.differing) == 1
    bucket = result.differing[0]
    assert bucket.source_rows == bucket.iceberg_rows and bucket.source_sum != bucket.iceberg_sum
    assert metrics.registry.get_sample_value("offloader_consistency_mismatch_ratio", {"table": "trades"}) == 1.0
    (fixed,) = app.check(repair=True, observer=metrics)
    assert fixed.outcome == "repaired"
    assert metrics.registry.get_sample_value("offloader_consistency_mismatch_ratio", {"table": "trades"}) == 0.0
    assert_exact(ws)
    app.close()


@pytest.mark.storage
def test_reset_then_once_gives_back_the_same_table(ws: Workspace) -> None:
    """`reset --to T` deletes the rows after T in one commit; the next cycle brings them back exactly once."""
    ws.tables = [daily_table()]
    ws.create_trades()
    ws.insert_trades(4000, start="2026-01-01 00:00:00", step_us=60_000_000)
    app = ws.app()
    app.run_cycle()
    before = full_rows(ws)
    before_arrow = ws.iceberg_arrow("cold.trades").sort_by("sequence_number")
    app.close()

    refused = ws.cli("reset", "trades", "--to", "2026-01-02 00:00:00")  # stdin is not a terminal
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert full_rows(ws) == before

    done = ws.cli("reset", "trades", "--to", "2026-01-02 00:00:00", "--yes")
    assert done.returncode == 0, done.stderr
    kept = ws.iceberg_local("cold.trades", "max(ingestion_timestamp), count()")
    assert str(kept[0][0]).startswith("2026-01-02 00:00:00") and kept[0][1] == 24 * 60 + 1
    assert ws.iceberg_arrow("cold.trades").num_rows == 24 * 60 + 1
    assert "rows deleted from Iceberg" in done.stdout

    again = ws.run_once()
    assert again.returncode == 0, again.stderr
    assert full_rows(ws) == before
    assert ws.iceberg_arrow("cold.trades").sort_by("sequence_number").equals(before_arrow)
    assert_exact(ws)

    too_late = ws.cli("reset", "trades", "--to", "2027-01-01 00:00:00", "--yes")
    assert too_late.returncode == 2 and "must be before" in too_late.stderr


@pytest.mark.storage
def test_reset_of_a_replace_mode_table_keeps_the_bars_at_the_reset_time(ws: Workspace) -> None:
    """`reset --to T` on a replace-mode table, where bars sit at T, then `once`: every bar is back, none twice."""
    ws.tables = [bars_table(partition_by=["day(window_start)"], replace_lookback="10m")]
    create_bars(ws)
    ws.insert_trades(3000, start="2026-01-01 00:00:00", step_us=3_000_000)  # 2.5 hours of one-minute bars
    assert ws.cli("once").returncode == 0
    assert_bars_exact(ws)
    at_cut = ws.engine.rows("SELECT count() FROM k2.bars WHERE window_start = '2026-01-01 01:00:00'")[0][0]
    assert at_cut == 3, "bars sit at the reset time"

    done = ws.cli("reset", "bars", "--to", "2026-01-01 01:00:00", "--yes")
    assert done.returncode == 0, done.stderr
    kept = ws.iceberg_local("cold.bars", "toString(max(window_start)), countIf(window_start = '2026-01-01 01:00:00')")
    assert kept == [("2026-01-01 01:00:00.000000", 3)], "the bars at T stay"
    again = ws.cli("once")
    assert again.returncode == 0, again.stderr
    assert_bars_exact(ws)
    check = ws.cli("check")
    assert check.returncode == 0 and "bars: consistent" in check.stdout, check.stdout + check.stderr


def test_reset_in_the_middle_of_rows_sharing_a_timestamp(ws: Workspace) -> None:
    """Rows that share the reset instant stay; no tie-breaker value is lost or doubled."""
    ws.tables = [daily_table()]
    ws.create_trades()
    ws.insert_trades(500, start="2026-01-01 00:00:00", same_ts=True)
    ws.insert_trades(500, start="2026-01-01 00:00:01", first_seq=500, same_ts=True)
    app = ws.app()
    app.run_cycle()
    app.reset(app.config.table("trades"), "2026-01-01 00:00:00")
    assert ws.iceberg_arrow("cold.trades").num_rows == 500
    app.run_cycle()
    assert_exact(ws)
    app.close()


def test_maintenance_racing_offload_cycles_loses_and_duplicates_nothing(ws: Workspace) -> None:
    """`offloader maintain` in another process, again and again, while cycles commit new rows: it
    compacts at least twice while they run, a cycle that finds it holding the lock skips the table
    and a later cycle takes those rows, every maintain exits 0, and every row is in Iceberg once."""
    ws.tables = [daily_table()]
    ws.maintenance = {"settle": "0s", "lock_wait": "2m"}
    ws.create_trades()
    ws.release()
    config = ws.write_config()  # the maintain process never opens the source
    app = ws.app()
    stop = threading.Event()
    runs: list[int] = []
    skipped = 0
    taken = 0

    def maintainer() -> None:
        while not stop.is_set():
            result = run_cli("maintain", config=config, cwd=ws.root)
            runs.append(result.returncode)

    def compactions() -> int:
        return len([a for a in app.state.audits("trades", "compact", limit=500) if a.outcome == "ok"])

    thread = threading.Thread(target=maintainer)
    thread.start()
    deadline = time.monotonic() + RACE_SECONDS
    try:
        seq = 0
        # batches on day after day, four a day: at least five days, and on until maintenance has
        # compacted twice and a cycle has found it holding the table's lock
        day = 0
        while day < 5 or compactions() < 2 or not skipped:
            assert time.monotonic() < deadline, f"in {RACE_SECONDS}s: {compactions()} compactions, {skipped} cycles skipped"
            date = datetime.date(2026, 1, 1) + datetime.timedelta(days=day)
            day += 1
            for hour in range(0, 24, 6):
                ws.insert_trades(400, start=f"{date} {hour:02d}:00:00", first_seq=seq, step_us=1_000_000)
                seq += 400
                results = app.run_cycle()
                # a cycle that finds maintenance holding the lock skips the table; a later one takes its rows
                assert all(r.ok or r.outcome == "skipped" for r in results), [r.reason for r in results]
                skipped += sum(r.outcome == "skipped" for r in results)
                taken += sum(r.rows for r in results)
    finally:
        stop.set()
        thread.join()
    (last,) = app.run_cycle()
    assert last.ok, last.reason
    assert taken + last.rows == seq, "each row was taken by exactly one cycle"
    assert runs and all(code == 0 for code in runs), runs
    audits = app.state.audits("trades", limit=5000)
    assert [a for a in audits if a.outcome not in {"ok", "nothing_to_do"}] == [], "maintenance always got the lock in time"
    assert_exact(ws)
    app.close()


def test_ttl_headroom_is_exported_and_flagged_by_status(ws: Workspace) -> None:
    """The oldest row not offloaded yet has TTL minus its age left; status flags it under the margin."""
    from offloader.metrics import Metrics
    from offloader.service import Service

    ws.tables = [daily_table()]
    ws.create_trades()
    ws.engine.command("ALTER TABLE k2.trades MODIFY TTL toDateTime(ingestion_timestamp) + INTERVAL 30 DAY")
    ago = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - 29.5 * 86400))
    ws.insert_trades(100, start=ago)
    app = ws.app()
    (status,) = app.status()
    assert status.ttl_risk and 0.3 * 86400 < status.ttl_headroom_seconds < 0.6 * 86400
    assert "TTL risk" in status.problem
    metrics = Metrics()
    service = Service(app, metrics)
    service.run_cycle(list(app.config.tables))
    assert metrics.registry.get_sample_value("offloader_ttl_headroom_seconds", {"table": "trades"}) == float("inf")
    (after,) = app.status()
    assert not after.ttl_risk and after.ttl_headroom_seconds == float("inf")
    app.close()
    shown = ws.cli("status")
    assert shown.returncode == 0 and "no limit" in shown.stdout


def test_check_skips_what_the_ttl_already_deleted_and_repair_keeps_it(ws: Workspace) -> None:
    """Rows ClickHouse's TTL deleted after they were offloaded are outside the compared range: kept in Iceberg."""
    ws.tables = [daily_table()]
    ws.create_trades()
    old = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - 40 * 86400))
    recent = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - 5 * 86400))
    ws.insert_trades(300, start=old, step_us=1_000_000)
    ws.insert_trades(300, start=recent, first_seq=300, step_us=36_000_000)  # three hours
    app = ws.app()
    app.run_cycle()
    ws.engine.command("ALTER TABLE k2.trades MODIFY TTL toDateTime(ingestion_timestamp) + INTERVAL 30 DAY")
    ws.engine.command("OPTIMIZE TABLE k2.trades FINAL")
    assert ws.engine.rows("SELECT count() FROM k2.trades")[0][0] == 300
    (result,) = app.check(repair=True)
    assert result.outcome == "ok" and result.buckets >= 1 and not result.differing
    assert ws.iceberg_arrow("cold.trades").num_rows == 600, "the cold tier keeps what the warm tier let go"
    app.close()


@pytest.mark.parametrize("bad", ["--since=yesterday", "--table=nope"])
def test_check_rejects_bad_arguments_with_a_message(ws: Workspace, bad: str) -> None:
    ws.tables = [daily_table()]
    ws.create_trades()
    result = ws.cli("check", bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("--since" in result.stderr) or ("unknown table" in result.stderr)


def test_the_service_daily_slot_maintains_checks_and_exports_metrics(ws: Workspace) -> None:
    """The maintenance job of the service compacts, checks (and repairs when configured) and sets the metrics."""
    from offloader.metrics import Metrics
    from offloader.service import Service

    ws.tables = [daily_table()]
    ws.maintenance = {"repair": True}
    ws.create_trades()
    app = ws.app()
    small_cycles(ws, app, days=2, per_day=3)
    _delete_one_row_by_hand(ws, 5)
    metrics = Metrics()
    service = Service(app, metrics)
    service._maintenance()
    sample = metrics.registry.get_sample_value
    assert sample("offloader_maintenance_actions_total", {"table": "trades", "action": "compact", "outcome": "ok"}) == 1
    assert sample("offloader_maintenance_files_removed_total", {"table": "trades", "action": "compact"}) == 3
    assert sample("offloader_maintenance_files_added_total", {"table": "trades"}) == 1
    assert sample("offloader_maintenance_actions_total", {"table": "trades", "action": "repair", "outcome": "ok"}) == 1
    assert sample("offloader_consistency_missing_rows", {"table": "trades"}) == 0
    assert sample("offloader_maintenance_last_success_timestamp_seconds", {"table": "trades"}) > 0
    assert_exact(ws)

    restarted = Metrics()
    Service(app, restarted)  # the gauges come back from the audit log
    assert restarted.registry.get_sample_value("offloader_consistency_mismatch_ratio", {"table": "trades"}) == 0.0
    app.close()

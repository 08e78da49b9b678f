"""`offloader rollback`, against real components (chDB source, PostgreSQL state and SQL catalog,
local Iceberg files): a bad commit undone in one Iceberg commit, the cursor and the mirror
following it, the next cycle taking the undone rows again exactly once, a kill between the
commit and the mirror, the refusals, and maintenance after a rollback."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from helpers import Workspace, assert_bars_exact, assert_exact, bars_table, create_bars, trades_table

PRICES = "sequence_number, toString(price)"  # a row's key and the value the bad load got wrong


def bad_commit(ws: Workspace) -> tuple[int, int]:
    """Two good windows, then a third whose rows were wrong in the source and were corrected
    after they were offloaded. The ids of the last good snapshot and of the bad one."""
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(600, start="2026-01-01 00:00:00", step_us=10_000_000)  # 100 minutes: two windows of max_window 1h
    app = ws.app()
    assert [r.outcome for r in app.run_cycle()] == ["committed"]
    good = ws.iceberg_table("cold.trades").current_snapshot().snapshot_id
    ws.insert_trades(300, start="2026-01-01 02:00:00", step_us=10_000_000, first_seq=600)
    assert [r.outcome for r in app.run_cycle()] == ["committed"]
    app.close()
    bad = ws.iceberg_table("cold.trades").current_snapshot().snapshot_id
    assert bad != good
    ws.engine.command(
        "ALTER TABLE k2.trades UPDATE price = price + 1 WHERE sequence_number >= 600 SETTINGS mutations_sync = 2"
    )  # the source is corrected: Iceberg holds the wrong prices
    assert sorted(ws.iceberg_local("cold.trades", PRICES)) != source_prices(ws)
    return good, bad


def source_prices(ws: Workspace) -> list[tuple[Any, ...]]:
    return sorted(ws.engine.rows(f"SELECT {PRICES} FROM k2.trades"))


def cursor_of(ws: Workspace, snapshot_id: int, target: str = "cold.trades") -> list[Any]:
    snapshot = ws.iceberg_table(target).snapshot_by_id(snapshot_id)
    return json.loads(snapshot.summary.additional_properties["offloader.cursor"])


def mirror(ws: Workspace, table: str = "trades") -> Any:
    app = ws.app()
    try:
        return app.state.mirror(table)
    finally:
        app.close()


def audits(ws: Workspace) -> list[Any]:
    app = ws.app()
    try:
        return app.state.audits("trades", "rollback")
    finally:
        app.close()


def test_rollback_undoes_a_bad_commit_and_the_next_cycle_takes_its_rows_again(ws: Workspace) -> None:
    """The listing shows the lineage; `--to` the last good snapshot makes it current in one commit, the
    cursor and the mirror follow it, and the next cycle offloads the corrected rows exactly once."""
    good, bad = bad_commit(ws)
    listed = ws.cli("rollback", "--table", "trades")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:5] == ["snapshot", "committed", "operation", "rows", "cursor"]
    assert lines[1].startswith(str(bad)) and lines[1].rstrip().endswith("current") and "900" in lines[1]
    assert any(line.startswith(str(good)) and "600" in line for line in lines[2:])
    assert json.dumps(cursor_of(ws, good)[0]).strip('"') in listed.stdout

    unconfirmed = ws.cli("rollback", "--table", "trades", "--to", str(good))  # stdin is not a terminal
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert ws.iceberg_table("cold.trades").current_snapshot().snapshot_id == bad

    done = ws.cli("rollback", "--table", "trades", "--to", str(good), "--yes")
    assert done.returncode == 0, done.stderr
    assert f"rolled back from snapshot {bad} to {good}" in done.stdout and "900 -> 600" in done.stdout
    table = ws.iceberg_table("cold.trades")
    assert table.current_snapshot().snapshot_id == good, "one commit: the good snapshot is current again"
    assert table.snapshot_by_id(bad) is not None, "the undone snapshot stays in the metadata, off the lineage"
    assert table.scan().to_arrow().num_rows == 600
    assert mirror(ws).cursor == cursor_of(ws, good) and mirror(ws).snapshot_id == good
    (record,) = audits(ws)
    assert record.outcome == "ok" and record.snapshot_id == good and str(bad) in (record.detail or "")

    again = ws.run_once()
    assert again.returncode == 0, again.stderr
    assert_exact(ws, rows=900)
    assert sorted(ws.iceberg_local("cold.trades", PRICES)) == source_prices(ws), "the corrected rows, once each"
    assert mirror(ws).snapshot_id == ws.iceberg_table("cold.trades").current_snapshot().snapshot_id


def test_a_kill_between_the_rollback_commit_and_the_mirror_leaves_the_next_run_exact(ws: Workspace) -> None:
    """SIGKILLed right after its commit, a rollback leaves the mirror at the target's cursor (never
    ahead of Iceberg): the next run does not stop, rebuilds the mirror and ends exact."""
    good, bad = bad_commit(ws)
    killed = ws.cli("rollback", "--table", "trades", "--to", str(good), "--yes", env={"OFFLOADER_KILL_AT": "after_rollback"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert ws.iceberg_table("cold.trades").current_snapshot().snapshot_id == good, "the commit landed"
    halfway = mirror(ws)
    assert halfway.cursor == cursor_of(ws, good) and halfway.snapshot_id is None, "moved back before the commit"

    again = ws.run_once()
    assert again.returncode == 0, again.stdout + again.stderr
    assert_exact(ws, rows=900)
    assert sorted(ws.iceberg_local("cold.trades", PRICES)) == source_prices(ws)
    current = ws.iceberg_table("cold.trades").current_snapshot()
    rebuilt = mirror(ws)
    assert rebuilt.snapshot_id == current.snapshot_id
    assert rebuilt.cursor == json.loads(current.summary.additional_properties["offloader.cursor"])


def test_rollback_refuses_what_it_cannot_undo_and_changes_nothing(ws: Workspace) -> None:
    """An unknown id, the current snapshot, a snapshot already rolled back from, a snapshot of another
    writer and a lock held by another runner are refused, each with a message naming it."""
    ws.maintenance = {"lock_wait": "1s"}
    good, bad = bad_commit(ws)

    def refused(to: int | str, *words: str) -> None:
        before = ws.iceberg_table("cold.trades").current_snapshot().snapshot_id
        result = ws.cli("rollback", "--table", "trades", "--to", str(to), "--yes")
        assert result.returncode == 2, result.stdout + result.stderr
        for word in words:
            assert word in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert ws.iceberg_table("cold.trades").current_snapshot().snapshot_id == before, "nothing changed"

    refused(12345, "--to 12345", "has no such snapshot")
    refused("latest", "expected a snapshot id")
    refused(bad, f"--to {bad}", "is the current snapshot")
    assert ws.cli("rollback", "--table", "trades", "--to", str(good), "--yes").returncode == 0
    refused(bad, f"--to {bad}", "not in the table's current lineage", "bring back what was undone")

    # a snapshot another writer made (it appended a copy of a row), below an offloader commit
    raw = ws.iceberg_table("cold.trades")
    raw.append(raw.scan(limit=1).to_arrow())
    foreign = ws.iceberg_table("cold.trades").current_snapshot().snapshot_id
    assert ws.run_once().returncode == 0
    refused(foreign, f"--to {foreign}", "carries no offloader cursor")

    app = ws.app()
    with app.state.lock("trades") as taken:  # another runner holds the table
        assert taken
        result = ws.cli("rollback", "--table", "trades", "--to", str(good), "--yes")
    app.close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rollback trades refused: another runner held the table's lock past maintenance.lock_wait" in result.stderr
    outcomes = [r.outcome for r in audits(ws)]
    assert outcomes.count("ok") == 1 and outcomes.count("failed") >= 4, outcomes


def test_maintenance_after_a_rollback_keeps_the_table_exact_and_the_undone_snapshot_gone(ws: Workspace) -> None:
    """Compaction, expiry and orphan removal after a rollback drop the undone snapshot and its files,
    never make it current again, and the next cycle still ends exact."""
    from offloader.maintenance import Maintenance

    good, bad = bad_commit(ws)
    assert ws.cli("rollback", "--table", "trades", "--to", str(good), "--yes").returncode == 0
    bad_files = {t.file.file_path for t in ws.iceberg_table("cold.trades").scan(snapshot_id=bad).plan_files()}
    good_files = {t.file.file_path for t in ws.iceberg_table("cold.trades").scan().plan_files()}
    undone_files = bad_files - good_files
    assert undone_files

    assert ws.cli("maintain", "--table", "trades").returncode == 0  # `offloader maintain`, default ages: keeps all
    assert ws.iceberg_table("cold.trades").current_snapshot().snapshot_id == good
    app = ws.app()
    later = Maintenance(app.job(app.config.table("trades"), clock=lambda: time.time() + 30 * 86400))
    results = later.run(("compact", "expire_snapshots", "remove_orphans"))
    app.close()
    assert all(r.ok for r in results), [(r.action, r.outcome, r.detail) for r in results]
    table = ws.iceberg_table("cold.trades")
    assert table.snapshot_by_id(bad) is None, "the undone snapshot is expired"
    assert table.scan().to_arrow().num_rows == 600
    assert json.loads(table.current_snapshot().summary.additional_properties["offloader.cursor"]) == cursor_of(ws, good)
    assert not {p for p in undone_files if ws.storage.file_mtime(p) is not None}, "its files are orphans, removed"

    again = ws.run_once()
    assert again.returncode == 0, again.stderr
    assert_exact(ws, rows=900)
    assert sorted(ws.iceberg_local("cold.trades", PRICES)) == source_prices(ws)


def test_rollback_of_a_replace_mode_table_rewrites_the_bars_from_its_cursor(ws: Workspace) -> None:
    """A replace-mode table rolled back to an earlier window: the next run rewrites every bar from that
    window's cursor, and the bars equal the source's again, none twice."""
    ws.tables = [bars_table(partition_by=["day(window_start)"], replace_lookback="10m")]
    create_bars(ws)
    ws.insert_trades(3000, start="2026-01-01 00:00:00", step_us=3_000_000)  # 2.5 hours of one-minute bars
    assert ws.cli("once").returncode == 0
    snapshots = ws.iceberg_table("cold.bars").snapshots()[:-1]  # oldest first; the current one left out
    target = next(s.snapshot_id for s in reversed(snapshots) if cursor_of(ws, s.snapshot_id, "cold.bars")[0] < "2026-01-01 01:30")
    ws.insert_trades(600, start="2026-01-01 01:30:00", step_us=1_000_000, first_seq=3000)  # bars after the target's cursor change
    done = ws.cli("rollback", "--table", "bars", "--to", str(target), "--yes")
    assert done.returncode == 0, done.stderr
    assert ws.cli("once").returncode == 0
    assert_bars_exact(ws)
    check = ws.cli("check", "--table", "bars")
    assert check.returncode == 0 and "bars: consistent" in check.stdout, check.stdout + check.stderr


def test_the_federated_view_follows_the_rollback(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """With [federate] on, the rollback replaces the view at the snapshot it made current: the view
    reads Iceberg up to the rolled-back cursor and the source's corrected rows above it, each once."""
    from offloader.rollback import Rollback

    monkeypatch.chdir(ws.root)  # chDB's icebergLocal reads under the current directory only
    ws.federate = {"enabled": True}
    good, bad = bad_commit(ws)
    app = ws.app()
    done = Rollback(app.job(app.config.table("trades"))).run(good)
    app.close()
    assert done.to_snapshot == good and done.undone == [bad]
    ((ddl,),) = ws.engine.rows("SELECT create_table_query FROM system.tables WHERE database = 'k2' AND name = 'trades_all'")
    location = str(ws.iceberg_table("cold.trades").metadata_location)
    assert "metadata/" + location.rsplit("/metadata/", 1)[1] in ddl, "the view is pinned to the rolled-back table"
    view = sorted(ws.engine.rows(f"SELECT {PRICES} FROM k2.trades_all"))
    assert view == source_prices(ws), "Iceberg's rows up to the cursor, the corrected source rows above it"

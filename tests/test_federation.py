"""The federated view ``<source>_all`` (offloader/federation.py), over HTTP as in production.

The source is a ClickHouse HTTP endpoint served from chDB (tests/chhttp.py); the views are
created on it by offloader and read through it by the test. Every comparison of the view
with the source runs inside ONE query, at a moment when no row is arriving (the test itself
inserts, between its reads), so "the source at that moment" is exact while the offloader
commits and replaces the view concurrently.
"""

from __future__ import annotations

import random
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from endpoint import Endpoint, seed
from helpers import BARS_KEY, Workspace, assert_exact, bars_table, create_bars, events, trades_table
from prometheus_client import CollectorRegistry

from offloader.cursor import format_time
from offloader.metrics import Metrics

KEY = "toUnixTimestamp64Micro(ingestion_timestamp), sequence_number"
ROW = (
    "toString(exchange_timestamp), toString(ingestion_timestamp), sequence_number, symbol, toString(side), "
    "toString(price), toString(quantity)"
)
# one query: rows of the view, rows of the source, keys whose count differs between the two
COMPARE = f"""
SELECT
  (SELECT count() FROM k2.trades_all),
  (SELECT count() FROM k2.trades),
  (SELECT count() FROM (
      SELECT k, sum(s) AS d FROM (
          SELECT ({KEY}) AS k, 1 AS s FROM k2.trades_all
          UNION ALL SELECT ({KEY}) AS k, -1 AS s FROM k2.trades)
      GROUP BY k HAVING d != 0))
"""


def federated(ws: Workspace, rows: int, **source: Any) -> None:
    """k2.trades with ``rows`` rows, offloaded with [federate] on, windows of ``max_window_rows``."""
    seed(ws, rows)
    ws.federate = {"enabled": True}
    ws.source = {"safety_lag": "0s", "max_window": "1h", **source}


def insert(endpoint: Endpoint, n: int, first_seq: int) -> None:
    """``n`` trades with sequence numbers from ``first_seq``, one millisecond apart after the seeded ones."""
    endpoint.client().command(
        f"INSERT INTO k2.trades SELECT toDateTime64('2026-01-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(s), "
        f"toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalMillisecond(s), s, "
        f"['BTC-USDT', 'ETH-USDT'][s % 2 + 1], if(s % 2 = 0, 'buy', 'sell'), toDecimal64(30000 + s / 7, 8), "
        f"toDecimal64((s % 97 + 1) / 1000, 8) FROM (SELECT {int(first_seq)} + number AS s FROM numbers({int(n)}))"
    )


def assert_view_exact(endpoint: Endpoint) -> int:
    """The view holds exactly the source's rows, counted by key in one query; the number of rows."""
    ((view, source, differing),) = endpoint.rows(COMPARE)
    assert differing == 0 and view == source, f"view {view} rows, source {source}, {differing} keys differ"
    return int(source)


def pinned(endpoint: Endpoint) -> str | None:
    """The metadata file the view reads Iceberg at (None: the hot rows alone)."""
    ((ddl,),) = endpoint.rows("SELECT create_table_query FROM system.tables WHERE database = 'k2' AND name = 'trades_all'")
    if "iceberg_metadata_file_path" not in ddl:
        return None
    return str(ddl.split("iceberg_metadata_file_path = ")[1].split("'")[1])


def current_metadata_path(ws: Workspace) -> str:
    return str(ws.iceberg_table("cold.trades").metadata_location).removeprefix("file://")


def current_metadata(ws: Workspace) -> str:
    """The table's current metadata file, as the view names it."""
    return "metadata/" + current_metadata_path(ws).rsplit("/metadata/", 1)[1]


def test_view_counts_every_row_once_while_cycles_commit(ws: Workspace, endpoint: Endpoint) -> None:
    """While the service commits windows and replaces the view, every read of the view, between arrivals, equals the source by key, though the table keeps only 2 old metadata files; the view has the source's columns and types."""
    federated(ws, 2000, max_window_rows=300)
    ws.schedule = {"interval": "1s", "retry_attempts": 1}
    ws.server = {"enabled": False}
    endpoint.start()
    assert ws.run_once().returncode == 0
    table = ws.iceberg_table("cold.trades")
    table.transaction().set_properties({"write.metadata.previous-versions-max": "2"}).commit_transaction()
    service = ws.start("run")
    rng = random.Random(20261207)  # noqa: S311 - a reproducible interleaving, not a secret
    pins, reads, seq = set(), 0, 2000
    try:
        deadline = time.monotonic() + 60
        while len(pins) < 6 or reads < 20:
            assert time.monotonic() < deadline, f"the view moved to {len(pins)} snapshots in {reads} reads"
            assert service.poll() is None, "the service exited"
            if rng.random() < 0.2:
                count = rng.randint(1, 1500)  # up to 5 windows: a run commits several times
                insert(endpoint, count, seq)
                seq += count
                continue
            assert_view_exact(endpoint)
            reads += 1
            pins.add(pinned(endpoint))
            time.sleep(rng.random() * 0.1)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=90)
    assert None not in pins  # the Iceberg side was read, at every cut
    kept = list(Path(current_metadata_path(ws)).parent.glob("*.metadata.json"))
    assert 1 <= len(kept) <= 4 < len(pins)  # metadata files were pruned while the view was read at each cut
    columns = "SELECT name, type FROM system.columns WHERE database = 'k2' AND table = {} ORDER BY position"
    assert endpoint.rows(columns.format("'trades_all'")) == endpoint.rows(columns.format("'trades'"))


def test_view_keeps_rows_the_ttl_deleted(ws: Workspace, endpoint: Endpoint) -> None:
    """After a TTL-like DELETE of the hot rows already offloaded, the view still returns every one of them, every column unchanged, from Iceberg."""
    federated(ws, 1500, max_window_rows=600)
    endpoint.start()
    assert ws.run_once().returncode == 0
    insert(endpoint, 300, 1500)  # rows not offloaded yet: the hot side
    expected = sorted(endpoint.rows(f"SELECT {ROW} FROM k2.trades"))
    assert sorted(endpoint.rows(f"SELECT {ROW} FROM k2.trades_all")) == expected
    endpoint.client().command("DELETE FROM k2.trades WHERE sequence_number < 1500")
    assert endpoint.rows("SELECT count() FROM k2.trades") == [(300,)]
    assert sorted(endpoint.rows(f"SELECT {ROW} FROM k2.trades_all")) == expected


def test_kill_between_commit_and_view_replacement(ws: Workspace, endpoint: Endpoint) -> None:
    """Killed after a commit but before the view is replaced, the view is still exact at its old cut; the next run, with nothing new to commit, brings it to the new snapshot."""
    federated(ws, 1000, max_window_rows=400)
    endpoint.start()
    assert ws.run_once().returncode == 0
    before = pinned(endpoint)
    assert before == current_metadata(ws)
    insert(endpoint, 300, 1000)  # one window: the killed run's commit is the last one
    killed = ws.run_once(kill_at="after_state")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert pinned(endpoint) == before != current_metadata(ws)  # the commit landed; the view did not follow
    assert assert_view_exact(endpoint) == 1300
    rerun = ws.run_once()
    assert rerun.returncode == 0 and "nothing new" in rerun.stdout + rerun.stderr, rerun.stdout + rerun.stderr
    assert pinned(endpoint) == current_metadata(ws)
    assert assert_view_exact(endpoint) == 1300


def test_view_failure_keeps_the_commit_and_is_retried(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A view replacement that fails (its database is missing) is logged and counted, the window is committed all the same, and the next run, with nothing new, creates the view."""
    monkeypatch.chdir(ws.root)  # chDB's icebergLocal reads under the current directory only
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(1000)
    ws.federate = {"enabled": True, "database": "views"}
    app = ws.app()
    metrics = Metrics(CollectorRegistry())
    failures = {"table": "trades"}
    with structlog.testing.capture_logs() as logs:
        (first,) = app.run_cycle(observer=metrics)
    assert first.outcome == "committed", first.reason
    assert_exact(ws, rows=1000)
    assert events(logs, "federate_view_failed")[0]["view"] == "`views`.`trades_all`"
    assert metrics.registry.get_sample_value("offloader_federate_view_failures_total", failures) >= 1
    assert metrics.registry.get_sample_value("offloader_federate_view_stale", failures) == 1
    ws.engine.command("CREATE DATABASE views")
    (second,) = app.run_cycle(observer=metrics)
    assert second.outcome == "nothing_new"
    assert metrics.registry.get_sample_value("offloader_federate_view_stale", failures) == 0
    compare = COMPARE.replace("k2.trades_all", "views.trades_all")
    ((view, source, differing),) = ws.engine.rows(compare)
    assert (view, source, differing) == (1000, 1000, 0)
    app.close()


def test_replace_mode_view_cuts_at_the_frozen_cursor(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replace-mode table's view takes bars up to the frozen cursor from Iceberg and the later ones, still changing, from the source: a bar that changed after the run shows its new value, once."""
    monkeypatch.chdir(ws.root)
    create_bars(ws)
    ws.tables = [bars_table()]
    ws.federate = {"enabled": True}
    start = format_time(datetime.now(UTC) - timedelta(minutes=5, seconds=5))
    ws.insert_trades(600, start=start, step_us=500_000)  # one trade every half second up to a few seconds ago
    assert ws.run_once().returncode == 0
    ddl = ws.engine.rows("SELECT create_table_query FROM system.tables WHERE database = 'k2' AND name = 'bars_all'")[0][0]
    assert "icebergLocal" in ddl
    ((newest,),) = ws.iceberg_local("cold.bars", "toString(max(window_start))")  # after the frozen cursor
    ws.insert_trades(5, start=newest, first_seq=10_000)  # the newest bar changes in the source
    query = f"SELECT {BARS_KEY} FROM k2.{{}}"
    view, source = sorted(ws.engine.rows(query.format("bars_all"))), sorted(ws.engine.rows(query.format("bars")))
    assert view == source
    cold = ws.iceberg_local("cold.bars", BARS_KEY)
    assert set(cold) - set(source)  # Iceberg still holds the newest bar as it was: the view did not take it


@pytest.mark.parametrize("storage", ["s3-sql", "s3-rest"], indirect=True)
def test_view_reads_s3_through_a_named_collection(ws: Workspace, endpoint: Endpoint) -> None:
    """With the tables in S3 (SQL and REST catalogs) the view reads Iceberg with icebergS3 and a named collection: its DDL holds no secret, and it returns the rows a TTL-like delete removed from the source."""
    federated(ws, 1000, max_window_rows=600)
    ws.federate = {"enabled": True, "named_collection": "cold_s3"}
    endpoint.start()
    secret = ws.storage.seaweed.secret_key
    endpoint.client().command(f"CREATE NAMED COLLECTION cold_s3 AS access_key_id = 'offloader', secret_access_key = '{secret}'")
    assert ws.run_once().returncode == 0
    ((ddl,),) = endpoint.rows("SELECT create_table_query FROM system.tables WHERE database = 'k2' AND name = 'trades_all'")
    assert "icebergS3(cold_s3" in ddl and secret not in ddl
    expected = sorted(endpoint.rows(f"SELECT {ROW} FROM k2.trades"))
    endpoint.client().command("DELETE FROM k2.trades WHERE sequence_number < 600")
    assert sorted(endpoint.rows(f"SELECT {ROW} FROM k2.trades_all")) == expected


def test_federate_command_prints_and_applies(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """`offloader federate` prints each view's DDL and creates nothing; `--apply --database` creates an exact view there; a malformed --database is a usage error naming the flag."""
    monkeypatch.chdir(ws.root)
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(500)
    ws.engine.command("CREATE DATABASE views")
    assert ws.run_once().returncode == 0  # [federate] is off: no view is kept
    printed = ws.cli("federate")
    assert printed.returncode == 0, printed.stderr
    assert "CREATE OR REPLACE VIEW `k2`.`trades_all` AS" in printed.stdout and "icebergLocal(" in printed.stdout
    views = "SELECT database, name FROM system.tables WHERE name = 'trades_all'"
    assert ws.engine.rows(views) == []
    applied = ws.cli("federate", "--apply", "--database", "views")
    assert applied.returncode == 0 and "view `views`.`trades_all` replaced" in applied.stdout, applied.stderr
    assert ws.engine.rows(views) == [("views", "trades_all")]
    assert ws.engine.rows(COMPARE.replace("k2.trades_all", "views.trades_all")) == [(500, 500, 0)]
    bad = ws.cli("federate", "--database", "no such")
    assert bad.returncode == 2 and "--database 'no such'" in bad.stderr, bad.stderr


def test_compaction_moves_the_view_to_its_snapshot(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Maintenance replaces the view after compacting, so the view no longer reads the files compaction replaced; it stays exact."""
    monkeypatch.chdir(ws.root)
    ws.tables = [trades_table(partition_by=["day(ingestion_timestamp)"])]
    ws.federate = {"enabled": True}
    ws.create_trades()
    app = ws.app()
    for day, part in ((1, 0), (1, 1), (1, 2), (2, 0)):  # three small files on a closed day
        ws.insert_trades(200, start=f"2026-01-0{day} {part * 5:02d}:00:00", first_seq=day * 1000 + part * 200)
        assert app.run_cycle()[0].outcome == "committed"
    before = pinned_in(ws)
    (compacted,) = app.maintain(actions=("compact",))
    assert compacted.outcome == "ok" and compacted.files_removed == 3, compacted.detail
    app.close()
    current = current_metadata(ws)
    assert pinned_in(ws) == current != before
    assert ws.iceberg_table("cold.trades").current_snapshot().summary.additional_properties["offloader.operation"] == "compact"
    assert ws.engine.rows(COMPARE) == [(800, 800, 0)]


def pinned_in(ws: Workspace) -> str:
    """The metadata file the view of k2.trades reads, through the test's own chDB handle."""
    ((ddl,),) = ws.engine.rows("SELECT create_table_query FROM system.tables WHERE database = 'k2' AND name = 'trades_all'")
    return str(ddl.split("iceberg_metadata_file_path = ")[1].split("'")[1])

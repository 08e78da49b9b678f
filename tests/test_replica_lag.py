"""The source replica's delay (offloader/replica_lag.py) against the real ClickHouse engine (chDB).

chDB cannot run a replicated table, so the lagging replica of the whole-run tests is the real
engine with ``system.replicas`` swapped for a stand-in that reports a chosen delay
(tests/lagging_replica.py): the folding and the refusal are real, the replica is not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Workspace, clean_env, trades_table
from prometheus_client import CollectorRegistry

from offloader.errors import ConfigError, SourceError
from offloader.metrics import Metrics
from offloader.replica_lag import replica_delay

LAGGING = Path(__file__).resolve().with_name("lagging_replica.py")
# rows 180, 120, 30 and 10 minutes old (ingestion_timestamp is the cursor's time)
AGED_ROWS = (
    "INSERT INTO k2.trades SELECT now64(3, 'UTC') - toIntervalMinute(m), now64(6, 'UTC') - toIntervalMinute(m), "
    "number, 'BTC-USDT', 'buy', 1, 1 FROM (SELECT number, [180, 120, 30, 10][number + 1] AS m FROM numbers(4))"
)


def run_lagging(ws: Workspace, delay: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`offloader --config <workspace> ARGS` in a subprocess whose source replica lags ``delay`` seconds."""
    ws.release()
    argv = [sys.executable, str(LAGGING), str(delay), "--config", str(ws.write_config()), *args]
    return subprocess.run(
        argv, capture_output=True, text=True, env=clean_env(), cwd=ws.root, timeout=300, stdin=subprocess.DEVNULL
    )


def offloaded_minutes(ws: Workspace) -> list[int]:
    """The age in minutes (rounded) of every row in Iceberg, read back by chDB from the Parquet files."""
    rows = ws.iceberg_local("cold.trades", "ingestion_timestamp")
    (now,) = ws.engine.rows("SELECT now64(6, 'UTC')")[0]
    return sorted(round((now - r[0]).total_seconds() / 60) for r in rows)


def test_a_mergetree_source_has_no_replica_row_and_no_delay(ws: Workspace) -> None:
    """The replica query runs on the real engine; a MergeTree table has no system.replicas row: delay 0."""
    ws.create_trades()
    delay = replica_delay(ws.engine, "k2", "trades")
    assert (delay.seconds, delay.replicas, delay.queue_size) == (0.0, 0, 0)
    assert delay.read == "system.replicas of k2.trades"
    delay.check("trades", 0.0, "source.max_replica_delay")  # 0 is never above any limit


def test_chdb_cannot_run_a_replicated_table(ws: Workspace) -> None:
    """chDB refuses ReplicatedMergeTree without Keeper: why the lag below is a stand-in, not a real replica."""
    ws.engine.command("CREATE DATABASE IF NOT EXISTS k2")
    with pytest.raises(SourceError, match="ZooKeeper|Keeper"):
        ws.engine.command("CREATE TABLE k2.r (t DateTime) ENGINE = ReplicatedMergeTree('/t/r', 'r1') ORDER BY t")


def test_a_run_exports_the_replica_delay(ws: Workspace) -> None:
    """A run sets offloader_source_replica_delay_seconds of its table (0 here: not replicated)."""
    ws.tables = [trades_table()]
    ws.create_trades()
    metrics = Metrics(CollectorRegistry())
    app = ws.app()
    result = app.run_table(ws.config().table("trades"), observer=metrics)
    app.close()
    assert result.outcome == "nothing_new"
    assert metrics.registry.get_sample_value("offloader_source_replica_delay_seconds", {"table": "trades"}) == 0.0


def test_the_cursor_stays_behind_now_minus_lag_minus_replica_delay(ws: Workspace) -> None:
    """`offloader once` on a replica 1h behind takes only rows older than safety lag + 1h; without the delay, all."""
    ws.tables = [trades_table()]
    ws.source.update(safety_lag="5m", max_replica_delay="2h")
    ws.create_trades()
    ws.engine.command(AGED_ROWS)
    lagging = run_lagging(ws, 3600, "once")
    assert lagging.returncode == 0, lagging.stderr[-3000:]
    logged = [json.loads(line) for line in lagging.stderr.splitlines() if '"replica_delay"' in line]
    assert [(e["table"], e["seconds"], e["queue_size"]) for e in logged] == [("trades", 3600.0, 3)]
    assert offloaded_minutes(ws) == [120, 180], "only rows older than now - 5m - 1h were committed"
    caught_up = run_lagging(ws, 0, "once")
    assert caught_up.returncode == 0, caught_up.stderr[-3000:]
    assert offloaded_minutes(ws) == [10, 30, 120, 180], "the replica caught up: the rest followed, each once"


def test_a_replica_beyond_max_replica_delay_stops_the_table(ws: Workspace) -> None:
    """Above source.max_replica_delay the run fails non-zero, names table, delay and setting, and commits nothing;
    the table's own max_replica_delay overrides it."""
    ws.tables = [trades_table()]
    ws.source.update(max_replica_delay="1h")
    ws.create_trades()
    ws.engine.command(AGED_ROWS)
    refused = run_lagging(ws, 9000, "once")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    message = "trades: the source replica lags 2h30m (system.replicas of k2.trades, absolute_delay), above source.max_replica_delay = 1h"
    assert message in refused.stdout + refused.stderr
    assert "replica_lag_error" in refused.stdout + refused.stderr
    assert ws.iceberg_table("cold.trades").current_snapshot() is None, "nothing was committed"
    ws.tables = [trades_table(max_replica_delay="3h")]
    allowed = run_lagging(ws, 9000, "once")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert offloaded_minutes(ws) == [180], "the table's own limit let it move, up to now - 2h30m"


def test_max_replica_delay_is_validated_at_start_up(ws: Workspace) -> None:
    """A bad max_replica_delay fails the config load, naming the key and the value."""
    ws.tables = [trades_table(max_replica_delay="-1")]
    ws.source["max_replica_delay"] = "soon"
    with pytest.raises(ConfigError) as caught:
        ws.config()
    text = str(caught.value)
    assert "source.max_replica_delay" in text and "soon" in text
    assert "tables.trades.max_replica_delay" in text

"""Corrections that reach the cold tier (``corrections = "mutations"``, docs/corrections.md),
against the embedded chDB source, PostgreSQL and Iceberg files read back by DuckDB and by
ClickHouse's icebergLocal: random inserts, lightweight deletes, ``ALTER … DELETE`` and
``ALTER … UPDATE``, with SIGKILLs inside and between cycles; TTL deletions keep history."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest
from endpoint import Endpoint, seed
from helpers import Workspace, assert_exact, assert_same_rows, full_rows, trades_table

from offloader.config import ConfigError
from offloader.config_loader import load_config
from offloader.cursor import from_micros, micros
from offloader.ports import CORRECTIONS_KEY

TARGET = "cold.trades"
SOURCE_FULL = (
    "SELECT toString(toDateTime64(exchange_timestamp, 6, 'UTC')), toString(ingestion_timestamp), sequence_number, symbol, "
    "toString(side), "
    "toString(price), toString(quantity) FROM k2.trades"
)
CONTENT = "toUnixTimestamp64Micro(ingestion_timestamp), sequence_number, symbol, price, quantity"
DUCK_CONTENT = "epoch_us(ingestion_timestamp), sequence_number, symbol, price, quantity"
SYNC = " SETTINGS mutations_sync = 2"
START = micros("2026-01-01 00:00:00")
POINTS = ("after_read", "after_write", "after_commit", "after_state")


def assert_cold_is_source(ws: Workspace) -> None:
    """Iceberg holds the source's rows, by key and by content, read by icebergLocal and by DuckDB."""
    assert_same_rows(sorted(ws.engine.rows(SOURCE_FULL)), full_rows(ws, TARGET), "ClickHouse icebergLocal")
    src = sorted(tuple(r) for r in ws.engine.rows(f"SELECT {CONTENT} FROM k2.trades"))
    assert_same_rows(src, sorted(ws.duckdb_rows(TARGET, DUCK_CONTENT)), "DuckDB")


def corrections_applied(ws: Workspace) -> Counter[str]:
    """How many correction snapshots each position (the last correction applied) has in the table's history."""
    table = ws.iceberg_table(TARGET)
    props = [s.summary.additional_properties for s in table.snapshots() if s.summary]
    return Counter(p.get(CORRECTIONS_KEY, "(none)") for p in props if p.get("offloader.operation") == "correction")


def settle(ws: Workspace) -> Any:
    """One cycle in this process, which must succeed; its result."""
    app = ws.app()
    try:
        (result,) = app.run_cycle()
    finally:
        app.close()
    assert result.outcome in ("committed", "nothing_new"), (result.outcome, result.reason)
    return result


def setup(ws: Workspace, **table: Any) -> None:
    ws.tables = [trades_table(corrections="mutations", **table)]
    ws.source["max_window"] = "10m"
    ws.create_trades()


def test_corrections_accepts_none_and_mutations_only(ws: Workspace) -> None:
    """A value other than "none" and "mutations" is refused at start-up, naming the key, the value and the choices."""
    ws.tables = [trades_table(corrections="sometimes")]
    with pytest.raises(ConfigError) as info:
        load_config(ws.write_config(), env={})
    message = str(info.value)
    assert "tables.trades.corrections" in message and "'sometimes'" in message and "'mutations'" in message
    ws.tables = [trades_table(corrections="mutations", cursor=["ingestion_timestamp"], mode="replace", replace_lookback="1h")]
    with pytest.raises(ConfigError, match=r"tables\.trades\.corrections = 'mutations'.*mode = \"replace\""):
        load_config(ws.write_config(), env={})
    ws.tables = [trades_table(corrections="mutations")]
    assert load_config(ws.write_config(), env={}).tables[0].corrections == "mutations"
    ws.tables = [trades_table()]
    assert load_config(ws.write_config(), env={}).tables[0].corrections == "none"


def random_correction(ws: Workspace, rng: random.Random, next_seq: int) -> tuple[str, int]:
    """One random change of the source: an insert after the cursor, a lightweight DELETE, an
    ALTER DELETE or an ALTER UPDATE (a point, a time range, or a condition on no time)."""
    kind = rng.choice(["insert", "lightweight_delete", "alter_delete", "alter_update", "alter_update", "unbounded"])
    if kind == "insert":
        n = rng.randint(50, 300)  # after every row so far: the cursor never passes them
        ws.insert_trades(n, start=from_micros(START + next_seq * 200_000), step_us=200_000, first_seq=next_seq)
        return f"insert {n}", next_seq + n
    seq = rng.randrange(0, next_seq)
    minute = rng.randrange(0, next_seq // 300)
    if kind == "lightweight_delete":
        ws.engine.command(f"DELETE FROM k2.trades WHERE sequence_number = {seq}")
    elif kind == "alter_delete":
        ws.engine.command(
            f"ALTER TABLE k2.trades DELETE WHERE ingestion_timestamp >= '2026-01-01 00:{minute:02d}:00' "
            f"AND ingestion_timestamp < '2026-01-01 00:{minute:02d}:03'{SYNC}"
        )
    elif kind == "alter_update":
        ws.engine.command(
            f"ALTER TABLE k2.trades UPDATE price = price + 1 WHERE ingestion_timestamp BETWEEN "
            f"'2026-01-01 00:{minute:02d}:00' AND '2026-01-01 00:{minute:02d}:10'{SYNC}"
        )
    else:  # no bound on the time: the whole retained range
        ws.engine.command(f"ALTER TABLE k2.trades UPDATE quantity = quantity * 2 WHERE sequence_number % 97 = {seq % 97}{SYNC}")
    return kind, next_seq


@pytest.mark.parametrize("seed", [1, 2])
def test_random_corrections_with_sigkills_leave_iceberg_equal_to_the_source(ws: Workspace, seed: int) -> None:
    """Random inserts, lightweight deletes, ALTER DELETEs and ALTER UPDATEs, with a SIGKILL at a
    random checkpoint of some cycles (inside a correction's commit or a window's): after each
    settled cycle Iceberg equals the source by key and by content, and no correction was
    committed twice."""
    rng = random.Random(seed)  # noqa: S311  (a reproducible test sequence, not a secret)
    setup(ws)
    ws.insert_trades(6000, start="2026-01-01 00:00:00", step_us=200_000)  # 20 minutes
    next_seq = 6000
    settle(ws)
    kills = 0
    for step in range(5):
        done = []
        for _ in range(rng.randint(1, 3)):
            kind, next_seq = random_correction(ws, rng, next_seq)
            done.append(kind)
        if rng.random() < 0.6:
            point = f"{rng.choice(POINTS)}:{rng.randint(1, 2)}"
            killed = ws.run_once(kill_at=point)
            kills += killed.returncode == -9
            assert killed.returncode in (0, -9), (step, point, killed.stderr[-2000:])
        settle(ws)
        assert_cold_is_source(ws)
        twice = {k: n for k, n in corrections_applied(ws).items() if n > 1}
        assert not twice, f"step {step} ({done}): corrections committed twice {twice}"
    assert kills, "no cycle was killed: the test did not test a crash"
    assert sum(corrections_applied(ws).values()) > 0


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_around_a_correction_commit_neither_skips_nor_repeats_it(ws: Workspace, point: str) -> None:
    """A run SIGKILLed at each checkpoint of a correction's replace (its read, its files, its
    commit, its mirror) is re-run: the correction lands exactly once and Iceberg equals the source."""
    setup(ws)
    ws.insert_trades(3000, start="2026-01-01 00:00:00", step_us=200_000)
    settle(ws)
    ws.engine.command(
        "ALTER TABLE k2.trades UPDATE price = 1 WHERE ingestion_timestamp BETWEEN '2026-01-01 00:01:00' AND '2026-01-01 00:02:00'"
        + SYNC
    )
    killed = ws.run_once(kill_at=f"{point}:1")  # the correction is the run's first write
    assert killed.returncode == -9, killed.stderr[-2000:]
    landed = sum(corrections_applied(ws).values())
    assert landed == (1 if point in ("after_commit", "after_state") else 0)
    settle(ws)  # the rerun
    assert_cold_is_source(ws)
    assert list(corrections_applied(ws).values()) == [1]
    assert settle(ws).outcome == "nothing_new" and list(corrections_applied(ws).values()) == [1]


def test_ttl_deletions_keep_history_and_bound_an_unbounded_correction(ws: Workspace) -> None:
    """Rows a TTL deletes from the source (MATERIALIZE TTL, a mutation too) stay in Iceberg, and a
    correction with no bound on the time replaces only what the source still retains."""
    ws.tables = [trades_table(corrections="mutations")]
    ws.source["max_window"] = "30d"
    ws.create_trades()
    now = ws.engine.rows("SELECT toString(toStartOfHour(now64(6, 'UTC')) - INTERVAL 10 DAY)")[0][0]
    ws.insert_trades(2400, start=now, step_us=6 * 60 * 1_000_000)  # one every 6 minutes over 10 days
    settle(ws)
    before = sorted(ws.engine.rows(SOURCE_FULL))
    ws.engine.command("ALTER TABLE k2.trades MODIFY TTL toDateTime(ingestion_timestamp) + INTERVAL 5 DAY" + SYNC)
    ws.engine.command("ALTER TABLE k2.trades MATERIALIZE TTL" + SYNC)
    ws.engine.command("OPTIMIZE TABLE k2.trades FINAL")
    kept = sorted(ws.engine.rows(SOURCE_FULL))
    assert 0 < len(kept) < len(before), "the TTL deleted some rows, not all"
    settle(ws)
    assert_same_rows(before, full_rows(ws, TARGET), "after the TTL deletion")
    # the rows the TTL deletes within the hour count as deleted already (GRACE): no correction reaches them
    ((floor,),) = ws.engine.rows(
        "SELECT toString(min(ingestion_timestamp)) FROM k2.trades"
        " WHERE toDateTime(ingestion_timestamp) + INTERVAL 5 DAY > now() + INTERVAL 1 HOUR"
    )
    ws.engine.command(f"ALTER TABLE k2.trades UPDATE quantity = 7 WHERE sequence_number % 10 = 3{SYNC}")
    settle(ws)
    below = [r for r in before if r[1] < floor]
    above = [r for r in ws.engine.rows(SOURCE_FULL) if r[1] >= floor]
    assert any(r[6] == "7" for r in above) and any(r[6] != "7" and r[2] % 10 == 3 for r in below)
    assert_same_rows(sorted(below + above), full_rows(ws, TARGET), "after a correction with no time bound")
    assert sum(corrections_applied(ws).values()) == 1, "MATERIALIZE TTL was not taken for a correction"


def test_a_correction_above_the_cursor_is_read_by_the_window(ws: Workspace) -> None:
    """A mutation of rows not offloaded yet needs no Iceberg commit of its own; the windows read the corrected rows."""
    setup(ws)
    ws.insert_trades(1000, start="2026-01-01 00:00:00", step_us=200_000)
    settle(ws)
    ws.insert_trades(1000, start="2026-01-01 01:00:00", step_us=200_000, first_seq=1000)
    ws.engine.command(
        f"ALTER TABLE k2.trades DELETE WHERE ingestion_timestamp >= '2026-01-01 01:00:00' AND sequence_number % 2 = 0{SYNC}"
    )
    result = settle(ws)
    assert result.rows == 500 and not corrections_applied(ws)
    assert_cold_is_source(ws)
    marker = json.loads(ws.iceberg_table(TARGET).current_snapshot().summary.additional_properties[CORRECTIONS_KEY])
    assert marker["mutation_id"], "the window's commit records the mutation as applied"


def test_a_lightweight_update_seen_as_a_patch_part_is_corrected(ws: Workspace) -> None:
    """A lightweight UPDATE leaves no row in system.mutations, only a patch part: while that part
    is there, the next cycle replaces the whole retained range and Iceberg equals the source."""
    setup(ws)
    ws.engine.command("ALTER TABLE k2.trades MODIFY SETTING enable_block_number_column = 1, enable_block_offset_column = 1")
    ws.insert_trades(2000, start="2026-01-01 00:00:00", step_us=200_000)
    settle(ws)
    ws.engine.command("UPDATE k2.trades SET price = 5 WHERE sequence_number IN (10, 1500)")
    assert not ws.engine.rows("SELECT 1 FROM system.mutations WHERE database = 'k2' AND table = 'trades'")
    settle(ws)
    assert_cold_is_source(ws)
    assert sum(corrections_applied(ws).values()) == 1
    ws.insert_trades(500, start="2026-01-01 00:10:00", step_us=200_000, first_seq=2000)
    ws.insert_trades(10, start="2026-01-02 00:00:00", first_seq=2500)  # the first day no longer receives rows
    settle(ws)  # a second file in the first day's partition, for compaction to merge
    ws.maintenance = {"settle": "0s"}
    maintained = ws.cli("maintain")  # compaction carries the marker, the correction applied with it
    assert maintained.returncode == 0 and "compact: ok" in maintained.stdout, maintained.stdout + maintained.stderr[-2000:]
    assert settle(ws).outcome == "nothing_new", "a patch part already corrected is not corrected again"
    assert sum(corrections_applied(ws).values()) == 1


def test_a_correction_ending_at_the_cursor_time_takes_its_ties_once(ws: Workspace) -> None:
    """A row that lands late at the cursor's own time (a tie after the cursor tuple) is written by a
    correction whose range ends there, and the cursor moves past it: the next window does not take it again."""
    setup(ws)
    ws.insert_trades(1000, start="2026-01-01 00:00:00", step_us=200_000)
    settle(ws)
    complete_to = ws.iceberg_table(TARGET).current_snapshot().summary.additional_properties["offloader.window-hi"]
    ws.insert_trades(1, start="2026-01-01 00:03:19.800", first_seq=5000)  # the cursor is (00:03:19.8, 999)
    ws.engine.command(f"ALTER TABLE k2.trades UPDATE quantity = 3 WHERE sequence_number % 5 = 0{SYNC}")
    settle(ws)
    assert_cold_is_source(ws)
    marker = ws.iceberg_table(TARGET).current_snapshot().summary.additional_properties
    assert json.loads(marker["offloader.cursor"]) == ["2026-01-01 00:03:19.800000", 5000]
    assert marker["offloader.operation"] == "correction" and marker["offloader.window-hi"] == complete_to, (
        "a correction leaves the table complete up to the window end before it (a cut point of its own)"
    )


def test_corrections_over_http_with_a_sigkill_after_the_commit(ws: Workspace, endpoint: Endpoint) -> None:
    """Over HTTP, as in production: an ALTER UPDATE and a lightweight DELETE sent to the server
    reach Iceberg, through a run SIGKILLed right after the correction's commit."""
    seed(ws, 3000)
    ws.tables = [trades_table(corrections="mutations")]
    ws.source["max_window"] = "10m"
    endpoint.start()
    assert ws.run_once().returncode == 0
    client = endpoint.client()
    client.command(f"ALTER TABLE k2.trades UPDATE price = 2 WHERE ingestion_timestamp <= '2026-01-01 00:00:01'{SYNC}")
    client.command("DELETE FROM k2.trades WHERE sequence_number = 2500")
    killed = ws.run_once(kill_at="after_commit:1")
    assert killed.returncode == -9, killed.stderr[-2000:]
    rerun = ws.run_once()
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_exact(ws, source=endpoint.rows, rows=2999)
    src = sorted(endpoint.rows(f"SELECT {CONTENT} FROM k2.trades"))
    assert_same_rows(src, sorted(ws.duckdb_rows(TARGET, DUCK_CONTENT)), "DuckDB")
    assert sorted(corrections_applied(ws).values()) == [1, 1]
    assert endpoint.stop() == 0

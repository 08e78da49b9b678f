"""``corrections = "replacing"``: Iceberg equals the ReplacingMergeTree's FINAL, through kills.

The source is embedded chDB (the CLI runs as a real subprocess on ``chdb://``). Random cycles
of new rows, new versions, deletes (``is_deleted = 1``), late older versions and several
versions of a key in one window are offloaded by ``offloader once`` SIGKILLed at a named
point, then settled by a clean run; after each settled cycle the cold tier, read by DuckDB
and by ClickHouse's icebergLocal, equals ``SELECT … FROM t FINAL`` by key and by content.
"""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from endpoint import Endpoint
from helpers import Workspace

from offloader.faults import POINTS

DDL = """
CREATE TABLE k2.{table} (
    symbol LowCardinality(String),
    trade_id UInt64,
    exchange_timestamp DateTime64(3, 'UTC'),
    ingestion_timestamp DateTime64(6, 'UTC'),
    version UInt64,
    is_deleted UInt8,
    price Decimal(18, 8),
    quantity Decimal(18, 8)
) ENGINE = ReplacingMergeTree({engine}) ORDER BY ({key})
"""
SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT")
CH_COLUMNS = (
    "symbol, trade_id, toUnixTimestamp64Micro(exchange_timestamp), toUnixTimestamp64Micro(ingestion_timestamp), "
    "version, is_deleted, toString(price), toString(quantity)"
)
DUCK_COLUMNS = (
    "symbol, trade_id, epoch_us(exchange_timestamp), epoch_us(ingestion_timestamp), version, is_deleted, "
    "price::VARCHAR, quantity::VARCHAR"
)


def table_entry(name: str = "quotes", **overrides: Any) -> dict[str, Any]:
    entry = {
        "name": name, "source": f"k2.{name}", "target": f"cold.{name}", "layer": "bronze",
        "cursor": ["ingestion_timestamp", "trade_id"], "partition_by": ["day(exchange_timestamp)"],
        "corrections": "replacing", "version_column": "version", "deleted_column": "is_deleted",
    }  # fmt: skip
    entry.update(overrides)
    return entry


def create(ws: Workspace, table: str = "quotes", engine: str = "version, is_deleted", key: str = "symbol, trade_id") -> None:
    ws.engine.command("CREATE DATABASE IF NOT EXISTS k2")
    ws.engine.command(DDL.format(table=table, engine=engine, key=key))


def normal(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with their decimals as Decimal values (each reader prints them its own way)."""
    return sorted((*r[:6], Decimal(str(r[6])), Decimal(str(r[7]))) for r in rows)


class Feed:
    """Random inserts, new versions, deletes and late older versions, with a model of no use
    for the assertions (those compare with FINAL, as background merges may collapse the
    source's parts at any time) but to pick keys that exist."""

    def __init__(self, ws: Workspace, seed: int) -> None:
        self.ws = ws
        self.rng = random.Random(seed)  # noqa: S311 - test data, not secrets
        self.next_id = 0
        self.versions: dict[tuple[str, int], int] = {}
        self.ingest_us = 1_767_225_600_000_000  # 2026-01-01, microseconds

    def _row(self, key: tuple[str, int], version: int, deleted: int) -> str:
        self.ingest_us += self.rng.randint(1, 20_000_000)  # up to 20 s apart: several windows a cycle
        exchange_ms = 1_767_225_600_000 + key[1] * 1000  # a trade's exchange time never changes
        price = f"{30000 + self.rng.randint(0, 10**6) / 1000:.3f}"
        return (
            f"('{key[0]}', {key[1]}, fromUnixTimestamp64Milli({exchange_ms}, 'UTC'), "
            f"fromUnixTimestamp64Micro({self.ingest_us}, 'UTC'), {version}, {deleted}, {price}, {self.rng.randint(1, 999) / 100})"
        )

    def cycle(self, n: int = 40) -> dict[str, int]:
        rows, done = [], {"insert": 0, "version": 0, "delete": 0, "late": 0}
        for _ in range(n):
            known = list(self.versions)
            kind = self.rng.choice(["insert", "insert", "version", "version", "delete", "late"]) if known else "insert"
            if kind == "insert":
                key = (self.rng.choice(SYMBOLS), self.next_id)
                self.next_id += 1
                version = self.rng.randint(1, 3)
                self.versions[key] = version
                rows.append(self._row(key, version, 0))
            else:
                key = self.rng.choice(known)
                if kind == "late":  # an older version arriving after the newer one
                    rows.append(self._row(key, self.rng.randint(0, max(self.versions[key] - 1, 0)), 0))
                else:
                    self.versions[key] += self.rng.randint(1, 3)
                    rows.append(self._row(key, self.versions[key], 1 if kind == "delete" else 0))
            done[kind] += 1
        for start in range(0, len(rows), 15):  # a few parts: FINAL merges across them
            self.ws.engine.command(f"INSERT INTO k2.quotes VALUES {', '.join(rows[start : start + 15])}")
        return done


def assert_final(ws: Workspace, table: str = "quotes") -> None:
    """The cold tier equals the source's FINAL (deleted rows excluded), read by icebergLocal and DuckDB."""
    final = normal(ws.engine.rows(f"SELECT {CH_COLUMNS} FROM k2.{table} FINAL WHERE is_deleted = 0"))
    cold = normal(ws.iceberg_local(f"cold.{table}", CH_COLUMNS))
    duck = normal(ws.duckdb_rows(f"cold.{table}", DUCK_COLUMNS))
    for reader, rows in (("ClickHouse icebergLocal", cold), ("DuckDB", duck)):
        keys = [r[:2] for r in rows]
        assert len(keys) == len(set(keys)), f"{reader}: a key twice"
        assert {r[:2] for r in rows} == {r[:2] for r in final}, f"{reader}: keys differ from FINAL"
        assert rows == final, f"{reader}: content differs from FINAL"


@pytest.mark.parametrize("source", ["embedded", "http"])
def test_random_corrections_with_kills_equal_final(ws: Workspace, endpoint: Endpoint, source: str) -> None:
    """Each cycle's rows are taken by a run SIGKILLed at a random point, then by a clean one;
    over HTTP (tests/chhttp.py, as production reads) the endpoint serves the two runs."""
    seed = 7 if source == "embedded" else 11
    ws.tables = [table_entry()]
    ws.source["max_window"] = "3m"
    create(ws)
    feed = Feed(ws, seed)
    rng = random.Random(seed)  # noqa: S311 - kill points, not secrets
    done: Counter[str] = Counter()
    kills = 0
    for _ in range(3):
        done.update(feed.cycle(50))
        if source == "http":
            endpoint.start()
            ws.source_dsn = endpoint.dsn
        killed = ws.run_once(kill_at=f"{rng.choice(POINTS)}:{rng.randint(1, 3)}")
        assert killed.returncode in (0, -9), killed.stderr[-2000:]
        kills += killed.returncode == -9
        settled = ws.run_once()
        assert settled.returncode == 0, settled.stderr[-2000:]
        if source == "http":
            endpoint.kill()
        assert_final(ws)
    assert min(done.values()) > 0, f"every kind of change was offloaded: {dict(done)}"
    assert kills >= 2, f"only {kills} of the runs were killed"


def test_key_with_partition_column_prunes_and_rewrites_only_its_file(ws: Workspace) -> None:
    """With the partition's column in the key, a correction rewrites one day's file only; check
    and backfill, which compare or copy raw rows, refuse the table naming the key."""
    ws.tables = [table_entry()]
    create(ws, key="exchange_timestamp, symbol, trade_id")
    ws.engine.command(
        "INSERT INTO k2.quotes SELECT if(number % 2 = 0, 'BTC-USDT', 'ETH-USDT'), number, "
        "toDateTime64('2026-01-01', 3, 'UTC') + toIntervalDay(number % 3), "
        "toDateTime64('2026-01-01', 6, 'UTC') + toIntervalMicrosecond(number), 1, 0, 100, 1 FROM numbers(300)"
    )
    assert ws.run_once().returncode == 0
    ws.engine.command(
        "INSERT INTO k2.quotes SELECT symbol, trade_id, exchange_timestamp, toDateTime64('2026-01-02', 6, 'UTC'), 2, 0, 101, 1 "
        "FROM k2.quotes WHERE trade_id IN (3, 6)"  # both on day 0 (3 % 3 = 6 % 3 = 0)
    )
    assert ws.run_once().returncode == 0
    summary = ws.iceberg_table("cold.quotes").current_snapshot().summary
    assert summary["offloader.removed-rows"] == "2"
    assert summary["offloader.rewritten-rows"] == "98", "only day 0's file (100 rows) was rewritten"
    assert_final(ws)
    for command in (("check", "--table", "quotes"), ("backfill", "--table", "quotes")):
        refused = ws.cli(*command)
        assert refused.returncode in (1, 2), refused.stderr[-2000:]  # failed, or a usage error
        assert 'tables.quotes.corrections = "replacing"' in refused.stderr + refused.stdout, command


@pytest.mark.parametrize(
    ("engine", "entry", "message"),
    [
        ("version", {}, "tables.quotes.deleted_column = 'is_deleted': k2.quotes declares no is_deleted column"),
        ("plain MergeTree", {}, None),
        ("", {"deleted_column": None}, "tables.quotes.version_column = 'version': k2.quotes declares no version column"),
    ],
)
def test_a_table_not_replacing_by_that_version_is_refused_naming_the_key(
    ws: Workspace, engine: str, entry: dict[str, Any], message: str | None
) -> None:
    if message is None:  # a plain MergeTree
        ws.engine.command("CREATE DATABASE IF NOT EXISTS k2")
        ws.engine.command(
            DDL.format(table="quotes", engine="", key="symbol, trade_id").replace("ReplacingMergeTree()", "MergeTree")
        )
        message = 'tables.quotes.corrections = "replacing": k2.quotes is a MergeTree, not a ReplacingMergeTree'
    else:
        create(ws, engine=engine)
    ws.tables = [{k: v for k, v in table_entry(**entry).items() if v is not None}]
    run = ws.run_once()
    assert run.returncode != 0
    assert message in run.stderr + run.stdout
    assert "Traceback" not in run.stderr


def test_late_older_version_changes_nothing_and_a_deleted_key_comes_back_only_newer(ws: Workspace) -> None:
    """A window holding only an older version commits its cursor and changes no row; a late
    older version of a deleted key stays deleted; a newer version brings the key back."""
    ws.tables = [table_entry()]
    create(ws)

    def insert(trade_id: int, second: int, version: int, deleted: int, price: int) -> None:
        ws.engine.command(
            f"INSERT INTO k2.quotes VALUES ('BTC-USDT', {trade_id}, '2026-01-01 00:00:00', "
            f"toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalSecond({second}), {version}, {deleted}, {price}, 1)"
        )

    insert(1, 1, 5, 0, 100)
    insert(2, 2, 5, 0, 200)
    insert(2, 3, 6, 1, 200)  # key 2 deleted in the same window as its insert
    assert ws.run_once().returncode == 0
    assert_final(ws)
    before = ws.iceberg_table("cold.quotes").current_snapshot().snapshot_id
    insert(1, 10, 4, 0, 999)  # older than the version offloaded
    insert(2, 11, 5, 0, 999)  # older than the delete
    assert ws.run_once().returncode == 0
    snapshot = ws.iceberg_table("cold.quotes").current_snapshot()
    assert snapshot.snapshot_id != before, "the window's cursor was committed"
    assert snapshot.summary["offloader.removed-rows"] == "0"
    assert_final(ws)
    insert(2, 20, 7, 0, 300)  # newer than the delete: the key is back
    assert ws.run_once().returncode == 0
    assert_final(ws)
    assert sorted(ws.iceberg_local("cold.quotes", "trade_id, toString(price)")) == [(1, "100"), (2, "300")]

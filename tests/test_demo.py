"""The market-data demo against the real ClickHouse engine (chDB): schema, seed, live batches, table set.

One chDB data directory serves the whole module (chDB opens one path per process at a time);
it is seeded once with :data:`ROWS` trades, and tests that add rows compare before and after.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pytest
from helpers import ROOT

from offloader import demo, demo_feed
from offloader.config import parse_duration
from offloader.config_loader import load_config

ROWS = 50_000
HOURS = 6.0
BRONZE = [demo.bronze_table(e) for e in demo.EXCHANGES]
COMMON = ", ".join(name for name, _ in demo.COMMON_COLUMNS)


class ChdbAdapter:
    """The two-call engine interface over ``chdb.connect(path)``."""

    def __init__(self, path: str) -> None:
        import chdb

        self.conn = chdb.connect(path)

    @staticmethod
    def _params(params: dict[str, Any] | None) -> dict[str, Any]:
        return {k: v if isinstance(v, str | int | float) else str(v) for k, v in (params or {}).items()}

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self.conn.query(sql, "CSV", params=self._params(params))

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        data = self.conn.query(sql, "Arrow", params=self._params(params)).bytes()
        if not data:
            return []
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        return list(zip(*(column.to_pylist() for column in table.columns), strict=True))

    def value(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.rows(sql, params)[0][0]

    def close(self) -> None:
        self.conn.close()


@dataclass
class Seeded:
    engine: ChdbAdapter
    empty_without_schema: bool
    empty_with_schema: bool
    empty_after_seed: bool
    added: int
    counts: dict[str, int]
    progress: list[tuple[int, int]]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    engine = ChdbAdapter(str(tmp_path_factory.mktemp("demo") / "clickhouse"))
    try:
        empty_without_schema = demo.is_empty(engine)
        demo.ensure_schema(engine)
        empty_with_schema = demo.is_empty(engine)
        calls: list[tuple[int, int]] = []
        added = demo_feed.seed(engine, ROWS, hours=HOURS, seed=7, progress=lambda done, total: calls.append((done, total)))
        counts = {table: engine.value(f"SELECT count() FROM {table}") for table in BRONZE}
        yield Seeded(engine, empty_without_schema, empty_with_schema, demo.is_empty(engine), added, counts, calls)
    finally:
        engine.close()


def _statements(sql_text: str) -> list[str]:
    lines = [line for line in sql_text.splitlines() if not line.startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]


def test_schema_file_holds_the_same_statements() -> None:
    """config/clickhouse/schema.sql runs exactly the DDL of schema_statements(), so the two never drift."""
    text = (ROOT / "config" / "clickhouse" / "schema.sql").read_text()
    assert _statements(text) == demo.schema_statements()
    assert text == demo.schema_sql()


def test_schema_is_idempotent(seeded: Seeded) -> None:
    """Running ensure_schema on an existing, filled schema changes nothing and keeps every row."""
    demo.ensure_schema(seeded.engine)
    assert seeded.engine.value("SELECT count() FROM system.tables WHERE database = 'k2'") == len(demo.schema_statements()) - 1
    assert sum(seeded.engine.value(f"SELECT count() FROM {t}") for t in BRONZE) >= ROWS


def test_is_empty_until_bronze_has_rows(seeded: Seeded) -> None:
    """is_empty is true without a schema and with an empty one, false once bronze holds trades."""
    assert seeded.empty_without_schema and seeded.empty_with_schema
    assert not seeded.empty_after_seed


def test_seed_inserts_exactly_the_rows_asked(seeded: Seeded) -> None:
    """Seeding N rows adds exactly N bronze rows in total, split unevenly with binance the largest."""
    assert seeded.added == ROWS
    assert sum(seeded.counts.values()) == ROWS
    binance, kraken, coinbase = (seeded.counts[t] for t in BRONZE)
    assert binance > coinbase > kraken > 0
    assert seeded.progress and seeded.progress[-1] == (ROWS, ROWS)


def test_sequence_numbers_are_unique_per_table(seeded: Seeded) -> None:
    """Every bronze table's sequence numbers are unique and follow its exchange timestamps."""
    for table in BRONZE:
        count, distinct = seeded.engine.rows(f"SELECT count(), uniqExact(sequence_number) FROM {table}")[0]
        assert count == distinct > 0
        out_of_order = seeded.engine.value(
            "SELECT countIf(t < previous) FROM (SELECT exchange_timestamp AS t, lagInFrame(exchange_timestamp, 1, exchange_timestamp) "
            f"OVER (ORDER BY sequence_number ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS previous FROM {table})"
        )
        assert out_of_order == 0


def test_silver_is_exactly_the_union_of_bronze(seeded: Seeded) -> None:
    """silver_trades holds every bronze row once, with its exchange, and nothing else."""
    engine = seeded.engine
    for exchange, table in zip(demo.EXCHANGES, BRONZE, strict=True):
        bronze = engine.rows(f"SELECT count(), sum(cityHash64({COMMON})) FROM {table}")
        silver = engine.rows(
            f"SELECT count(), sum(cityHash64({COMMON})) FROM k2.silver_trades WHERE exchange = {{e:String}}", {"e": exchange}
        )
        assert silver == bronze
    assert engine.value("SELECT count() FROM k2.silver_trades") == sum(engine.value(f"SELECT count() FROM {t}") for t in BRONZE)
    assert engine.value("SELECT uniqExact(exchange, sequence_number) = count() FROM k2.silver_trades")


def test_gold_1m_bars_match_an_independent_group_by(seeded: Seeded) -> None:
    """Every 1m bar equals a GROUP BY over silver: OHLC by trade order, exact volume, trade count."""
    engine = seeded.engine
    expected = engine.rows(
        "SELECT toStartOfMinute(exchange_timestamp) AS w, toString(exchange) AS x, toString(symbol) AS s, "
        "argMin(price, (exchange_timestamp, sequence_number)), max(price), min(price), "
        "argMax(price, (exchange_timestamp, sequence_number)), sum(quantity), count() "
        "FROM k2.silver_trades GROUP BY w, x, s ORDER BY w, x, s"
    )
    actual = engine.rows(
        "SELECT window_start, toString(exchange) AS x, symbol, open, high, low, close, volume, trade_count "
        "FROM k2.gold_ohlcv_1m ORDER BY window_start, x, symbol"
    )
    assert actual == expected
    assert sum(row[8] for row in actual) == engine.value("SELECT count() FROM k2.silver_trades")
    assert all(high >= max(open_, close) and min(open_, close) >= low for _, _, _, open_, high, low, close, _, _ in actual)


def test_gold_bars_at_every_interval_account_for_every_trade(seeded: Seeded) -> None:
    """Each gold view has the documented column types and sums to silver's trade count and volume."""
    engine = seeded.engine
    silver = engine.rows("SELECT count(), sum(quantity) FROM k2.silver_trades")[0]
    for interval in demo.INTERVALS:
        types = dict(row[:2] for row in engine.rows(f"DESCRIBE TABLE k2.gold_ohlcv_{interval}"))
        assert types == {
            "window_start": "DateTime('UTC')",
            "exchange": "LowCardinality(String)",
            "symbol": "String",
            "open": "Decimal(18, 8)",
            "high": "Decimal(18, 8)",
            "low": "Decimal(18, 8)",
            "close": "Decimal(18, 8)",
            "volume": "Decimal(38, 8)",
            "trade_count": "UInt64",
        }
        assert engine.rows(f"SELECT sum(trade_count), sum(volume) FROM k2.gold_ohlcv_{interval}")[0] == silver
        seconds = int(parse_duration(interval))
        assert engine.value(f"SELECT countIf(toUnixTimestamp(window_start) % {seconds} != 0) FROM k2.gold_ohlcv_{interval}") == 0


def test_trades_arrive_in_bursts_over_several_symbols(seeded: Seeded) -> None:
    """Some ingestion timestamp is shared by >= 100 trades, and trades cover several symbols and both sides."""
    engine = seeded.engine
    biggest = engine.value(f"SELECT max(c) FROM (SELECT count() AS c FROM {BRONZE[0]} GROUP BY ingestion_timestamp)")
    assert biggest >= 100
    assert engine.value("SELECT uniqExact(symbol) FROM k2.silver_trades") >= 6
    assert engine.value("SELECT uniqExact(side) FROM k2.silver_trades") == 2
    assert engine.value("SELECT countIf(is_buyer_maker != (side = 'sell')) FROM k2.silver_trades") == 0


def test_prices_walk_around_realistic_levels_on_every_exchange(seeded: Seeded) -> None:
    """Each symbol trades near its reference level, and the exchanges' closes of the same minute agree."""
    engine = seeded.engine
    levels = {s.name: s.price for s in demo.SYMBOLS}
    for symbol, low, high, quantity_positive in engine.rows(
        "SELECT toString(symbol), min(toFloat64(price)), max(toFloat64(price)), min(quantity) > 0 FROM k2.silver_trades GROUP BY 1"
    ):
        assert 0.8 * levels[symbol] < low < high < 1.2 * levels[symbol] and quantity_positive
    gap = engine.value(
        "SELECT quantileExact(0.9)(gap) FROM (SELECT max(toFloat64(close)) / min(toFloat64(close)) - 1 AS gap "
        "FROM k2.gold_ohlcv_1m GROUP BY window_start, symbol HAVING count() >= 2)"
    )
    assert 0 < gap < 0.005


def test_sizes_are_heavy_tailed(seeded: Seeded) -> None:
    """Trade notionals are skewed: the largest is orders of magnitude above the median."""
    median, top = seeded.engine.rows(
        "SELECT quantileExact(0.5)(n), max(n) FROM (SELECT toFloat64(price) * toFloat64(quantity) AS n FROM k2.silver_trades)"
    )[0]
    assert top > 100 * median


def test_timestamps_span_the_past_hours_up_to_server_now(seeded: Seeded) -> None:
    """Trades lie in the last HOURS of the server clock; ingestion follows the exchange time by at most 2 s."""
    engine = seeded.engine
    now, first, last, min_latency, max_latency = engine.rows(
        "SELECT now64(6, 'UTC'), min(exchange_timestamp), max(ingestion_timestamp), "
        "min(dateDiff('microsecond', exchange_timestamp, ingestion_timestamp)), "
        "max(dateDiff('microsecond', exchange_timestamp, ingestion_timestamp)) FROM k2.silver_trades"
    )[0]
    assert now - timedelta(hours=HOURS, minutes=1) <= first <= now - timedelta(hours=HOURS - 1)
    assert now - timedelta(minutes=10) <= last <= now
    assert 0 < min_latency and max_latency <= demo.MAX_LATENCY_US


def test_second_seed_appends_after_existing_rows(seeded: Seeded) -> None:
    """Seeding again adds rows after every existing ingestion timestamp and continues sequence numbers."""
    engine = seeded.engine
    before = {t: engine.rows(f"SELECT count(), max(sequence_number) FROM {t}")[0] for t in BRONZE}
    newest = max(engine.value(f"SELECT max(ingestion_timestamp) FROM {t}") for t in BRONZE)
    assert demo_feed.seed(engine, 20_000, hours=1.0, seed=8) == 20_000
    added = 0
    for table in BRONZE:
        count, max_seq = before[table]
        new_count, distinct, first_new, oldest_new = engine.rows(
            f"SELECT count(), uniqExact(sequence_number), minIf(sequence_number, sequence_number > {{m:UInt64}}), "
            f"minIf(ingestion_timestamp, sequence_number > {{m:UInt64}}) FROM {table}",
            {"m": max_seq},
        )[0]
        assert new_count == distinct
        assert first_new == max_seq + 1
        assert oldest_new > newest
        added += new_count - count
    assert added == 20_000
    assert engine.value("SELECT count() FROM k2.silver_trades") == sum(engine.value(f"SELECT count() FROM {t}") for t in BRONZE)


def test_live_batch_adds_trades_near_server_now(seeded: Seeded) -> None:
    """A live batch adds its rows with ingestion timestamps within the last seconds of the server clock."""
    engine = seeded.engine
    total = "SELECT count() FROM k2.silver_trades"
    before = engine.value(total)
    newest = max(engine.value(f"SELECT max(ingestion_timestamp) FROM {t}") for t in BRONZE)
    assert demo_feed.live_batch(engine, 300) == 300
    assert engine.value(total) == before + 300
    now, oldest, latest, distinct = engine.rows(
        "SELECT now64(6, 'UTC'), min(ingestion_timestamp), max(ingestion_timestamp), uniqExact(exchange, sequence_number) "
        "FROM k2.silver_trades WHERE ingestion_timestamp > {newest:DateTime64(6, 'UTC')}",
        {"newest": newest.strftime("%Y-%m-%d %H:%M:%S.%f")},
    )[0]
    assert distinct == 300
    assert now - timedelta(seconds=5) <= oldest <= latest <= now
    for table in BRONZE:
        assert engine.value(f"SELECT uniqExact(sequence_number) = count() FROM {table}")


def test_seed_rejects_impossible_arguments(seeded: Seeded) -> None:
    """A negative row count or a non-positive span is refused before anything is inserted."""
    with pytest.raises(ValueError, match="rows"):
        demo_feed.seed(seeded.engine, -1)
    with pytest.raises(ValueError, match="hours"):
        demo_feed.seed(seeded.engine, 10, hours=0)


def test_table_configs_form_the_ten_table_set(seeded: Seeded) -> None:
    """table_configs() lists 3 bronze, silver and 6 gold tables whose sources, cursors and dependencies exist."""
    tables = demo.table_configs()
    names = [t["name"] for t in tables]
    assert len(tables) == 10 and len(set(names)) == 10
    assert [t["layer"] for t in tables] == ["bronze"] * 3 + ["silver"] + ["gold"] * 6
    for t in tables:
        assert all(dep in names and names.index(dep) < names.index(t["name"]) for dep in t["depends_on"])
        columns = dict(row[:2] for row in seeded.engine.rows(f"DESCRIBE TABLE {t['source']}"))
        assert set(t["cursor"]) <= set(columns)
        assert re.match(r"^DateTime(64)?\(", columns[t["cursor"][0]])
        assert t["target"] == "cold." + t["source"].split(".", 1)[1]
    for t, interval in zip(tables[4:], demo.INTERVALS, strict=True):
        assert t["mode"] == "replace" and t["depends_on"] == ["silver_trades"]
        assert parse_duration(t["replace_lookback"]) == 2 * parse_duration(interval)


def test_example_config_lists_the_demo_tables() -> None:
    """config/offloader.example.toml validates and its [[tables]] equal table_configs()."""
    path = ROOT / "config" / "offloader.example.toml"
    assert tomllib.loads(path.read_text())["tables"] == demo.table_configs()
    config = load_config(path, env={})
    assert [t.name for t in config.tables] == [t["name"] for t in demo.table_configs()]
    assert config.source.password is None and config.catalog.password is None and config.state.password is None
    assert not re.search(r"^\s*[\w.\"-]*(password|secret)[\w.\"-]*\s*=", path.read_text(), re.MULTILINE)

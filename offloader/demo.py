"""The market-data demo: its ClickHouse schema, the 10-table set, and the embedded default config.

The generators that fill it (the seed of history, the live feed) are in ``demo_feed``.

This module owns the ``k2`` database of the demo and nothing else:

* **bronze**: one MergeTree table of trades per exchange (``k2.bronze_trades_<exchange>``).
  The common columns (:data:`COMMON_COLUMNS`) are identical in name and type; each exchange
  adds a few of its own (order ids, order type, UUIDs).
* **silver**: ``k2.silver_trades``, the union of the three with an ``exchange`` column, filled
  by one MATERIALIZED VIEW per bronze table: every insert into bronze lands in silver too.
* **gold**: OHLCV bars at :data:`INTERVALS`, built the way ClickHouse users build them: an
  AggregatingMergeTree ``k2.gold_ohlcv_<iv>_agg`` of aggregate states fed by a MATERIALIZED
  VIEW from silver, and a plain VIEW ``k2.gold_ohlcv_<iv>`` that finalizes them (GROUP BY).
  View columns: ``window_start DateTime('UTC')``, ``exchange LowCardinality(String)``,
  ``symbol String``, ``open/high/low/close Decimal(18, 8)``, ``volume Decimal(38, 8)`` (the
  exact sum of Decimal(18, 8)), ``trade_count UInt64``.

The trades are generated inside ClickHouse (``numbers()``, hashes, a window function, a join),
so millions of rows never pass through Python and the same code fills a remote server. Prices
are geometric random walks per symbol, shared by the exchanges (each adds its basis, spread and
the impact of a sweep); sizes are log-normal with a Pareto tail of whales; a taker order sweeps
a heavy-tailed number of levels at one exchange millisecond, and its fills arrive together, so
bursts of up to :data:`MAX_FILLS` trades share one ingestion microsecond. Every draw hashes
(``seed``, chunk, exchange, order, fill): a given ``seed`` gives the same trades relative to the
server clock.

Seeding always **appends**. New trades lie strictly after the newest ingestion timestamp in
bronze and at or before the server's ``now64()``; sequence numbers continue from each table's
maximum and prices from the last daily close. So a second seed soon after the first packs its
rows into the time in between, and an offloader that already exported the old rows never
receives a late row. Time always comes from the server clock.

Every function takes an engine with ``command`` and ``rows`` (:class:`Engine`); ``seed`` and
``live_batch`` expect :func:`ensure_schema` to have run. Values travel as scalar query
parameters only (a list as comma-separated text, split in SQL): the engines format array
parameters differently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

DATABASE = "k2"
EXCHANGES = ("binance", "kraken", "coinbase")
INTERVALS = ("1m", "5m", "15m", "30m", "1h", "1d")

CHUNK_ROWS = 1_000_000
"""Bronze rows (all exchanges together) per chunk of a seed; a chunk is one INSERT per exchange."""
MAX_FILLS = 5_000
"""The largest burst: fills of one taker order, sharing one exchange and one ingestion timestamp."""
FILLS_ALPHA = 1.3
"""Pareto tail index of the fills per taker order: most take one level, a few sweep thousands."""
MAX_LATENCY_US = 2_000_000
"""Ingestion latency never exceeds this, so the newest sequence numbers lie near the newest rows."""

_INTERVAL_SQL = {"1m": "1 MINUTE", "5m": "5 MINUTE", "15m": "15 MINUTE", "30m": "30 MINUTE", "1h": "1 HOUR", "1d": "1 DAY"}
_LOOKBACK = {"1m": "2m", "5m": "10m", "15m": "30m", "30m": "1h", "1h": "2h", "1d": "2d"}


class Engine(Protocol):
    """What the demo needs from a ClickHouse connection (both engines of ``offloader.clickhouse``)."""

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None: ...
    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class Symbol:
    name: str
    price: float  # a realistic level to start from, in the quote currency
    weight: float  # share of the trades
    vol: float  # volatility of the log price, per second
    tick_dp: int  # price tick = 10**-tick_dp
    lot_dp: int  # quantity step = 10**-lot_dp


SYMBOLS = (
    Symbol("BTC-USDT", 97_000.0, 0.34, 1.1e-4, 2, 5),
    Symbol("ETH-USDT", 3_400.0, 0.24, 1.4e-4, 2, 4),
    Symbol("SOL-USDT", 190.0, 0.12, 1.9e-4, 2, 3),
    Symbol("XRP-USDT", 2.2, 0.08, 2.0e-4, 4, 1),
    Symbol("DOGE-USDT", 0.32, 0.08, 2.4e-4, 5, 0),
    Symbol("ADA-USDT", 0.9, 0.05, 2.1e-4, 4, 1),
    Symbol("AVAX-USDT", 38.0, 0.05, 2.2e-4, 2, 2),
    Symbol("LINK-USDT", 22.0, 0.04, 2.0e-4, 3, 2),
)


@dataclass(frozen=True)
class Venue:
    """One exchange: its share of the trades, its prices, its own columns and trade ids."""

    share: float  # of the bronze rows of a seed
    basis: float  # relative offset of its prices from the shared mid
    half_spread: float  # relative; takers buy at mid * (1 + basis + half_spread)
    trade_id: str  # SQL over the generator's columns (see _GENERATE)
    extra: tuple[tuple[str, str, str], ...]  # (column, type, SQL over the generator's columns)


VENUES = {
    "binance": Venue(0.60, 0.0, 0.4e-4, "toString(sequence_number)", (
        ("buyer_order_id", "UInt64", "if(side = 'buy', taker_order, maker_order)"),
        ("seller_order_id", "UInt64", "if(side = 'buy', maker_order, taker_order)"),
        ("is_best_match", "Bool", "true"),
    )),
    "kraken": Venue(0.15, 1.5e-4, 1.2e-4, "concat('T', upper(hex(bitAnd(h2, 0xFFFFFFFFFF))), '-', upper(hex(bitShiftRight(h3, 40))))", (
        ("order_type", "Enum8('market' = 1, 'limit' = 2)", "if(bitAnd(h3, 7) = 0, 'limit', 'market')"),
        ("misc", "LowCardinality(String)", "if(bitAnd(h3, 63) = 8, 'l', '')"),
    )),
    "coinbase": Venue(0.25, -0.8e-4, 0.8e-4, "toString(sequence_number + 700000000)", (
        ("maker_order_id", "UUID", "reinterpretAsUUID(bitOr(bitShiftLeft(toUInt128(maker_order), 64), h3))"),
        ("taker_order_id", "UUID", "reinterpretAsUUID(bitOr(bitShiftLeft(toUInt128(taker_order), 64), h2))"),
    )),
}  # fmt: skip

COMMON_COLUMNS = (
    ("exchange_timestamp", "DateTime64(3, 'UTC')"),
    ("ingestion_timestamp", "DateTime64(6, 'UTC')"),
    ("sequence_number", "UInt64"),
    ("trade_id", "String"),
    ("symbol", "LowCardinality(String)"),
    ("side", "Enum8('buy' = 1, 'sell' = 2)"),
    ("price", "Decimal(18, 8)"),
    ("quantity", "Decimal(18, 8)"),
    ("is_buyer_maker", "Bool"),
)
"""The columns every bronze table starts with, in this order; silver has them after ``exchange``."""


def bronze_table(exchange: str) -> str:
    """``k2.bronze_trades_<exchange>``."""
    return f"{DATABASE}.bronze_trades_{exchange}"


# ---------------------------------------------------------------------------------------
# Schema

COMMON_NAMES = ", ".join(name for name, _ in COMMON_COLUMNS)

# Open and close are the prices of the first and last trade by (exchange_timestamp,
# sequence_number), packed into one UInt128 (milliseconds high, sequence number low): no ties
# inside a burst, so bars are deterministic, and 5x cheaper to aggregate than a Tuple key.
_TRADE_ORDER = "bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)"


def _columns_ddl(columns: tuple[tuple[str, str], ...]) -> str:
    return ",\n".join(f"    {name} {ch_type}" for name, ch_type in columns)


def _bronze_ddl(exchange: str) -> str:
    extra = tuple((name, ch_type) for name, ch_type, _ in VENUES[exchange].extra)
    return (
        f"CREATE TABLE IF NOT EXISTS {bronze_table(exchange)}\n(\n{_columns_ddl(COMMON_COLUMNS + extra)}\n)\n"
        "ENGINE = MergeTree\n"
        "PARTITION BY toYYYYMMDD(exchange_timestamp)\n"
        "ORDER BY (ingestion_timestamp, sequence_number)"
    )


def _silver_ddl() -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {DATABASE}.silver_trades\n(\n"
        f"{_columns_ddl((('exchange', 'LowCardinality(String)'), *COMMON_COLUMNS))}\n)\n"
        "ENGINE = MergeTree\n"
        "PARTITION BY toYYYYMMDD(exchange_timestamp)\n"
        "ORDER BY (ingestion_timestamp, exchange, sequence_number)"
    )


def _silver_mv_ddl(exchange: str) -> str:
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {DATABASE}.silver_trades_from_{exchange}_mv TO {DATABASE}.silver_trades\n"
        f"AS SELECT '{exchange}' AS exchange, {COMMON_NAMES}\n"
        f"FROM {bronze_table(exchange)}"
    )


def _gold_ddl(interval: str) -> list[str]:
    table = f"{DATABASE}.gold_ohlcv_{interval}"
    agg = (
        f"CREATE TABLE IF NOT EXISTS {table}_agg\n(\n"
        "    window_start DateTime('UTC'),\n"
        "    exchange LowCardinality(String),\n"
        "    symbol String,\n"
        "    open AggregateFunction(argMin, Decimal(18, 8), UInt128),\n"
        "    high AggregateFunction(max, Decimal(18, 8)),\n"
        "    low AggregateFunction(min, Decimal(18, 8)),\n"
        "    close AggregateFunction(argMax, Decimal(18, 8), UInt128),\n"
        "    volume AggregateFunction(sum, Decimal(18, 8)),\n"
        "    trade_count AggregateFunction(count)\n)\n"
        "ENGINE = AggregatingMergeTree\n"
        "PARTITION BY toYYYYMM(window_start)\n"
        "ORDER BY (window_start, exchange, symbol)"
    )
    mv = (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {table}_mv TO {table}_agg\nAS SELECT\n"
        f"    toDateTime(toStartOfInterval(exchange_timestamp, INTERVAL {_INTERVAL_SQL[interval]}), 'UTC') AS window_start,\n"
        "    exchange,\n"
        "    symbol,\n"
        f"    argMinState(price, {_TRADE_ORDER}) AS open,\n"
        "    maxState(price) AS high,\n"
        "    minState(price) AS low,\n"
        f"    argMaxState(price, {_TRADE_ORDER}) AS close,\n"
        "    sumState(quantity) AS volume,\n"
        "    countState() AS trade_count\n"
        f"FROM {DATABASE}.silver_trades\n"
        "GROUP BY window_start, exchange, symbol"
    )
    view = (
        f"CREATE VIEW IF NOT EXISTS {table}\nAS SELECT\n"
        "    window_start,\n"
        "    exchange,\n"
        "    symbol,\n"
        "    argMinMerge(open) AS open,\n"
        "    maxMerge(high) AS high,\n"
        "    minMerge(low) AS low,\n"
        "    argMaxMerge(close) AS close,\n"
        "    sumMerge(volume) AS volume,\n"
        "    countMerge(trade_count) AS trade_count\n"
        f"FROM {table}_agg\n"
        "GROUP BY window_start, exchange, symbol"
    )
    return [agg, mv, view]


def schema_statements() -> list[str]:
    """The demo's DDL in the order it must run; every statement is idempotent (IF NOT EXISTS)."""
    statements = [f"CREATE DATABASE IF NOT EXISTS {DATABASE}", _silver_ddl()]
    for interval in INTERVALS:
        statements += _gold_ddl(interval)
    for exchange in EXCHANGES:
        statements += [_bronze_ddl(exchange), _silver_mv_ddl(exchange)]
    return statements


def schema_sql() -> str:
    """The text of ``config/clickhouse/schema.sql``: :func:`schema_statements`, each ending in ``;``."""
    header = (
        "-- The market-data demo schema (database k2): bronze trades per exchange, silver_trades\n"
        "-- filled by materialized views, gold OHLCV bars (AggregatingMergeTree + finalizing views).\n"
        "-- Generated from offloader.demo.schema_statements(); tests/test_demo.py keeps the two equal.\n"
        "-- Regenerate: python -c 'from offloader import demo; print(demo.schema_sql(), end=\"\")' > config/clickhouse/schema.sql\n"
    )
    return header + "".join(f"\n{statement};\n" for statement in schema_statements())


def listed(values: Iterable[object]) -> str:
    """A list as one comma-separated text parameter (split in SQL): engines differ on array parameters."""
    return ",".join(repr(v) if isinstance(v, float) else str(v) for v in values)


def ensure_schema(engine: Engine) -> None:
    """Create whatever of the demo's database, tables and views does not exist yet."""
    for statement in schema_statements():
        engine.command(statement)


def is_empty(engine: Engine) -> bool:
    """True when no bronze table holds a row, including when the schema does not exist."""
    found = engine.rows(
        "SELECT sum(total_rows) FROM system.tables\nWHERE database = {db:String} AND has(splitByChar(',', {names:String}), name)",
        {"db": DATABASE, "names": listed(bronze_table(e).split(".", 1)[1] for e in EXCHANGES)},
    )
    return not found or not found[0][0]


# ---------------------------------------------------------------------------------------
# The 10-table set


def table_configs() -> list[dict[str, Any]]:
    """The demo's tables as ``[[tables]]`` config entries: 3 bronze, silver, 6 gold, in that order."""
    bronze = [
        {
            "name": f"bronze_trades_{exchange}",
            "source": bronze_table(exchange),
            "target": f"cold.bronze_trades_{exchange}",
            "layer": "bronze",
            "cursor": ["ingestion_timestamp", "sequence_number"],
            "partition_by": ["day(exchange_timestamp)"],
            "depends_on": [],
            "mode": "append",
        }
        for exchange in EXCHANGES
    ]
    silver = {
        "name": "silver_trades",
        "source": f"{DATABASE}.silver_trades",
        "target": "cold.silver_trades",
        "layer": "silver",
        "cursor": ["ingestion_timestamp", "exchange", "sequence_number"],
        "partition_by": ["day(exchange_timestamp)"],
        "depends_on": [t["name"] for t in bronze],
        "mode": "append",
    }
    gold = [
        {
            "name": f"gold_ohlcv_{interval}",
            "source": f"{DATABASE}.gold_ohlcv_{interval}",
            "target": f"cold.gold_ohlcv_{interval}",
            "layer": "gold",
            "cursor": ["window_start"],
            "partition_by": ["month(window_start)"],
            "depends_on": ["silver_trades"],
            "mode": "replace",
            "replace_lookback": _LOOKBACK[interval],
        }
        for interval in INTERVALS
    ]
    return [*bronze, silver, *gold]


def embedded_default(data_dir: Path) -> dict[str, Any]:
    """The no-server default: chDB source, SQLite catalog and state, local warehouse."""
    data_dir = data_dir.absolute()
    return {
        "data_dir": str(data_dir),
        "source": {"dsn": f"chdb://{data_dir / 'clickhouse'}", "safety_lag": "10s", "max_window": "1h"},
        "catalog": {
            "name": "cold",
            "type": "sql",
            "uri": f"sqlite:///{data_dir / 'catalog.db'}",
            "warehouse": f"file://{data_dir / 'warehouse'}",
        },
        "state": {"dsn": f"sqlite:///{data_dir / 'state.db'}"},
        "schedule": {"interval": "30s"},
        "tables": table_configs(),
    }

"""The market-data demo: its ClickHouse schema, the seed and live generators, the 10-table set.

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

import math
import secrets
from collections.abc import Callable, Iterable
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

_COMMON_NAMES = ", ".join(name for name, _ in COMMON_COLUMNS)

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
        f"AS SELECT '{exchange}' AS exchange, {_COMMON_NAMES}\n"
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


def _listed(values: Iterable[object]) -> str:
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
        {"db": DATABASE, "names": _listed(bronze_table(e).split(".", 1)[1] for e in EXCHANGES)},
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


# ---------------------------------------------------------------------------------------
# The generator: one INSERT … SELECT per exchange and chunk
#
# Uniform draws are bit fields of cityHash64 over (seed, salt, order[, fill]), the salt naming
# the chunk and exchange; a standard normal is Box-Muller over the two 32-bit halves of a hash.
#
#   walk    the mid price of each symbol on a grid of {steps} steps over the whole seed: it
#           hashes only the seed, so every INSERT of a seed sees the same walk.
#   events  {n} candidate taker orders; each sweeps `fills` levels (Pareto, capped).
#   placed  the rows before each order (a running sum): orders are laid out over
#           [lo, lo + span) in proportion to it, so sequence numbers follow time, and the
#           fills are cut at exactly {n} rows.
#   trades  one row per fill; every fill of an order shares its exchange millisecond, its
#           latency and hence its ingestion microsecond (capped at the server's now).
#   priced  the mid from the walk, plus basis, half spread and the sweep's price impact.
#
#   h1 (order): bits 32-63 fills, 0-23 symbol, 24 side, 25-34 whale, 35-44 stall
#   h2 (order): latency;   h3 (fill): notional;   h4 (fill): whale size, maker order id

_NORMAL = "(sqrt(-2 * log((bitShiftRight({h}, 32) + 1) / 4294967296.)) * cos(2 * pi() * bitAnd({h}, 0xFFFFFFFF) / 4294967296.))"

_GENERATE = """
WITH
    {n:UInt64} AS n_,
    splitByChar(',', {symbols:String}) AS symbols_,
    arrayMap(x -> toFloat64(x), splitByChar(',', {weights:String})) AS weights_,
    arrayMap(x -> toFloat64(x), splitByChar(',', {start:String})) AS start_prices_,
    arrayMap(x -> toFloat64(x), splitByChar(',', {vol:String})) AS vols_,
    arrayMap(x -> toUInt8(x), splitByChar(',', {tick_dp:String})) AS tick_dps_,
    arrayMap(x -> toUInt8(x), splitByChar(',', {lot_dp:String})) AS lot_dps_,
    walk AS
    (
        SELECT s, k, start_ * exp(sum(z) OVER (PARTITION BY s ORDER BY k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS mid
        FROM
        (
            SELECT
                intDiv(number, {steps:UInt64}) + 1 AS s,
                number % {steps:UInt64} AS k,
                start_prices_[s] AS start_,
                if(k = 0, 0., vols_[s] * sqrt({step_s:Float64}) * NORMAL_WALK) AS z
            FROM numbers(length(start_prices_) * {steps:UInt64})
        )
    ),
    events AS
    (
        SELECT
            number AS e,
            cityHash64({seed:UInt64}, {salt:UInt64}, number) AS h1,
            cityHash64({seed:UInt64}, {salt:UInt64}, number, 2) AS h2,
            least(toUInt64(pow((bitShiftRight(h1, 32) + 1) / 4294967296., -1 / {alpha:Float64})), {max_fills:UInt64}) AS fills
        FROM numbers(n_)
    ),
    placed AS
    (
        SELECT *, sum(fills) OVER (ORDER BY e ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - fills AS before
        FROM events
    ),
    trades AS
    (
        SELECT
            e, h1, h2, j,
            before + j AS r,
            cityHash64({seed:UInt64}, {salt:UInt64}, e, j, 3) AS h3,
            cityHash64({seed:UInt64}, {salt:UInt64}, e, j, 4) AS h4,
            {lo_us:Int64} + intDiv({span_us:Int64} * before, n_) AS event_us,
            intDiv(event_us, 1000) AS exchange_ms,
            arrayFirstIndex(c -> c > bitAnd(h1, 0xFFFFFF) / 16777216., weights_) AS s,
            toUInt64(least(greatest(intDiv(event_us - {walk_lo_us:Int64}, {step_us:Int64}), 0), {steps:UInt64} - 1)) AS k,
            if(bitTest(h1, 24), 'sell', 'buy') AS side_,
            -- log-normal around 8 ms; 0.3% of orders stall 30x longer
            toInt64(least(200 + 8000 * exp(0.8 * NORMAL_H2) * if(bitAnd(bitShiftRight(h1, 35), 1023) < 3, 30, 1), {max_latency_us:Float64})) AS latency_us,
            least(exchange_ms * 1000 + latency_us, {now_us:Int64}) AS ingestion_us,
            intExp10(tick_dps_[s]) AS tick_div,
            intExp10(lot_dps_[s]) AS lot_div,
            -- notional per fill: log-normal around $300; 0.5% of orders are Pareto whales
            least(300 * exp(1.4 * NORMAL_H3)
                * if(bitAnd(bitShiftRight(h1, 25), 1023) < 5, pow((bitShiftRight(h4, 32) + 1) / 4294967296., -1 / 1.2), 1), 5e6) AS notional,
            bitAnd(cityHash64({seed:UInt64}, {salt:UInt64}, e, 5), 0x3FFFFFFFFFFFFFFF) AS taker_order,
            bitAnd(h4, 0x3FFFFFFFFFFFFFFF) AS maker_order
        FROM placed
        ARRAY JOIN range(fills) AS j
        WHERE before < n_ AND before + j < n_
    ),
    priced AS
    (
        SELECT *, mid * (1 + {basis:Float64} + if(side_ = 'buy', 1., -1.) * ({half_spread:Float64} + 2e-5 * sqrt(j))) AS px
        FROM trades
        INNER JOIN walk USING (s, k)
    )
SELECT
    fromUnixTimestamp64Milli(exchange_ms, 'UTC') AS exchange_timestamp,
    fromUnixTimestamp64Micro(ingestion_us, 'UTC') AS ingestion_timestamp,
    {seq0:UInt64} + r AS sequence_number,
    TRADE_ID AS trade_id,
    symbols_[s] AS symbol,
    side_ AS side,
    toDecimal64(greatest(round(px * tick_div), 1), 8) / tick_div AS price,
    toDecimal64(greatest(round(notional / px * lot_div), 1), 8) / lot_div AS quantity,
    side_ = 'sell' AS is_buyer_maker,
    EXTRA_COLUMNS
FROM priced
""".replace("NORMAL_WALK", _NORMAL.format(h="cityHash64({seed:UInt64}, 0, s, k)")).replace(
    "NORMAL_H2", _NORMAL.format(h="h2")).replace("NORMAL_H3", _NORMAL.format(h="h3"))  # fmt: skip


def _insert_sql(exchange: str) -> str:
    """The INSERT … SELECT of one chunk into one bronze table (text from module constants only)."""
    venue = VENUES[exchange]
    columns = ", ".join([_COMMON_NAMES, *(name for name, _, _ in venue.extra)])
    extra = ",\n    ".join(f"{sql} AS {name}" for name, _, sql in venue.extra)
    body = _GENERATE.replace("TRADE_ID", venue.trade_id).replace("EXTRA_COLUMNS", extra)
    return f"INSERT INTO {bronze_table(exchange)} ({columns})\n{body}"


def _split(total: int, shares: list[float]) -> list[int]:
    """``total`` split by ``shares`` into integers that sum exactly to ``total`` (rest to the first)."""
    parts = [int(total * share) for share in shares]
    parts[0] += total - sum(parts)
    return parts


@dataclass(frozen=True)
class _Tail:
    """Where the existing trades end: the server's now, the newest ingestion, the next numbers, the last prices."""

    now_us: int
    last_ingestion_us: int | None
    next_seq: dict[str, int]
    last_price: dict[str, float]


def _tail_sql() -> str:
    # The largest sequence number belongs to the newest trade, ingested within MAX_LATENCY_US of
    # the newest ingestion timestamp: only that end of each table is read (primary key).
    parts = [
        f"WITH (SELECT max(ingestion_timestamp) FROM {bronze_table(exchange)}) AS top\n"
        f"SELECT {i} AS x, toUnixTimestamp64Micro(top) AS top_us, max(sequence_number) AS max_seq, count() AS n\n"
        f"FROM {bronze_table(exchange)} WHERE ingestion_timestamp >= top - INTERVAL 1 MINUTE"
        for i, exchange in enumerate(EXCHANGES)
    ]
    return "\nUNION ALL\n".join(parts)


def _tail(engine: Engine) -> _Tail:
    now_us = int(engine.rows("SELECT toUnixTimestamp64Micro(now64(6, 'UTC'))")[0][0])
    found = {int(x): (int(top), int(max_seq)) for x, top, max_seq, n in engine.rows(_tail_sql()) if n}
    next_seq = {exchange: found[i][1] + 1 if i in found else 1 for i, exchange in enumerate(EXCHANGES)}
    last_ingestion = max((top for top, _ in found.values()), default=None)
    closes = engine.rows(
        f"SELECT symbol, toFloat64(argMax(close, window_start)) FROM {DATABASE}.gold_ohlcv_1d\n"
        "WHERE exchange = {exchange:String} GROUP BY symbol",
        {"exchange": EXCHANGES[0]},
    )
    return _Tail(now_us, last_ingestion, next_seq, {str(symbol): float(price) for symbol, price in closes})


def _walk_params(tail: _Tail, lo_us: int, span_us: int, seed: int) -> dict[str, Any]:
    """The parameters every INSERT of one seed shares: symbols, the walk's grid, the clock."""
    step_us = max(1000, math.ceil(span_us / 20_000))  # at most 20k steps per symbol, at least 1 ms each
    weights = [sum(s.weight for s in SYMBOLS[: i + 1]) for i in range(len(SYMBOLS))]
    weights[-1] = 1.0
    return {
        "seed": seed,
        "symbols": _listed(s.name for s in SYMBOLS),
        "weights": _listed(weights),
        "start": _listed(tail.last_price.get(s.name, s.price) for s in SYMBOLS),
        "vol": _listed(s.vol for s in SYMBOLS),
        "tick_dp": _listed(s.tick_dp for s in SYMBOLS),
        "lot_dp": _listed(s.lot_dp for s in SYMBOLS),
        "walk_lo_us": lo_us,
        "step_us": step_us,
        "step_s": step_us / 1e6,
        "steps": span_us // step_us + 1,
        "now_us": tail.now_us,
        "max_latency_us": float(MAX_LATENCY_US),
        "alpha": FILLS_ALPHA,
    }


def _append(engine: Engine, rows: int, span_s: float, seed: int | None, progress: Callable[[int, int], None] | None) -> int:
    """Append ``rows`` bronze trades over the last ``span_s`` seconds, after every existing row."""
    if rows <= 0:
        return 0
    tail = _tail(engine)
    end_us = tail.now_us - 1000  # exchange times end 1 ms before now; ingestion is capped at now
    lo_us = tail.now_us - int(span_s * 1e6)
    if tail.last_ingestion_us is not None:
        lo_us = max(lo_us, (tail.last_ingestion_us // 1000 + 1) * 1000)
    span_us = end_us - lo_us
    if span_us < 1000:  # the server clock has not moved past the newest rows yet
        return 0
    shared = _walk_params(tail, lo_us, span_us, secrets.randbits(63) if seed is None else seed)
    next_seq = dict(tail.next_seq)
    count = math.ceil(rows / CHUNK_ROWS)
    done = 0
    for c, chunk in enumerate(_split(rows, [1 / count] * count)):
        c_lo, c_hi = lo_us + span_us * c // count, lo_us + span_us * (c + 1) // count
        for x, (exchange, n) in enumerate(zip(EXCHANGES, _split(chunk, [VENUES[e].share for e in EXCHANGES]), strict=True)):
            if n == 0:
                continue
            venue = VENUES[exchange]
            own = {
                "salt": c * len(EXCHANGES) + x + 1,
                "n": n,
                "max_fills": min(MAX_FILLS, max(20, n // 50)),
                "seq0": next_seq[exchange],
                "lo_us": c_lo,
                "span_us": c_hi - c_lo,
                "basis": venue.basis,
                "half_spread": venue.half_spread,
            }
            engine.command(_insert_sql(exchange), shared | own)
            next_seq[exchange] += n
        done += chunk
        if progress is not None:
            progress(done, rows)
    return done


def seed(
    engine: Engine,
    rows: int,
    *,
    hours: float = 6.0,
    progress: Callable[[int, int], None] | None = None,
    seed: int | None = None,
) -> int:
    """Append ``rows`` bronze trades (silver and gold follow) over the last ``hours``; return the rows added.

    The trades are split unevenly over the exchanges (binance 60%, coinbase 25%, kraken 15%)
    and inserted in chunks of :data:`CHUNK_ROWS`; ``progress(done, total)`` is called after
    each. Existing trades are kept: see the module docstring for where new ones go. Returns 0
    only when the server clock has not moved past the newest existing trade.
    """
    if rows < 0:
        raise ValueError(f"rows = {rows}: expected a non-negative number of rows")
    if not hours > 0:
        raise ValueError(f"hours = {hours}: expected a positive number of hours")
    return _append(engine, rows, hours * 3600.0, seed, progress)


def live_batch(engine: Engine, rows: int = 200) -> int:
    """Append a small burst of trades from the last second of the server clock; return the rows added."""
    if rows < 0:
        raise ValueError(f"rows = {rows}: expected a non-negative number of rows")
    return _append(engine, rows, 1.0, None, None)


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

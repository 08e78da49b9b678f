"""The market-data demo: its ClickHouse schema, the seed and live generators, the 10-table set.

This module owns the ``k2`` database of the demo and nothing else:

* **bronze**: one MergeTree table of trades per exchange (``k2.bronze_trades_<exchange>``),
  with common columns identical in name and type, plus a few exchange-specific ones;
* **silver**: ``k2.silver_trades``, the union of the three, filled by one MATERIALIZED VIEW
  per bronze table, so every insert into bronze lands in silver in the same INSERT;
* **gold**: OHLCV bars at six intervals, built the way ClickHouse users build them: an
  AggregatingMergeTree ``k2.gold_ohlcv_<iv>_agg`` of aggregate states fed by a MATERIALIZED
  VIEW from silver, and a plain VIEW ``k2.gold_ohlcv_<iv>`` that finalizes the states.

The data are generated inside ClickHouse (``numbers()``, hashes, window functions), so a seed
of millions of rows never passes through Python. Every random draw is a hash of
(``seed``, chunk, exchange, row), so a given ``seed`` gives the same trades relative to the
server's clock. Prices are geometric random walks per symbol shared by the exchanges (each adds
its spread and basis); sizes are log-normal with a Pareto tail; taker orders sweep the book in
bursts of heavy-tailed size, whose fills share one exchange and one ingestion timestamp.

Seeding always *appends*: new trades are placed strictly after every existing ingestion
timestamp and continue each table's ``sequence_number``, so offloaded windows never receive
late rows and sequence numbers stay unique per table. Time comes from the server (``now64()``).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

DATABASE = "k2"
EXCHANGES = ("binance", "kraken", "coinbase")
INTERVALS = ("1m", "5m", "15m", "30m", "1h", "1d")

CHUNK_ROWS = 1_000_000
"""Bronze rows (all exchanges together) per chunk of a seed: one INSERT per exchange each."""
MAX_FILLS = 5_000
"""The largest burst: fills of one taker order, sharing one exchange and ingestion timestamp."""
FILLS_ALPHA = 1.3
"""Pareto tail index of the fills per taker order: most take one level, a few sweep thousands."""
MAX_LATENCY_US = 2_000_000
"""The ingestion latency never exceeds this; it bounds where the newest sequence numbers lie."""

_INTERVAL_SQL = {"1m": "1 MINUTE", "5m": "5 MINUTE", "15m": "15 MINUTE", "30m": "30 MINUTE", "1h": "1 HOUR", "1d": "1 DAY"}
_LOOKBACK = {"1m": "2m", "5m": "10m", "15m": "30m", "30m": "1h", "1h": "2h", "1d": "2d"}


class Engine(Protocol):
    """The two calls the demo needs from a ClickHouse connection (the source adapter's engines)."""

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None: ...
    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class Symbol:
    name: str
    price: float  # a realistic starting level, quote currency
    weight: float  # share of the trades
    vol: float  # log-price volatility per second
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
class Exchange:
    name: str
    share: float  # of the bronze rows of a seed
    half_spread: float  # relative: takers buy at mid * (1 + basis + half_spread)
    basis: float  # relative offset of this venue's prices from the shared mid
    extra_columns: str  # DDL of the exchange-specific columns
    extra_select: str  # their values, from the generator's columns (see _GENERATE)


_EXCHANGES = {
    "binance": Exchange(
        "binance", 0.60, 0.4e-4, 0.0,
        "    buyer_order_id UInt64,\n    seller_order_id UInt64,\n    is_best_match Bool",
        "if(side = 'buy', taker_order, maker_order) AS buyer_order_id, "
        "if(side = 'buy', maker_order, taker_order) AS seller_order_id, true AS is_best_match",
    ),
    "kraken": Exchange(
        "kraken", 0.15, 1.2e-4, 1.5e-4,
        "    order_type Enum8('market' = 1, 'limit' = 2),\n    misc LowCardinality(String)",
        "if(bitAnd(h3, 7) = 0, 'limit', 'market') AS order_type, if(bitAnd(h3, 63) = 8, 'l', '') AS misc",
    ),
    "coinbase": Exchange(
        "coinbase", 0.25, 0.8e-4, -0.8e-4,
        "    maker_order_id UUID,\n    taker_order_id UUID",
        "reinterpretAsUUID(bitOr(bitShiftLeft(toUInt128(maker_order), 64), h3)) AS maker_order_id, "
        "reinterpretAsUUID(bitOr(bitShiftLeft(toUInt128(taker_order), 64), h2)) AS taker_order_id",
    ),
}  # fmt: skip

# The columns every bronze table has, in this order; silver has them too, after `exchange`.
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
_COMMON_DDL = ",\n".join(f"    {name} {ch_type}" for name, ch_type in COMMON_COLUMNS)
_COMMON_NAMES = ", ".join(name for name, _ in COMMON_COLUMNS)

_TRADE_IDS = {
    "binance": "toString(sequence_number)",
    "kraken": "concat('T', upper(hex(bitAnd(h2, 0xFFFFFFFFFF))), '-', upper(hex(bitShiftRight(h3, 40))))",
    "coinbase": "toString(sequence_number + 700000000)",
}


def bronze_table(exchange: str) -> str:
    return f"{DATABASE}.bronze_trades_{exchange}"


# ---------------------------------------------------------------------------------------
# Schema


def _bronze_ddl(exchange: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {bronze_table(exchange)}\n(\n{_COMMON_DDL},\n{_EXCHANGES[exchange].extra_columns}\n)\n"
        "ENGINE = MergeTree\nPARTITION BY toYYYYMMDD(exchange_timestamp)\nORDER BY (ingestion_timestamp, sequence_number)"
    )


def _silver_ddl() -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {DATABASE}.silver_trades\n(\n    exchange LowCardinality(String),\n{_COMMON_DDL}\n)\n"
        "ENGINE = MergeTree\nPARTITION BY toYYYYMMDD(exchange_timestamp)\nORDER BY (ingestion_timestamp, exchange, sequence_number)"
    )


def _silver_mv_ddl(exchange: str) -> str:
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {DATABASE}.silver_trades_from_{exchange}_mv TO {DATABASE}.silver_trades\n"
        f"AS SELECT '{exchange}' AS exchange, {_COMMON_NAMES}\nFROM {bronze_table(exchange)}"
    )


# Open and close are the prices of the first and last trade by (exchange_timestamp,
# sequence_number), packed into one UInt128 (milliseconds high, sequence number low): no ties
# inside a burst, so bars are deterministic, and 5x faster to aggregate than a Tuple key.
_TRADE_ORDER = "bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)"


def _gold_ddl(interval: str) -> list[str]:
    db, iv = DATABASE, interval
    agg = (
        f"CREATE TABLE IF NOT EXISTS {db}.gold_ohlcv_{iv}_agg\n(\n"
        "    window_start DateTime('UTC'),\n"
        "    exchange LowCardinality(String),\n"
        "    symbol String,\n"
        "    open AggregateFunction(argMin, Decimal(18, 8), UInt128),\n"
        "    high AggregateFunction(max, Decimal(18, 8)),\n"
        "    low AggregateFunction(min, Decimal(18, 8)),\n"
        "    close AggregateFunction(argMax, Decimal(18, 8), UInt128),\n"
        "    volume AggregateFunction(sum, Decimal(18, 8)),\n"
        "    trade_count AggregateFunction(count)\n)\n"
        "ENGINE = AggregatingMergeTree\nPARTITION BY toYYYYMM(window_start)\nORDER BY (window_start, exchange, symbol)"
    )
    mv = (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.gold_ohlcv_{iv}_mv TO {db}.gold_ohlcv_{iv}_agg\nAS SELECT\n"
        f"    toDateTime(toStartOfInterval(exchange_timestamp, INTERVAL {_INTERVAL_SQL[iv]}), 'UTC') AS window_start,\n"
        "    exchange,\n"
        "    toString(symbol) AS symbol,\n"
        f"    argMinState(price, {_TRADE_ORDER}) AS open,\n"
        "    maxState(price) AS high,\n"
        "    minState(price) AS low,\n"
        f"    argMaxState(price, {_TRADE_ORDER}) AS close,\n"
        "    sumState(quantity) AS volume,\n"
        "    countState() AS trade_count\n"
        f"FROM {db}.silver_trades\nGROUP BY window_start, exchange, symbol"
    )
    view = (
        f"CREATE VIEW IF NOT EXISTS {db}.gold_ohlcv_{iv}\nAS SELECT\n"
        "    window_start,\n"
        "    exchange,\n"
        "    symbol,\n"
        "    argMinMerge(open) AS open,\n"
        "    maxMerge(high) AS high,\n"
        "    minMerge(low) AS low,\n"
        "    argMaxMerge(close) AS close,\n"
        "    sumMerge(volume) AS volume,\n"
        "    countMerge(trade_count) AS trade_count\n"
        f"FROM {db}.gold_ohlcv_{iv}_agg\nGROUP BY window_start, exchange, symbol"
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
    """``config/clickhouse/schema.sql``: the statements of :func:`schema_statements` as one file."""
    header = (
        "-- The market-data demo schema (database k2): bronze trades per exchange, silver_trades\n"
        "-- filled by materialized views, gold OHLCV bars (AggregatingMergeTree + finalizing views).\n"
        "-- Generated from offloader.demo.schema_statements(); tests/test_demo.py keeps them equal.\n"
        "-- Regenerate: python -c 'from offloader import demo; print(demo.schema_sql(), end=\"\")' > config/clickhouse/schema.sql\n"
    )
    return header + "".join(f"\n{statement};\n" for statement in schema_statements())


def ensure_schema(engine: Engine) -> None:
    """Create the demo database, tables and views that do not exist yet."""
    for statement in schema_statements():
        engine.command(statement)


def is_empty(engine: Engine) -> bool:
    """True when no bronze table holds a row (including when the schema does not exist)."""
    found = engine.rows(
        "SELECT count(), sum(total_rows) FROM system.tables WHERE database = {db:String} AND name IN {names:Array(String)}",
        {"db": DATABASE, "names": [f"bronze_trades_{e}" for e in EXCHANGES]},
    )
    return not found or not found[0][1]


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
# Generation
#
# One INSERT … SELECT per exchange and chunk. Every draw is a bit field of a cityHash64 over
# (seed, salt, event[, fill]); a standard normal is Box-Muller over the two 32-bit halves.
# A taker order ("event") sweeps `fills` price levels (Pareto, heavy-tailed) at one exchange
# millisecond, and its fills arrive together, so they share one ingestion microsecond. Events
# are laid out over [lo, lo + span) in proportion to the rows before them, so the chunk holds
# exactly {n} rows whose sequence numbers follow time. The mid price is one geometric random
# walk per symbol on a step grid over the whole seed: it hashes only the seed, so every INSERT
# of a seed sees the same walk and the three venues track each other (each adds its basis, its
# half spread and the price impact of the sweep).
#
#   h1 (event): bits 32-63 fills, 0-23 symbol, 24 side, 25-34 whale flag, 35-44 stall flag
#   h2 (event): latency (normal);  h3 (fill): notional (normal);  h4 (fill): whale size, maker id

_NORMAL = "(sqrt(-2 * log((bitShiftRight({h}, 32) + 1) / 4294967296.)) * cos(2 * pi() * bitAnd({h}, 0xFFFFFFFF) / 4294967296.))"

_GENERATE = """
WITH
    {n:UInt64} AS n_,
    walk AS
    (
        SELECT s, k, start_ * exp(sum(z) OVER (PARTITION BY s ORDER BY k ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS mid
        FROM
        (
            SELECT
                intDiv(number, {steps:UInt64}) + 1 AS s,
                number % {steps:UInt64} AS k,
                {start:Array(Float64)}[s] AS start_,
                if(k = 0, 0., {vol:Array(Float64)}[s] * sqrt({step_s:Float64}) * NORMAL_WALK) AS z
            FROM numbers(length({start:Array(Float64)}) * {steps:UInt64})
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
            arrayFirstIndex(c -> c > bitAnd(h1, 0xFFFFFF) / 16777216., {weights:Array(Float64)}) AS s,
            toUInt64(least(greatest(intDiv(event_us - {walk_lo_us:Int64}, {step_us:Int64}), 0), {steps:UInt64} - 1)) AS k,
            if(bitTest(h1, 24), 'sell', 'buy') AS side_,
            toInt64(least(200 + 8000 * exp(0.8 * NORMAL_H2) * if(bitAnd(bitShiftRight(h1, 35), 1023) < 3, 30, 1), {max_latency_us:Float64})) AS latency_us,
            least(exchange_ms * 1000 + latency_us, {now_us:Int64}) AS ingestion_us,
            intExp10({tick_dp:Array(UInt8)}[s]) AS tick_div,
            intExp10({lot_dp:Array(UInt8)}[s]) AS lot_div,
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
    {symbols:Array(String)}[s] AS symbol,
    side_ AS side,
    toDecimal64(greatest(round(px * tick_div), 1), 8) / tick_div AS price,
    toDecimal64(greatest(round(notional / px * lot_div), 1), 8) / lot_div AS quantity,
    side_ = 'sell' AS is_buyer_maker,
    EXTRA_COLUMNS
FROM priced
""".replace("NORMAL_WALK", _NORMAL.format(h="cityHash64({seed:UInt64}, 0, s, k)")).replace(
    "NORMAL_H2", _NORMAL.format(h="h2")).replace("NORMAL_H3", _NORMAL.format(h="h3"))  # fmt: skip


def _insert_sql(exchange: str) -> str:
    """The INSERT … SELECT of one chunk into one bronze table (text built from module constants)."""
    spec = _EXCHANGES[exchange]
    columns = _COMMON_NAMES + ", " + ", ".join(line.strip().split(" ", 1)[0] for line in spec.extra_columns.split(",\n"))
    body = _GENERATE.replace("TRADE_ID", _TRADE_IDS[exchange]).replace("EXTRA_COLUMNS", spec.extra_select)
    return f"INSERT INTO {bronze_table(exchange)} ({columns})\n{body}"


def _split(total: int, shares: list[float]) -> list[int]:
    """``total`` split by ``shares`` into integers that sum exactly to ``total`` (rest to the first)."""
    parts = [int(total * share) for share in shares]
    parts[0] += total - sum(parts)
    return parts


@dataclass(frozen=True)
class _Tail:
    """Where the existing data end: server now, last ingestion, next sequence numbers, last prices."""

    now_us: int
    last_ingestion_us: int | None
    next_seq: dict[str, int]
    last_price: dict[str, float]


def _tail(engine: Engine) -> _Tail:
    now_us = int(engine.rows("SELECT toUnixTimestamp64Micro(now64(6, 'UTC'))")[0][0])
    last_ingestion: int | None = None
    next_seq: dict[str, int] = {}
    for exchange in EXCHANGES:
        # max(sequence_number) lies within MAX_LATENCY of the newest ingestion timestamp: read
        # only that end of the table (primary key), not the whole column.
        found = engine.rows(
            f"WITH (SELECT max(ingestion_timestamp) FROM {bronze_table(exchange)}) AS top\n"
            f"SELECT toUnixTimestamp64Micro(top), max(sequence_number), count() FROM {bronze_table(exchange)}\n"
            "WHERE ingestion_timestamp >= top - INTERVAL 1 MINUTE"
        )
        top, max_seq, count = found[0]
        if count:
            last_ingestion = max(last_ingestion or top, top)
            next_seq[exchange] = int(max_seq) + 1
        else:
            next_seq[exchange] = 1
    closes = engine.rows(
        f"SELECT symbol, toFloat64(argMax(close, window_start)) FROM {DATABASE}.gold_ohlcv_1d\n"
        "WHERE exchange = {exchange:String} GROUP BY symbol",
        {"exchange": EXCHANGES[0]},
    )
    return _Tail(now_us, last_ingestion, next_seq, {str(symbol): float(price) for symbol, price in closes})


def _generate(
    engine: Engine,
    rows: int,
    span_s: float,
    seed: int | None,
    progress: Callable[[int, int], None] | None,
    chunk_rows: int = CHUNK_ROWS,
) -> int:
    """Append ``rows`` bronze trades spread over the last ``span_s`` seconds (after existing rows)."""
    if rows <= 0:
        return 0
    tail = _tail(engine)
    seed = secrets.randbits(63) if seed is None else seed
    end_us = tail.now_us - 1000
    lo_us = tail.now_us - int(span_s * 1e6)
    if tail.last_ingestion_us is not None:
        lo_us = max(lo_us, (tail.last_ingestion_us // 1000 + 1) * 1000)
    span_us = end_us - lo_us
    if span_us < 1000:  # the server clock has not moved past the newest rows yet
        return 0
    step_us = max(1_000_000, math.ceil(span_us / 50_000))
    steps = span_us // step_us + 1
    start = [tail.last_price.get(s.name, s.price) for s in SYMBOLS]
    cum, weights = 0.0, []
    for s in SYMBOLS:
        cum += s.weight
        weights.append(cum)
    weights[-1] = 1.0
    common: dict[str, Any] = {
        "seed": seed,
        "weights": weights,
        "symbols": [s.name for s in SYMBOLS],
        "start": start,
        "vol": [s.vol for s in SYMBOLS],
        "tick_dp": [s.tick_dp for s in SYMBOLS],
        "lot_dp": [s.lot_dp for s in SYMBOLS],
        "step_s": step_us / 1e6,
        "step_us": step_us,
        "steps": steps,
        "walk_lo_us": lo_us,
        "now_us": tail.now_us,
        "max_latency_us": float(MAX_LATENCY_US),
        "alpha": FILLS_ALPHA,
    }
    chunks = max(1, math.ceil(rows / chunk_rows))
    per_chunk = _split(rows, [1 / chunks] * chunks)
    next_seq = dict(tail.next_seq)
    done = 0
    for c, chunk in enumerate(per_chunk):
        c_lo = lo_us + span_us * c // chunks
        c_hi = lo_us + span_us * (c + 1) // chunks
        for x, (exchange, n) in enumerate(zip(EXCHANGES, _split(chunk, [_EXCHANGES[e].share for e in EXCHANGES]), strict=True)):
            if n == 0:
                continue
            spec = _EXCHANGES[exchange]
            params = common | {
                "salt": c * len(EXCHANGES) + x + 1,
                "n": n,
                "max_fills": min(MAX_FILLS, max(20, n // 50)),
                "seq0": next_seq[exchange],
                "lo_us": c_lo,
                "span_us": c_hi - c_lo,
                "basis": spec.basis,
                "half_spread": spec.half_spread,
            }
            engine.command(_insert_sql(exchange), params)
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
    """Append ``rows`` bronze trades (silver and gold follow) over the last ``hours``; return ``rows``.

    Existing data are kept: the new trades start after the newest ingestion timestamp (so a
    second seed right after the first packs its rows into the time since then) and continue
    each table's sequence numbers and the last closing prices. ``progress(done, total)`` is
    called after each chunk of :data:`CHUNK_ROWS` rows. ``seed`` makes the draws reproducible.
    """
    if rows < 0:
        raise ValueError(f"rows = {rows}: expected a non-negative number of rows")
    if not hours > 0:
        raise ValueError(f"hours = {hours}: expected a positive number of hours")
    return _generate(engine, rows, hours * 3600.0, seed, progress)


def live_batch(engine: Engine, rows: int = 200) -> int:
    """Append a small burst of trades from the last second (server clock); return the rows added."""
    if rows < 0:
        raise ValueError(f"rows = {rows}: expected a non-negative number of rows")
    return _generate(engine, rows, 1.0, None, None)

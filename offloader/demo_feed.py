"""The market-data demo's generators: the seed of history, and the live feed.

The trades are generated inside ClickHouse (``numbers()``, hashes, a window function, a join),
so millions of rows never pass through Python and the same code fills a remote server. The
schema they go into, and the model they follow, are described in ``demo``. :func:`seed`
always appends after the newest trade; :func:`live_batch` adds a small batch at the server's
now, the way a live feed does.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from offloader.demo import (
    CHUNK_ROWS,
    COMMON_NAMES,
    DATABASE,
    EXCHANGES,
    FILLS_ALPHA,
    MAX_FILLS,
    MAX_LATENCY_US,
    SYMBOLS,
    VENUES,
    Engine,
    bronze_table,
    listed,
)

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
    columns = ", ".join([COMMON_NAMES, *(name for name, _, _ in venue.extra)])
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
        "symbols": listed(s.name for s in SYMBOLS),
        "weights": listed(weights),
        "start": listed(tail.last_price.get(s.name, s.price) for s in SYMBOLS),
        "vol": listed(s.vol for s in SYMBOLS),
        "tick_dp": listed(s.tick_dp for s in SYMBOLS),
        "lot_dp": listed(s.lot_dp for s in SYMBOLS),
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

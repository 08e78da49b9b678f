"""Consistent cuts: every table of a cycle stops at one cut, and `snapshots --as-of` finds it.

The demo's bronze tables, silver (filled from them by materialized views) and the 1-minute
gold bars, over HTTP, with a live feed inserting all along. At cuts picked at random, the
snapshots `snapshots --as-of` names agree with one another as the source defines them:
silver is the union of the bronzes up to the cut, and the gold bars closed before the cut
are those computed from that silver. A cycle killed between its commits leaves a cut that
the command must not pick.
"""

from __future__ import annotations

import json
import random
import threading
from datetime import timedelta
from typing import Any

from endpoint import Endpoint
from helpers import Workspace

from offloader import demo, demo_feed
from offloader.clickhouse import HttpEngine
from offloader.config import SourceConfig
from offloader.cursor import format_time, parse_time

BRONZE = [t for t in demo.table_configs() if t["layer"] == "bronze"]
SILVER = next(t for t in demo.table_configs() if t["name"] == "silver_trades")
GOLD = next(t for t in demo.table_configs() if t["name"] == "gold_ohlcv_1m")
ROW = "epoch_us(exchange_timestamp), epoch_us(ingestion_timestamp), sequence_number, trade_id, symbol, price, quantity"
BAR_LATE = 60 + demo.MAX_LATENCY_US / 1e6  # a 1m bar is closed this long after its start: its last trade is in
ORDER = "bitOr(bitShiftLeft(toUInt128(toUnixTimestamp64Milli(exchange_timestamp)), 64), sequence_number)"


class Feed(threading.Thread):
    """Live trades over HTTP, a small burst every 0.1 s, until stopped."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.engine = HttpEngine(SourceConfig(dsn=dsn))
        self.halt = threading.Event()
        self.rows = 0

    def run(self) -> None:
        while not self.halt.wait(0.1):
            self.rows += demo_feed.live_batch(self.engine, 60)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        self.engine.close()


def as_of(ws: Workspace, moment: str) -> dict[str, Any]:
    done = ws.cli("snapshots", "--as-of", moment, "--json")
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr
    return dict(json.loads(done.stdout))


def current_cut(ws: Workspace, table: dict[str, Any]) -> str:
    return str(ws.iceberg_table(table["target"]).current_snapshot().summary.additional_properties["offloader.cut"])


def duck(con: Any, query: str, columns: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(r) for r in con.execute(f"SELECT {columns} FROM ({query})").fetchall())


def check_agreement(ws: Workspace, endpoint: Endpoint, answer: dict[str, Any]) -> None:
    """At the answer's cut: each bronze and silver equal the source up to the cut; silver is the
    union of the bronzes; the gold bars closed before the cut are those of that silver."""
    cut = answer["cut"]
    tables = {t["name"]: t for t in answer["tables"]}
    assert all(t["snapshot_id"] is not None for t in tables.values()), answer
    assert all(parse_time(t["complete_to"]) <= parse_time(cut) for t in tables.values()), answer
    con = ws.storage.duckdb()
    bronze_rows = []
    for table in BRONZE:
        exchange = table["name"].removeprefix("bronze_trades_")
        rows = duck(con, tables[table["name"]]["queries"]["duckdb"], f"'{exchange}', {ROW}")
        source = endpoint.rows(f"SELECT count() FROM {table['source']} WHERE ingestion_timestamp <= '{cut}'")[0][0]
        assert len(rows) == source, (table["name"], cut)
        bronze_rows += rows
    silver = duck(con, tables["silver_trades"]["queries"]["duckdb"], f"exchange, {ROW}")
    con.close()
    assert silver == sorted(bronze_rows), f"silver and the bronzes disagree at {cut}"
    keys = endpoint.rows(f"SELECT exchange, sequence_number FROM k2.silver_trades WHERE ingestion_timestamp <= '{cut}'")
    assert sorted((str(e), int(s)) for e, s in keys) == sorted((r[0], int(r[3])) for r in silver)

    closed = format_time(parse_time(cut) - timedelta(seconds=BAR_LATE))
    bar = "toUnixTimestamp(window_start), exchange, symbol, toString(open), toString(high), toString(low), toString(close), toString(volume), toUInt64(trade_count)"
    gold = endpoint.rows(
        f"SELECT {bar} FROM ({tables['gold_ohlcv_1m']['queries']['clickhouse']}) WHERE window_start <= toDateTime64('{closed}', 6, 'UTC') ORDER BY 1, 2, 3"
    )
    computed = endpoint.rows(
        f"SELECT {bar} FROM (SELECT toDateTime(toStartOfInterval(exchange_timestamp, INTERVAL 1 MINUTE), 'UTC') AS window_start,"
        f" exchange, symbol, argMin(price, {ORDER}) AS open, max(price) AS high, min(price) AS low,"
        f" argMax(price, {ORDER}) AS close, sum(quantity) AS volume, count() AS trade_count"
        f" FROM ({tables['silver_trades']['queries']['clickhouse']}) GROUP BY window_start, exchange, symbol)"
        f" WHERE window_start <= toDateTime64('{closed}', 6, 'UTC') ORDER BY 1, 2, 3"
    )
    assert gold, f"no closed bar before {closed}"
    assert gold == computed, f"the gold bars closed before {cut} are not those of silver at the cut"


def test_cuts_agree_across_bronze_silver_and_gold_under_a_live_feed(ws: Workspace, endpoint: Endpoint) -> None:
    """Six cycles under a live feed, one SIGKILLed between its commits: every table of a cycle
    carries the cycle's cut; at random times the snapshots `snapshots --as-of` names agree with
    one another and with the source, and the killed cycle's cut is never the answer."""
    demo.ensure_schema(ws.engine)
    demo_feed.seed(ws.engine, 6000, hours=0.25, seed=7)
    ws.source.update(safety_lag="2s", max_window="10m")  # the feed writes into the last second
    ws.tables = [*BRONZE, SILVER, {**GOLD, "depends_on": ["silver_trades"]}]
    endpoint.start()
    feed = Feed(endpoint.dsn)
    feed.start()
    killed_cut = None
    try:
        for cycle in range(6):
            if cycle == 3:  # killed after two of its commits: some tables reached its cut, others not
                died = ws.run_once(kill_at="after_commit:2")
                assert died.returncode == -9, died.stdout + died.stderr
                killed_cut = max((current_cut(ws, t) for t in (*BRONZE, SILVER, GOLD)), key=parse_time)
                stale = as_of(ws, format_time(parse_time("2100-01-01 00:00:00")))
                assert stale["cut"] is not None and parse_time(stale["cut"]) < parse_time(killed_cut), (stale, killed_cut)
                check_agreement(ws, endpoint, stale)
                continue
            done = ws.run_once()
            assert done.returncode == 0, done.stdout + done.stderr
    finally:
        feed.stop()
    assert feed.rows > 0

    summaries = [
        s.summary.additional_properties
        for t in (*BRONZE, SILVER, GOLD)
        for s in ws.iceberg_table(t["target"]).snapshots()
        if s.summary and "offloader.cut" in s.summary.additional_properties
    ]
    cuts = sorted({s["offloader.cut"] for s in summaries}, key=parse_time)
    assert len(cuts) >= 5, cuts  # one per cycle
    frozen = [
        s for s in ws.iceberg_table(GOLD["target"]).snapshots() if "offloader.frozen-cut" in s.summary.additional_properties
    ]
    assert frozen, "the replace-mode table records its frozen cut"

    rng = random.Random(14)  # noqa: S311 - picks test times, not secrets
    lo, hi = parse_time(cuts[0]), parse_time(cuts[-1]) + timedelta(seconds=2)
    moments = [cuts[-1], *(format_time(lo + (hi - lo) * rng.random()) for _ in range(4))]
    for moment in moments:
        answer = as_of(ws, moment)
        assert answer["consistent"] and parse_time(answer["cut"]) <= parse_time(moment), answer
        assert answer["cut"] in cuts, (answer["cut"], cuts)
        assert answer["cut"] != killed_cut
        check_agreement(ws, endpoint, answer)

    before = as_of(ws, format_time(lo - timedelta(minutes=30)))
    assert before["cut"] is None and not before["consistent"]
    text = ws.cli("snapshots", "--as-of", cuts[-1])
    assert text.returncode == 0, text.stderr
    assert f"cut {cuts[-1]}" in text.stdout and "VERSION AS OF" in text.stdout and "snapshot_from_id" in text.stdout
    bad = ws.cli("snapshots", "--as-of", "noon")
    assert bad.returncode == 2 and "--as-of 'noon' is not a time" in bad.stderr and "Traceback" not in bad.stderr

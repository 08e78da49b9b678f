"""Benchmark: the cost of ``corrections = "replacing"``, rows rewritten per corrected row.

A ReplacingMergeTree of ``--rows`` trades over ``--days`` days (one row every few tenths of a
second, ingestion time = exchange time), offloaded in windows of ``--max-window``, so the
cold tier holds one file per window and day partition, as a table between two compactions
does. Then, for each correction pattern, ``--corrections`` new versions (or deletes) are
inserted with new ingestion times and one cycle takes them. The figures come from the
snapshot summaries the cycle wrote (``offloader.rewritten-rows``, ``offloader.removed-rows``)
and from the snapshots' replaced files:

- ``recent``: the newest trades corrected (a busted trade minutes after the fact);
- ``replayed-hour``: every trade of one hour in the middle of the history sent again with a
  new version (a replayed feed);
- ``scattered``: trades drawn at random over the whole history; the key ``(symbol, trade_id)``
  is not the partition's column, but trade ids grow with time, so file bounds prune;
- ``scattered-delete``: the same, as deletes (``is_deleted = 1``);
- ``partition-key``: scattered, on a table whose key starts with the partition's column
  ``exchange_timestamp`` (partition pruning);
- ``uncorrelated``: scattered, on a table keyed by a random order reference: no file's
  bounds exclude a key, every file holding one of them is read, and each one touched is rewritten.

Usage: python bench/bench_replacing.py [--rows 300000] [--days 3] [--corrections 100]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DDL = """
CREATE TABLE k2.{name} (
    symbol LowCardinality(String), trade_id UInt64, order_ref UInt64,
    exchange_timestamp DateTime64(3, 'UTC'), ingestion_timestamp DateTime64(6, 'UTC'),
    version UInt64, is_deleted UInt8, price Decimal(18, 8), quantity Decimal(18, 8)
) ENGINE = ReplacingMergeTree(version, is_deleted) ORDER BY ({key})
"""
TABLES = {  # table -> its sorting key
    "by_trade": "symbol, trade_id",
    "by_time": "exchange_timestamp, symbol, trade_id",
    "by_ref": "symbol, order_ref",
}
PATTERNS = {  # pattern -> (table, which trades, deleted)
    "recent": ("by_trade", "recent", 0),
    "replayed-hour": ("by_trade", "hour", 0),
    "scattered": ("by_trade", "scattered", 0),
    "scattered-delete": ("by_trade", "scattered", 1),
    "partition-key": ("by_time", "scattered", 0),
    "uncorrelated": ("by_ref", "scattered", 0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--corrections", type=int, default=100)
    parser.add_argument("--max-window", default="1h")
    parser.add_argument("--out")
    args = parser.parse_args()

    from offloader.app import App
    from offloader.config_loader import load_config
    from offloader.log import configure

    configure("warning")
    work = Path(tempfile.mkdtemp(prefix="offloader-replacing-"))
    raw: dict[str, Any] = {
        "source": {"dsn": f"chdb://{work / 'clickhouse'}", "safety_lag": "0s", "max_window": args.max_window},
        "catalog": {
            "name": "cold",
            "type": "sql",
            "uri": f"sqlite:///{work / 'catalog.db'}",
            "warehouse": f"file://{work / 'wh'}",
        },
        "state": {"dsn": f"sqlite:///{work / 'state.db'}"},
        "tables": [
            {
                "name": name,
                "source": f"k2.{name}",
                "target": f"cold.{name}",
                "layer": "bronze",
                "cursor": ["ingestion_timestamp", "trade_id"],
                "partition_by": ["day(exchange_timestamp)"],
                "corrections": "replacing",
                "version_column": "version",
                "deleted_column": "is_deleted",
            }  # fmt: skip
            for name in TABLES
        ]
        + [  # the same rows offloaded as plain appends: the baseline of a window's cost
            {
                "name": "appended",
                "source": "k2.by_trade",
                "target": "cold.appended",
                "layer": "bronze",
                "cursor": ["ingestion_timestamp", "trade_id"],
                "partition_by": ["day(exchange_timestamp)"],
            }  # fmt: skip
        ],
    }
    app = App(load_config(None, env={}, default=lambda _: raw))
    engine = app.engine
    step_us = args.days * 86_400_000_000 // args.rows
    engine.command("CREATE DATABASE IF NOT EXISTS k2")
    for name, key in TABLES.items():
        engine.command(DDL.format(name=name, key=key))
        engine.command(
            f"INSERT INTO k2.{name} SELECT ['BTC-USDT', 'ETH-USDT', 'SOL-USDT'][number % 3 + 1], number, "
            "cityHash64(number) % 1000000000, toDateTime64('2026-01-01', 3, 'UTC') + toIntervalMicrosecond(number * {s:UInt64}), "
            "toDateTime64('2026-01-01', 6, 'UTC') + toIntervalMicrosecond(number * {s:UInt64}), 1, 0, "
            "toDecimal64(30000 + number % 1000, 8), toDecimal64(1, 8) FROM numbers({n:UInt64})",
            {"s": step_us, "n": args.rows},
        )
    base = {}
    for table in app.config.tables:
        started = time.perf_counter()
        first = app.run_table(table)
        base[table.name] = {"seconds": round(time.perf_counter() - started, 2), "windows": first.windows}
    print("first load:", json.dumps(base))
    rng = random.Random(20261207)  # noqa: S311 - benchmark data
    later = args.days * 86_400_000_000 + 3_600_000_000  # corrections arrive an hour after the last trade
    results = []
    for pattern, (name, which, deleted) in PATTERNS.items():
        per_hour = args.rows // (args.days * 24)
        if which == "recent":
            ids = list(range(args.rows - args.corrections, args.rows))
        elif which == "hour":
            ids = list(range(args.rows // 2, args.rows // 2 + per_hour))
        else:
            ids = rng.sample(range(args.rows), args.corrections)
        engine.command(
            f"INSERT INTO k2.{name} SELECT symbol, trade_id, order_ref, exchange_timestamp, "
            f"toDateTime64('2026-01-01', 6, 'UTC') + toIntervalMicrosecond({later} + trade_id % 1000), version + 1, "
            f"{deleted}, price + 1, quantity FROM k2.{name} FINAL WHERE trade_id IN {{ids:Array(UInt64)}}",
            {"ids": ids},
        )
        later += 3_600_000_000
        table = next(t for t in app.config.tables if t.name == name)
        sink = app.sink.load(table, writable=False)
        assert sink is not None
        before = {s.snapshot_id for s in sink.snapshots()}
        started = time.perf_counter()
        result = app.run_table(table)
        seconds = time.perf_counter() - started
        sink = app.sink.load(table, writable=False)
        assert sink is not None
        new = [s for s in sink.snapshots() if s.snapshot_id not in before]
        summaries = [s.summary.additional_properties for s in new]
        rewritten = sum(int(p.get("offloader.rewritten-rows", 0)) for p in summaries)
        removed = sum(int(p.get("offloader.removed-rows", 0)) for p in summaries)
        files = sum(int(p.get("deleted-data-files", 0)) for p in summaries)
        scanned = sum(int(p.get("offloader.scanned-files", 0)) for p in summaries)
        live = len(sink.data_files("ingestion_timestamp"))
        row = {
            "pattern": pattern, "corrected": len(ids), "removed": removed, "rewritten": rewritten,
            "files_read": scanned, "files_rewritten": files, "live_files_after": live, "rewritten_per_corrected": round(rewritten / len(ids), 2),
            "seconds": round(seconds, 2), "outcome": result.outcome,
        }  # fmt: skip
        results.append(row)
        print(json.dumps(row))
    if args.out:
        Path(args.out).write_text(json.dumps({"first_load": base, "patterns": results}, indent=2) + "\n")
    app.close()


if __name__ == "__main__":
    main()

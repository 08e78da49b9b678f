"""Benchmark: the cost of a window as a table's history grows.

Commits many small windows into ONE table, in one process, and reports how the cost of a
window moves with the number of commits behind it, and what drives it:

- the seconds of each window (from one commit to the next, the source queries, the write,
  the verification, the commit and the mirror update included), as the median of each
  segment of windows, and the 10th window against the last;
- after each segment: the size of the current metadata file, the snapshots it holds, the
  manifests in the current snapshot, the metadata files in the table's folder, and the time
  to load the table from the catalog.

Rows go into an embedded ClickHouse (chDB) a segment at a time, ``--rows`` per window, one
window per ``--window`` seconds of source time; each segment is then one offload cycle
(``App.run_cycle``) that commits one snapshot per window. With ``--retain W`` the snapshots
older than the last W windows are expired after every segment (what the daily maintenance
does to a table committed every 15 minutes: 7 days keep 672), so the history is bounded the
way it is in production; without it every snapshot is kept.

Usage: python bench/bench_history.py [--windows 10000] [--segment 1000] [--retain 0]
                                      [--catalog postgres|sqlite] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DDL = """
CREATE TABLE IF NOT EXISTS k2.trades (
    ts DateTime64(6, 'UTC'), seq UInt64, symbol LowCardinality(String), price Float64, qty Float64
) ENGINE = MergeTree ORDER BY (ts, seq)
"""
SEED = """
INSERT INTO k2.trades
SELECT toDateTime64('2025-01-01 00:00:00', 6, 'UTC')
         + toIntervalMicrosecond(intDiv(number, {rows:UInt64}) * {step:UInt64} + number % {rows:UInt64}),
       number, ['BTC-USDT', 'ETH-USDT', 'SOL-USDT'][number % 3 + 1], 30000 + number % 1000, (number % 7) / 10
FROM numbers({first:UInt64}, {n:UInt64})
"""


class Clock:
    """Records the moment of every committed window (the service's observer hook)."""

    def __init__(self) -> None:
        from offloader.results import Observer

        outer = self

        class Timing(Observer):
            def window_committed(self, table: Any, result: Any) -> None:
                outer.moments.append(time.perf_counter())

        self.moments: list[float] = []
        self.observer = Timing()


def write_config(work: Path, catalog: str, pg: str, window: float, max_window_rows: int | None, extra: str = "") -> Path:
    if catalog == "postgres":
        from bench.bench_offload import _reset_pg

        catalog_uri = state_dsn = _reset_pg(pg)
    else:
        catalog_uri, state_dsn = f"sqlite:///{work}/catalog.db", f"sqlite:///{work}/state.db"
    rows_line = f"max_window_rows = {max_window_rows}\n" if max_window_rows else ""
    config = work / "offloader.toml"
    config.write_text(
        f'[source]\ndsn = "chdb://{work / "clickhouse"}"\nsafety_lag = "0s"\nmax_window = "{window - 0.001}s"\n'
        f'[catalog]\nname = "cold"\ntype = "sql"\nuri = "{catalog_uri}"\nwarehouse = "file://{work / "warehouse"}"\n'
        f'[state]\ndsn = "{state_dsn}"\n'
        '[[tables]]\nname = "trades"\nsource = "k2.trades"\ntarget = "cold.trades"\nlayer = "bronze"\n'
        f'cursor = ["ts", "seq"]\npartition_by = ["day(ts)"]\n{rows_line}{extra}'
    )
    return config


def prepare(prefix: str, catalog: str, pg: str, window: float, extra: str = "") -> Path:
    """A work directory with an embedded ClickHouse holding an empty k2.trades; its config."""
    import chdb

    from offloader.log import configure

    configure("warning")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    conn = chdb.connect(str(work / "clickhouse"))
    conn.query("CREATE DATABASE IF NOT EXISTS k2")
    conn.query(DDL)
    conn.close()
    return write_config(work, catalog, pg, window, None, extra)


def seed_windows(app: Any, first: int, windows: int, rows: int, window: float) -> None:
    """Insert ``windows`` windows of ``rows`` rows each, from window number ``first``."""
    app.engine.rows(
        SEED.replace("{rows:UInt64}", str(rows))
        .replace("{step:UInt64}", str(int(window * 1e6)))
        .replace("{first:UInt64}", str(first * rows))
        .replace("{n:UInt64}", str(windows * rows))
    )


def table_figures(app: Any, config: Any) -> dict[str, Any]:
    """What drives the cost of a commit: the metadata, the manifests, the time to load."""
    table_config = config.tables[0]
    from pyiceberg.table.metadata import TableMetadataUtil

    table = app.sink.catalog.load_table(table_config.target)
    location = table.metadata_location.removeprefix("file://").removeprefix("file:")
    started = time.perf_counter()
    TableMetadataUtil.parse_raw(Path(location).read_bytes())  # what any reader pays to load it
    load_seconds = time.perf_counter() - started
    folder = Path(location).parent
    snapshot = table.current_snapshot()
    manifests = len(snapshot.manifests(table.io)) if snapshot else 0
    return {
        "metadata_bytes": os.path.getsize(location),
        "snapshots": len(table.metadata.snapshots),
        "manifests": manifests,
        "metadata_files": sum(1 for p in folder.iterdir() if p.name.endswith(".metadata.json")),
        "load_seconds": round(load_seconds, 4),
    }


def expire(app: Any, config: Any, keep: int) -> None:
    """Expire every snapshot but the newest ``keep`` (the maintenance's expiry, by count)."""
    from dataclasses import replace

    table = app.sink.catalog.load_table(config.tables[0].target)
    snapshots = sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms)
    if len(snapshots) <= keep:
        return
    cutoff = snapshots[-keep].timestamp_ms / 1000
    from offloader.maintenance import Maintenance

    retained = replace(config, maintenance=replace(config.maintenance, retain=max(time.time() - cutoff, 0.001)))
    job = replace(app.job(config.tables[0]), config=retained)
    results = Maintenance(job).run(("expire_snapshots",))
    assert all(r.ok for r in results), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--segment", type=int, default=1_000, help="windows per cycle")
    parser.add_argument("--rows", type=int, default=5, help="rows per window")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of source time per window")
    parser.add_argument("--retain", type=int, default=0, help="expire all but the newest N snapshots after each cycle")
    parser.add_argument("--catalog", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out")
    args = parser.parse_args()

    from offloader.app import App
    from offloader.config_loader import load_config

    path = prepare("offloader-history-", args.catalog, args.pg, args.window)
    config = load_config(path, env={})
    clock = Clock()
    app = App(config)
    segments = []
    done = 0
    started = time.perf_counter()
    try:
        while done < args.windows:
            n = min(args.segment, args.windows - done)
            seed_windows(app, done, n, args.rows, args.window)
            before = len(clock.moments)
            (result,) = app.run_cycle(observer=clock.observer)
            assert result.outcome == "committed" and result.windows == n, result
            moments = clock.moments[before:]
            per_window = [b - a for a, b in zip(moments, moments[1:], strict=False)]
            done += n
            if args.retain:
                expire(app, config, args.retain)
            figures = table_figures(app, config)
            segment = {
                "windows": done,
                "median_window_seconds": round(statistics.median(per_window), 4) if per_window else None,
                **figures,
            }
            segments.append((segment, per_window))
            print(json.dumps(segment), file=sys.stderr, flush=True)
    finally:
        app.close()
    all_windows = [w for _, per in segments for w in per]
    first, last = statistics.median(all_windows[5:15]), statistics.median(all_windows[-10:])
    # Single windows are noisy, and a merge of manifests lands every hundred or so: the first
    # and last hundred windows, each a whole merge cycle, give the steadier ratio.
    first_100, last_100 = statistics.median(all_windows[5:105]), statistics.median(all_windows[-100:])
    rows_in_iceberg = App(config).sink.load(config.tables[0]).row_count()
    assert rows_in_iceberg == args.windows * args.rows, (rows_in_iceberg, args.windows * args.rows)
    results = {
        "windows": args.windows,
        "rows_per_window": args.rows,
        "retain": args.retain,
        "catalog": args.catalog,
        "window_10_seconds": round(first, 4),
        f"window_{args.windows}_seconds": round(last, 4),
        "last_over_10th": round(last / first, 2),
        "first_100_median_seconds": round(first_100, 4),
        "last_100_median_seconds": round(last_100, 4),
        "last_100_over_first_100": round(last_100 / first_100, 2),
        "total_seconds": round(time.perf_counter() - started, 1),
        "segments": [s for s, _ in segments],
    }
    out = Path(args.out or ROOT / "bench" / "results" / f"history-{args.windows}-{args.retain}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| windows | median s/window | metadata bytes | snapshots | manifests | metadata files | load s |")
    print("|---|---|---|---|---|---|---|")
    for s in results["segments"]:
        print(
            f"| {s['windows']:,} | {s['median_window_seconds']} | {s['metadata_bytes']:,} | {s['snapshots']:,} "
            f"| {s['manifests']:,} | {s['metadata_files']:,} | {s['load_seconds']} |"
        )
    print(f"\nwindow 10: {first:.4f} s; window {args.windows}: {last:.4f} s; ratio {last / first:.2f}")
    print(f"first 100 windows: {first_100:.4f} s; last 100: {last_100:.4f} s; ratio {last_100 / first_100:.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: the ten tables of the market-data set at steady state.

The embedded default's ten tables (bronze trades of three exchanges, the unified silver
trades, six OHLCV intervals), in one running process, as the service runs them:

1. ``--minutes`` of market data (default 15) at ``--rate`` trades per second per exchange
   (default 10,000) are generated in ClickHouse and taken in one cycle of all ten tables:
   what a service on a 15-minute schedule does every cycle at that load;
2. cycles that find nothing new, the median of five after that first one (the OHLCV tables
   are in replace mode: they re-take their open bars every cycle, as in production).

Usage: python bench/bench_tables.py [--minutes 15] [--rate 10000] [--catalog sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=10_000, help="trades per second per exchange")
    parser.add_argument("--catalog", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out")
    args = parser.parse_args()

    from offloader.app import App
    from offloader.config_loader import load_config
    from offloader.demo import EXCHANGES, embedded_default, ensure_schema
    from offloader.demo_feed import seed
    from offloader.log import configure

    configure("warning")
    work = Path(tempfile.mkdtemp(prefix="offloader-tables-"))
    raw = embedded_default(work)
    raw["source"]["safety_lag"] = "0s"
    if args.catalog == "postgres":
        from bench.bench_offload import _reset_pg

        raw["catalog"]["uri"] = raw["state"]["dsn"] = _reset_pg(args.pg)
    app = App(load_config(None, env={}, default=lambda _: raw))
    rows = int(args.rate * len(EXCHANGES) * args.minutes * 60)
    try:
        ensure_schema(app.engine)
        started = time.perf_counter()
        seed(app.engine, rows, hours=args.minutes / 60)
        seed_seconds = time.perf_counter() - started
        started = time.perf_counter()
        results = app.run_cycle()
        load_seconds = time.perf_counter() - started
        assert all(r.outcome == "committed" for r in results), [(r.table, r.outcome, r.error) for r in results]
        taken = sum(r.rows for r in results)
        idle = []
        for _ in range(6):
            started = time.perf_counter()
            again = app.run_cycle()
            idle.append(time.perf_counter() - started)
            assert all(r.outcome in ("nothing_new", "committed") for r in again), [(r.table, r.outcome) for r in again]
    finally:
        app.close()
    figures = {
        "tables": len(results),
        "minutes_of_data": args.minutes,
        "trades_per_second_per_exchange": args.rate,
        "trades_generated": rows,
        "seed_seconds": round(seed_seconds, 1),
        "rows_taken_all_tables": taken,
        "cycle_with_new_data_seconds": round(load_seconds, 2),
        "budget_used": f"{load_seconds / (args.minutes * 60):.1%}",
        "nothing_new_cycle_seconds_median": round(statistics.median(idle[1:]), 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "catalog": args.catalog,
    }
    out = Path(args.out or ROOT / "bench" / "results" / f"tables-{args.catalog}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print("| figure | value |\n|---|---|")
    for key, value in figures.items():
        print(f"| {key} | {value:,} |" if isinstance(value, int | float) else f"| {key} | {value} |")


if __name__ == "__main__":
    main()

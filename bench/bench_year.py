"""Benchmark: a simulated year of one table, committed every 15 minutes, maintained daily.

What the service does to a table in a year, compressed into one process: 35,040 cycles, each
committing one fifteen-minute window of ``--rows`` rows (the source rows are inserted just
before the cycle, so each cycle finds exactly one window), and after every 96 cycles (a
day of source time) the daily maintenance: compaction of the closed day, snapshot expiry and
orphan removal.

Time is compressed, so two age-based settings are emulated: expiry keeps the newest
``--retain`` snapshots (672 = the default 7 days of a table committed every 15 minutes),
and orphan files may be removed once a minute old.

It reports, per simulated month: the median seconds of a window (its cycle's seconds over
its windows; the whole cycle: lock, run record, source queries, write, verify, commit,
mirror; ``--cycle-windows 4`` runs hourly cycles of four windows, what a service on an
hourly cron does), the median seconds of the daily
maintenance, the metadata file's size, the snapshots it holds, the manifests of the current
snapshot, and the seconds to parse the metadata; at the end, the wall seconds of the
``offloader status``, ``check`` and ``maintain`` commands (a fresh process each, start-up
included), and that Iceberg holds every source row exactly once.

Usage: python bench/bench_year.py [--days 365] [--rows 3] [--retain 672] [--catalog postgres|sqlite]
Run it in parts with --days (a month is ``--days 30``); the figures of one run stand alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_history import expire, prepare, seed_windows, table_figures  # noqa: E402

WINDOWS_PER_DAY = 96
DAYS_PER_MONTH = 365 / 12


def maintain(app: Any, config: Any, keep: int) -> float:
    """The daily maintenance, expiry emulated by count; its seconds."""
    from offloader.maintenance import Maintenance

    started = time.perf_counter()
    results = Maintenance(app.job(config.tables[0])).run(("compact",))
    expire(app, config, keep)
    results += Maintenance(app.job(config.tables[0])).run(("remove_orphans",))
    assert all(r.ok for r in results), results
    return time.perf_counter() - started


def command_seconds(config_path: Path, *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "offloader", "--config", str(config_path), *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"offloader {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return round(seconds, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--rows", type=int, default=3, help="rows per fifteen-minute window")
    parser.add_argument("--retain", type=int, default=672, help="snapshots the daily expiry keeps")
    parser.add_argument(
        "--cycle-windows",
        type=int,
        choices=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 96],
        default=1,
        help="fifteen-minute windows per cycle: 1 is a service on */15, 4 an hourly one",
    )
    parser.add_argument("--catalog", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out")
    args = parser.parse_args()

    from offloader.app import App
    from offloader.config_loader import load_config

    config_path = prepare("offloader-year-", args.catalog, args.pg, 900.0, '[maintenance]\norphan_age = "1m"\n')
    config = load_config(config_path, env={})
    app = App(config)
    months: list[dict[str, Any]] = []
    cycles: list[float] = []
    maintenances: list[float] = []
    windows = args.days * WINDOWS_PER_DAY
    started = time.perf_counter()
    next_month = DAYS_PER_MONTH
    try:
        per = args.cycle_windows
        for n in range(per - 1, windows, per):
            seed_windows(app, n + 1 - per, per, args.rows, 900.0)
            began = time.perf_counter()
            (result,) = app.run_cycle()
            cycles.append((time.perf_counter() - began) / per)
            assert result.outcome == "committed" and result.windows == per, result
            if (n + 1) % WINDOWS_PER_DAY:
                continue
            maintenances.append(maintain(app, config, args.retain))
            day = (n + 1) // WINDOWS_PER_DAY
            if day >= next_month or day == args.days:
                next_month += DAYS_PER_MONTH
                month = {
                    "day": day,
                    "windows": n + 1,
                    "median_window_seconds": round(statistics.median(cycles[-WINDOWS_PER_DAY * 7 // per :]), 4),
                    "median_maintenance_seconds": round(statistics.median(maintenances[-7:]), 3),
                    **table_figures(app, config),
                }
                months.append(month)
                print(json.dumps(month), file=sys.stderr, flush=True)
    finally:
        app.close()
    total_seconds = time.perf_counter() - started
    at_end = {
        "status_seconds": command_seconds(config_path, "status"),
        "check_seconds": command_seconds(config_path, "check"),
        "maintain_seconds": command_seconds(config_path, "maintain"),
    }
    rows_in_iceberg = App(config).sink.load(config.tables[0]).row_count()
    assert rows_in_iceberg == windows * args.rows, (rows_in_iceberg, windows * args.rows)
    first_week, last_week = (
        statistics.median(cycles[: WINDOWS_PER_DAY * 7 // per]),
        statistics.median(cycles[-WINDOWS_PER_DAY * 7 // per :]),
    )
    results = {
        "days": args.days,
        "windows": windows,
        "rows_per_window": args.rows,
        "windows_per_cycle": args.cycle_windows,
        "retain": args.retain,
        "catalog": args.catalog,
        "first_week_median_window_seconds": round(first_week, 4),
        "last_week_median_window_seconds": round(last_week, 4),
        "last_over_first": round(last_week / first_week, 2),
        "total_seconds": round(total_seconds, 1),
        **at_end,
        "rows_in_iceberg": rows_in_iceberg,
        "months": months,
    }
    out = Path(args.out or ROOT / "bench" / "results" / f"year-{args.days}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| day | windows | median s/window | median s/maintenance | metadata bytes | snapshots | manifests | parse s |")
    print("|---|---|---|---|---|---|---|---|")
    for m in months:
        print(
            f"| {m['day']} | {m['windows']:,} | {m['median_window_seconds']} | {m['median_maintenance_seconds']} "
            f"| {m['metadata_bytes']:,} | {m['snapshots']:,} | {m['manifests']:,} | {m['load_seconds']} |"
        )
    print(
        f"\nfirst week {first_week:.4f} s/window, last week {last_week:.4f} s/window ({last_week / first_week:.2f}x); "
        f"status {at_end['status_seconds']} s, check {at_end['check_seconds']} s, maintain {at_end['maintain_seconds']} s; "
        f"{rows_in_iceberg:,} rows, each once; {total_seconds / 60:.1f} min in all"
    )


if __name__ == "__main__":
    main()

"""Benchmark: a history backfill with 1 and 2 workers, against `offloader once`, in one run.

The source is a remote ClickHouse (tests/chhttp.py serving a chDB directory over HTTP, in a
process of its own), so that worker processes can read it in parallel. Each round runs, in
turn and each into a fresh catalog and warehouse:

- `offloader once` (one process, windows of max_window);
- `offloader backfill --workers 1` (slices written in the driver's own process);
- `offloader backfill --workers 2` (two local worker processes);
- with --ray, `offloader backfill --ray local --workers 2` as well.

It reports each one's seconds and rows/s (medians over the rounds), the driver's peak RSS
(its VmHWM, sampled) and the workers' peak RSS (each worker reports its own with its
slices). On a 2-core machine the HTTP endpoint, the driver and the workers share both cores:
the ratio says how much of the work parallelises, not what a cluster would reach.

Usage: python bench/bench_backfill.py [--rows 5000000] [--hours 24] [--slice-rows 1000000] [--repeat 2] [--ray]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_offload import high_water_mark, http_endpoint, save, seed  # noqa: E402


def config_for(work: Path, name: str, port: int, hours: float) -> Path:
    """A config of its own (catalog, state, warehouse) for one measured command."""
    path = work / f"{name}.toml"
    path.write_text(
        f'[source]\ndsn = "http://default@127.0.0.1:{port}/k2"\nsafety_lag = "0s"\nmax_window = "{int(hours) + 1}h"\n'
        f'[catalog]\nname = "cold"\ntype = "sql"\nuri = "sqlite:///{work}/{name}-catalog.db"\nwarehouse = "file://{work}/{name}-wh"\n'
        f'[state]\ndsn = "sqlite:///{work}/{name}-state.db"\n'
        '[[tables]]\nname = "bronze_trades"\nsource = "k2.bronze_trades"\ntarget = "cold.bronze_trades"\n'
        'layer = "bronze"\ncursor = ["ingestion_timestamp", "sequence_number"]\npartition_by = ["day(exchange_timestamp)"]\n'
    )
    return path


def timed(config: Path, *args: str) -> tuple[float, int, str]:
    """An offloader command as a child: seconds, its peak RSS and its output (JSON log lines included)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "offloader", "--config", str(config), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=config.parent,
    )  # fmt: skip
    peak = 0
    while proc.poll() is None:
        peak = max(peak, high_water_mark(proc.pid))
        time.sleep(0.05)
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"offloader {' '.join(args)} failed ({proc.returncode}):\n{output[-3000:]}")
    return time.perf_counter() - started, peak, output


def worker_peak(output: str) -> int:
    for line in output.splitlines():
        if '"backfill_finished"' in line:
            return int(json.loads(line)["worker_peak_rss"])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--slice-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="also on a local Ray instance")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="offloader-bench-backfill-"))
    chdb_dir = work / "clickhouse"
    print(f"seeding {args.rows:,} rows ...", file=sys.stderr)
    seed(chdb_dir, args.rows, args.hours)
    slices = ("--slice-rows", str(args.slice_rows))
    runs: dict[str, tuple[str, ...]] = {
        "once": ("once",),
        "backfill_1_worker": ("backfill", "--table", "bronze_trades", "--workers", "1", *slices),
        "backfill_2_workers": ("backfill", "--table", "bronze_trades", "--workers", "2", *slices),
    }
    if args.ray:
        runs["backfill_ray_2_workers"] = ("backfill", "--table", "bronze_trades", "--ray", "local", "--workers", "2", *slices)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, int] = {}
    workers: dict[str, int] = {}
    with http_endpoint(chdb_dir) as port:
        for round_ in range(args.repeat):
            for name, command in runs.items():
                config = config_for(work, f"{name}-{round_}", port, args.hours)
                took, peak, output = timed(config, "--log-level", "info", *command)
                seconds[name].append(took)
                peaks[name] = max(peaks.get(name, 0), peak)
                workers[name] = max(workers.get(name, 0), worker_peak(output))
                print(f"round {round_ + 1} {name}: {took:.2f}s", file=sys.stderr)
    once = statistics.median(seconds["once"])
    results: dict[str, object] = {"rows": args.rows, "slice_rows": args.slice_rows, "rounds": args.repeat}
    for name in runs:
        median = statistics.median(seconds[name])
        results[name] = {
            "seconds": round(median, 3),
            "rows_per_second": round(args.rows / median),
            "speed_over_once": round(once / median, 2),
            "driver_peak_rss_mib": round(peaks[name] / 2**20, 1),
            "worker_peak_rss_mib": round(workers[name] / 2**20, 1) if workers[name] else None,
            "rounds_seconds": [round(s, 2) for s in seconds[name]],
        }
    save(results, f"backfill-{args.rows}.json")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

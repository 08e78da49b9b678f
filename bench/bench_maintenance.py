"""Benchmark: maintenance and the consistency check on a table built by many small cycles.

Seeds N bronze trade rows spanning H hours into an embedded ClickHouse (chDB), offloads them
in windows of `--window` (one small file per window and partition, as a 15-minute schedule
would leave them; partitioned by day of the cursor column), then measures, each in a
subprocess with its peak RSS:

- `offloader maintain` (compaction of every closed day, expiry, orphan removal): seconds,
  rows/s rewritten, files before and after;
- `offloader check` over the whole range (count and checksum per hour on both sides): seconds
  and rows/s compared;
- a second `offloader maintain` with nothing to do.

Usage: python bench/bench_maintenance.py [--rows 5000000] [--hours 72] [--window 15m] [--out FILE]
Prints a Markdown table and writes JSON (default bench/results/maintenance-<rows>.json).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_offload import seed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(config: Path, *args: str) -> tuple[float, int, str]:
    """Seconds, peak RSS (bytes) and stdout of one offloader command in a fresh process."""
    import os

    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "offloader", "--config", str(config), "--log-level", "warning", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=config.parent,
    )  # fmt: skip
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"offloader {' '.join(args)} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    return seconds, usage.ru_maxrss * 1024, stdout


def bronze_config(work: Path, window: str, extra: str = "") -> Path:
    """The config of one bronze table on ``work``'s chDB directory, SQLite catalog and state (``extra``: more table keys)."""
    config = work / "offloader.toml"
    config.write_text(
        f'[source]\ndsn = "chdb://{work / "clickhouse"}"\nsafety_lag = "0s"\nmax_window = "{window}"\n'
        f'[catalog]\nname = "cold"\ntype = "sql"\nuri = "sqlite:///{work}/catalog.db"\nwarehouse = "file://{work / "warehouse"}"\n'
        f'[state]\ndsn = "sqlite:///{work}/state.db"\n'
        '[[tables]]\nname = "bronze_trades"\nsource = "k2.bronze_trades"\ntarget = "cold.bronze_trades"\n'
        'layer = "bronze"\ncursor = ["ingestion_timestamp", "sequence_number"]\npartition_by = ["day(ingestion_timestamp)"]\n'
        + extra
    )
    return config


def seeded(doc: str | None, prefix: str, rows: int, hours: float, window: str) -> tuple[argparse.Namespace, Path]:
    """The arguments (--rows, --hours, --window, --out, --keep) and a work folder whose chDB holds the rows."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--hours", type=float, default=hours)
    parser.add_argument("--window", default=window)
    parser.add_argument("--out")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    print(f"seeding {args.rows:,} rows over {args.hours:g} h ...", file=sys.stderr)
    seed(work / "clickhouse", args.rows, args.hours)
    return args, work


def finish(args: argparse.Namespace, work: Path, name: str, results: dict[str, Any]) -> None:
    """Write ``results`` as JSON (``--out``, or bench/results/<name>-<rows>.json); remove the work folder unless ``--keep``."""
    out_path = Path(args.out) if args.out else ROOT / "bench" / "results" / f"{name}-{args.rows}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    args, work = seeded(__doc__, "offloader-bench-maint-", 5_000_000, 72.0, "15m")
    config = bronze_config(work, args.window)
    print("offloading in small windows ...", file=sys.stderr)
    offload_s, _, out = run(config, "once")
    maintain_s, maintain_rss, maintain_out = run(config, "maintain")
    compact = re.search(r"compact: ok: files (\d+) -> (\d+); compacted (\d+) files into (\d+)", maintain_out)
    assert compact, maintain_out
    idle_s, _, idle_out = run(config, "maintain")
    assert "compact: nothing to do" in idle_out, idle_out
    check_s, check_rss, check_out = run(config, "check")
    found = re.search(r"consistent: 0 of (\d+) buckets", check_out)
    assert found, check_out
    results = {
        "rows": args.rows, "hours": args.hours, "window": args.window, "offload_seconds": round(offload_s, 2),
        "files_before": int(compact.group(1)), "files_after": int(compact.group(2)),
        "files_compacted": int(compact.group(3)), "files_written": int(compact.group(4)),
        "maintain_seconds": round(maintain_s, 2), "maintain_peak_rss_mib": round(maintain_rss / 2**20),
        "maintain_idle_seconds": round(idle_s, 2), "check_seconds": round(check_s, 2),
        "check_rows_per_second": round(args.rows / check_s), "check_buckets": int(found.group(1)),
        "check_peak_rss_mib": round(check_rss / 2**20),
    }  # fmt: skip
    print("| figure | result |\n| --- | --- |")
    for key, value in results.items():
        print(f"| {key} | {value} |")
    finish(args, work, "maintenance", results)


if __name__ == "__main__":
    main()

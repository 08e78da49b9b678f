"""Benchmark: offloader on each storage set-up, beside ClickHouse's own writes to the same S3.

Seeds N bronze trade rows into an embedded ClickHouse (chDB), starts a real SeaweedFS (S3 and
an Iceberg REST catalog, as the test suite does) and measures in one run, one after another:

- `offloader once` (a subprocess, end to end) into local files + the SQL catalog (PostgreSQL),
  S3 + the SQL catalog, and S3 + the REST catalog: seconds, rows/s, peak RSS;
- `offloader check` of the same table on each (count and checksum per hour, both sides);
- ClickHouse's own Parquet export of the rows to the same S3 (``INSERT INTO FUNCTION s3``),
  and ClickHouse's own Iceberg insert (``ENGINE = IcebergS3``), the peers on the same path.

Usage: python bench/bench_storage.py [--rows 2000000] [--pg postgresql://postgres@127.0.0.1:5432/postgres]
Prints a Markdown table and writes JSON (default bench/results/storage-<rows>.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from bench_offload import _reset_pg, report, seed  # noqa: E402
from storage import ACCESS_KEY, SeaweedFS  # noqa: E402

TABLE = (
    '[[tables]]\nname = "bronze_trades"\nsource = "k2.bronze_trades"\ntarget = "cold.bronze_trades"\n'
    'layer = "bronze"\ncursor = ["ingestion_timestamp", "sequence_number"]\npartition_by = ["day(exchange_timestamp)"]\n'
)


# ClickHouse's Iceberg writer takes no LowCardinality, Enum or Bool columns: strings and Int32 instead
PEER_ROWS = (
    "SELECT exchange_timestamp, ingestion_timestamp, sequence_number, trade_id, CAST(symbol AS String) AS symbol, "
    "CAST(side AS String) AS side, price, quantity, toInt32(is_buyer_maker) AS is_buyer_maker FROM k2.bronze_trades"
)


def offloader(config: Path, env: dict[str, str], *args: str) -> tuple[float, float, str]:
    """One offloader command as a child process: seconds, its own peak RSS (MiB), stdout."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "offloader", "--config", str(config), "--log-level", "warning", *args],
            stdout=out, stderr=err, cwd=config.parent, env={**os.environ, **env},
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"offloader {' '.join(args)} failed ({status}):\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout


def catalog_section(setup: str, work: Path, pg: str, seaweed: SeaweedFS, prefix: str) -> str:
    if setup == "local":
        return f'type = "sql"\nuri = "{pg}"\nwarehouse = "file://{work / "warehouse"}"\n'
    s3 = f'"s3.endpoint" = "{seaweed.endpoint}"\n"s3.access-key-id" = "{ACCESS_KEY}"\n"s3.region" = "us-east-1"\n'
    if setup == "s3-sql":
        return f'type = "sql"\nuri = "{pg}"\nwarehouse = "s3://cold/{prefix}"\n' + s3
    return f'type = "rest"\nuri = "{seaweed.rest_uri}"\nwarehouse = "warehouse"\n' + s3


def clickhouse_peers(chdb_dir: Path, seaweed: SeaweedFS, prefix: str) -> dict[str, float | str]:
    """ClickHouse writing the same rows to the same S3: a Parquet export, and an Iceberg table insert."""
    import chdb

    conn = chdb.connect(str(chdb_dir))
    out: dict[str, float | str] = {}
    started = time.perf_counter()
    conn.query(
        f"INSERT INTO FUNCTION s3('{seaweed.endpoint}/cold/{prefix}-native/trades.parquet', '{ACCESS_KEY}', "
        f"'{seaweed.secret_key}', 'Parquet') SELECT * FROM k2.bronze_trades "
        "SETTINGS output_format_parquet_compression_method = 'zstd', s3_truncate_on_insert = 1"
    )
    out["clickhouse_parquet_to_s3_seconds"] = round(time.perf_counter() - started, 3)
    try:
        conn.query("SET allow_insert_into_iceberg = 1")
        conn.query(
            f"CREATE TABLE k2.iceberg_peer ENGINE = IcebergS3('{seaweed.endpoint}/cold/{prefix}-iceberg/', '{ACCESS_KEY}', "
            f"'{seaweed.secret_key}') PARTITION BY toRelativeDayNum(exchange_timestamp) "
            f"AS {PEER_ROWS} LIMIT 0"
        )
        started = time.perf_counter()
        conn.query(f"INSERT INTO k2.iceberg_peer {PEER_ROWS} SETTINGS allow_insert_into_iceberg = 1")
        out["clickhouse_iceberg_s3_insert_seconds"] = round(time.perf_counter() - started, 3)
    except Exception as exc:  # a ClickHouse that cannot write Iceberg to S3: say so, measure the rest
        out["clickhouse_iceberg_s3_insert_seconds"] = f"failed: {str(exc).splitlines()[0][:200]}"
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="offloader-bench-storage-"))
    seaweed = SeaweedFS(work / "seaweedfs").start()
    try:
        chdb_dir = work / "clickhouse"
        print(f"seeding {args.rows:,} rows ...", file=sys.stderr)
        seed(chdb_dir, args.rows, args.hours)
        results: dict[str, Any] = {"rows": args.rows, "cpu_count": os.cpu_count()}
        env = {
            "OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY": seaweed.secret_key,
            "OFFLOADER__CATALOG__CREDENTIAL": seaweed.credential,
        }
        for setup in ("local", "s3-sql", "s3-rest"):
            prefix = f"bench-{setup}-{int(time.time())}"
            pg = _reset_pg(args.pg)
            config = work / f"{setup}.toml"
            config.write_text(
                f'[source]\ndsn = "chdb://{chdb_dir}"\nsafety_lag = "0s"\nmax_window = "{int(args.hours) + 1}h"\n'
                f'[catalog]\nname = "cold"\n{catalog_section(setup, work, pg, seaweed, prefix)}'
                f'[state]\ndsn = "{pg}"\n{TABLE}'
            )
            if setup == "s3-rest":  # the REST catalog outlives each run: a namespace of its own
                config.write_text(
                    config.read_text().replace("cold.bronze_trades", f"cold_{prefix.replace('-', '_')}.bronze_trades")
                )
            print(f"{setup}: once ...", file=sys.stderr)
            secrets = env if setup.startswith("s3") else {}
            seconds, peak, _ = offloader(config, secrets, "once")
            check_s, _, check_out = offloader(config, secrets, "check")
            assert "consistent" in check_out, check_out
            results[f"{setup}_once_seconds"] = round(seconds, 3)
            results[f"{setup}_rows_per_second"] = round(args.rows / seconds)
            results[f"{setup}_peak_rss_mib"] = round(peak, 1)
            results[f"{setup}_check_seconds"] = round(check_s, 3)
        print("clickhouse peers ...", file=sys.stderr)
        results.update(clickhouse_peers(chdb_dir, seaweed, f"bench-peer-{int(time.time())}"))
        parquet = results["clickhouse_parquet_to_s3_seconds"]
        for setup in ("local", "s3-sql", "s3-rest"):
            results[f"{setup}_vs_clickhouse_parquet_to_s3"] = round(results[f"{setup}_once_seconds"] / parquet, 2)
    finally:
        seaweed.stop()
    report(results, Path(args.out or ROOT / "bench" / "results" / f"storage-{args.rows}.json"))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

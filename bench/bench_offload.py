"""Benchmark: `offloader once` against ClickHouse's own Parquet export of the same rows.

Seeds N bronze trade rows (9 columns, the shape of bronze_trades_*) into an embedded
ClickHouse (chDB) data directory, then measures in one run:

- ClickHouse's native Parquet export (zstd) of the rows: the practical limit on this machine;
- ClickHouse's own Iceberg insert (``ENGINE = IcebergLocal``) of the same rows, by day;
- offloader's first load as one cycle in a running process (measured like the two above);
- `offloader once` end to end (a subprocess: read, convert, write Parquet, verify, commit),
  its rows/s, MB/s and peak RSS;
- a second `offloader once` that finds nothing new (seconds per table);
- the same first load from a remote ClickHouse over HTTP (tests/chhttp.py): seconds and peak RSS;
- the bytes on disk of the Iceberg data files against the Arrow in-memory size of the rows.

Usage: python bench/bench_offload.py [--rows 10000000] [--repeat 3] [--catalog sqlite|postgres] [--out FILE]
Prints a Markdown table and writes JSON (default bench/results/offload-<rows>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DDL = """
CREATE TABLE IF NOT EXISTS k2.bronze_trades (
    exchange_timestamp DateTime64(3, 'UTC'),
    ingestion_timestamp DateTime64(6, 'UTC'),
    sequence_number UInt64,
    trade_id String,
    symbol LowCardinality(String),
    side Enum8('buy' = 1, 'sell' = 2),
    price Decimal(18, 8),
    quantity Decimal(18, 8),
    is_buyer_maker Bool
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(exchange_timestamp) ORDER BY (ingestion_timestamp, sequence_number)
"""
SEED = """
INSERT INTO k2.bronze_trades
SELECT ts - toIntervalMillisecond(rand() % 50), ts, {first:UInt64} + number, toString({first:UInt64} + number),
       ['BTC-USDT', 'ETH-USDT', 'SOL-USDT', 'XRP-USDT', 'DOGE-USDT'][number % 5 + 1],
       if(rand() % 2 = 0, 'buy', 'sell'),
       toDecimal64(30000 + sin(number / 1e5) * 2000 + (rand() % 10000) / 100, 8),
       toDecimal64(exp(randNormal(0, 1.5)) / 100, 8),
       rand() % 2 = 0
FROM (SELECT number, toDateTime64({start:String}, 6, 'UTC') + toIntervalMicrosecond(intDiv(number, 4) * {step:UInt64}) AS ts
      FROM numbers({n:UInt64}))
"""


def seed(path: Path, rows: int, hours: float) -> None:
    import chdb

    conn = chdb.connect(str(path))
    conn.query("CREATE DATABASE IF NOT EXISTS k2")
    conn.query(DDL)
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - hours * 3600 - 600))
    step = max(1, int(hours * 3600e6 / max(rows / 4, 1)))
    chunk = 2_000_000
    for first in range(0, rows, chunk):
        n = min(chunk, rows - first)
        chunk_start = f"{start}"
        conn.query(SEED, "CSV", params={"first": first, "n": n, "start": chunk_start, "step": step})
        start = (
            conn.query("SELECT toString(max(ingestion_timestamp) + toIntervalMicrosecond(1), 'UTC') FROM k2.bronze_trades", "CSV")
            .bytes()
            .decode()
            .strip()
            .strip('"')
        )
    conn.close()


def native_export(path: Path, out: Path) -> tuple[float, int, int]:
    """ClickHouse's own Parquet export (zstd) of the table; seconds, bytes on disk, Arrow bytes."""
    import chdb
    import pyarrow as pa

    conn = chdb.connect(str(path))
    here = os.getcwd()
    os.chdir(out.parent)
    try:
        started = time.perf_counter()
        conn.query(
            f"SELECT * FROM k2.bronze_trades INTO OUTFILE '{out.name}' TRUNCATE FORMAT Parquet "
            "SETTINGS output_format_parquet_compression_method = 'zstd'"
        )
        seconds = time.perf_counter() - started
    finally:
        os.chdir(here)
    arrow_bytes = 0
    result = conn.send_query("SELECT * EXCEPT side, toString(side) AS side FROM k2.bronze_trades", "ArrowStream")
    for chunk in result:
        for batch in pa.ipc.open_stream(pa.py_buffer(chunk.bytes())):
            arrow_bytes += batch.nbytes
    conn.close()
    return seconds, out.stat().st_size, arrow_bytes


ICEBERG_DDL = """
CREATE TABLE default.native_iceberg (
    exchange_timestamp DateTime64(6, 'UTC'), ingestion_timestamp DateTime64(6, 'UTC'), sequence_number Int64,
    trade_id String, symbol String, side String, price Decimal(18, 8), quantity Decimal(18, 8), is_buyer_maker Int32
) ENGINE = IcebergLocal('{path}') PARTITION BY toRelativeDayNum(exchange_timestamp)
"""


def clickhouse_iceberg_insert(path: Path, out: Path) -> float:
    """ClickHouse's own Iceberg writer (``INSERT`` into ``ENGINE = IcebergLocal``): seconds.

    The same rows, partitioned by day. Its writer refuses Bool and UInt8, so the flag goes
    in as Int32; it keeps no cursor and verifies nothing.
    """
    import chdb

    conn = chdb.connect(str(path))
    here = os.getcwd()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # IcebergLocal writes only under the working directory
    try:
        conn.query(ICEBERG_DDL.replace("{path}", str(out / "table")))
        started = time.perf_counter()
        conn.query(
            "INSERT INTO default.native_iceberg SELECT exchange_timestamp, ingestion_timestamp, sequence_number, trade_id, "
            "symbol, toString(side), price, quantity, is_buyer_maker FROM k2.bronze_trades "
            "SETTINGS allow_insert_into_iceberg = 1"
        )
        seconds = time.perf_counter() - started
        conn.query("DROP TABLE default.native_iceberg")
    finally:
        os.chdir(here)
        conn.close()
    return seconds


def run_once(config: Path) -> tuple[float, int, str]:
    """`offloader once` as a child process: seconds, its peak RSS in bytes, and its output.

    The peak is the child's own VmHWM, sampled until it exits: the rusage of children would
    count the parent's memory as well, as the child starts as a copy of it.
    """
    log = config.with_suffix(".log")
    started = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "offloader", "--config", str(config), "--log-level", "warning", "once"],
            stdout=sink, stderr=subprocess.STDOUT, cwd=config.parent,
        )  # fmt: skip
        peak = 0
        while proc.poll() is None:
            peak = max(peak, high_water_mark(proc.pid))
            time.sleep(0.05)
    seconds = time.perf_counter() - started
    output = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"offloader once failed ({proc.returncode}):\n{output[-3000:]}")
    return seconds, peak, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--hours", type=float, default=24.0, help="hours of history the rows span")
    parser.add_argument("--catalog", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three first loads, in turn")
    parser.add_argument("--out")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="offloader-bench-"))
    chdb_dir, warehouse = work / "clickhouse", work / "warehouse"
    print(f"seeding {args.rows:,} rows into {chdb_dir} ...", file=sys.stderr)
    started = time.perf_counter()
    seed(chdb_dir, args.rows, args.hours)
    seed_seconds = time.perf_counter() - started

    if args.catalog == "postgres":
        catalog_uri = state_dsn = _reset_pg(args.pg)
    else:
        catalog_uri, state_dsn = f"sqlite:///{work}/catalog.db", f"sqlite:///{work}/state.db"
    config = work / "offloader.toml"
    config.write_text(
        f'[source]\ndsn = "chdb://{chdb_dir}"\nsafety_lag = "0s"\nmax_window = "{int(args.hours) + 1}h"\n'
        f'[catalog]\nname = "cold"\ntype = "sql"\nuri = "{catalog_uri}"\nwarehouse = "file://{warehouse}"\n'
        f'[state]\ndsn = "{state_dsn}"\n'
        '[[tables]]\nname = "bronze_trades"\nsource = "k2.bronze_trades"\ntarget = "cold.bronze_trades"\n'
        'layer = "bronze"\ncursor = ["ingestion_timestamp", "sequence_number"]\npartition_by = ["day(exchange_timestamp)"]\n'
    )
    # The three first loads in turn, --repeat rounds: on a noisy machine only the ratios within
    # a round hold, so the figures are the medians and the ratios the medians of each round's.
    rounds = []
    for _ in range(args.repeat):
        export_s, export_bytes, arrow_bytes = native_export(chdb_dir, work / "native.parquet")
        insert_s = clickhouse_iceberg_insert(chdb_dir, work / "native-iceberg")
        shutil.rmtree(work / "native-iceberg", ignore_errors=True)
        rounds.append((export_s, insert_s, first_cycle_in_process(config, work)))
    export_s, iceberg_insert_s, cycle_s = (statistics.median(r[i] for r in rounds) for i in range(3))
    once_s, peak_rss, stdout = run_once(config)
    idle_process_s, _, idle_out = run_once(config)
    match = re.search(r"nothing new \(([0-9.]+)s\)", idle_out)
    assert match, idle_out
    idle_s = float(match.group(1))
    warm_idle_s = warm_idle_cycle(config)
    data_bytes = sum(f.stat().st_size for f in warehouse.rglob("*.parquet"))
    remote_s, remote_rss = remote_once(config, chdb_dir, work)
    results = {
        "rows": args.rows,
        "catalog": args.catalog,
        "seed_seconds": round(seed_seconds, 2),
        "native_parquet_export_seconds": round(export_s, 3),
        "native_parquet_rows_per_second": round(args.rows / export_s),
        "native_parquet_bytes": export_bytes,
        "clickhouse_iceberg_insert_seconds": round(iceberg_insert_s, 3),
        "clickhouse_iceberg_insert_rows_per_second": round(args.rows / iceberg_insert_s),
        "offloader_once_seconds": round(once_s, 3),
        "offloader_cycle_seconds_in_process": round(cycle_s, 3),
        "offloader_rows_per_second": round(args.rows / once_s),
        "offloader_arrow_mb_per_second": round(arrow_bytes / once_s / 1e6, 1),
        "offloader_peak_rss_mib": round(peak_rss / 2**20, 1),
        "offloader_vs_native": round(export_s / once_s, 3),
        "offloader_over_native_in_process": round(statistics.median(c / e for e, _, c in rounds), 2),
        "offloader_over_clickhouse_iceberg_in_process": round(statistics.median(c / i for _, i, c in rounds), 2),
        "rounds": args.repeat,
        "rounds_seconds_native_insert_offloader": [[round(x, 2) for x in r] for r in rounds],
        "offloader_remote_once_seconds": round(remote_s, 3),
        "offloader_remote_peak_rss_mib": round(remote_rss / 2**20, 1),
        "idle_cycle_seconds_per_table": round(idle_s, 3),
        "idle_once_process_seconds": round(idle_process_s, 3),
        "idle_cycle_seconds_per_table_warm": round(warm_idle_s, 4),
        "iceberg_data_bytes": data_bytes,
        "arrow_in_memory_bytes": arrow_bytes,
        "compression_ratio_vs_arrow": round(arrow_bytes / max(data_bytes, 1), 2),
        "offloader_output": stdout.strip(),
        "cpu_count": os.cpu_count(),
    }
    report(results, Path(args.out or ROOT / "bench" / "results" / f"offload-{args.rows}-{args.catalog}.json"))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, object], out: Path) -> None:
    """Write the figures as JSON to ``out`` and print them as a Markdown table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("| figure | value |\n|---|---|")
    for key, value in results.items():
        print(f"| {key} | {value:,} |" if isinstance(value, int | float) else f"| {key} | {value} |")


def high_water_mark(pid: int) -> int:
    """A running process's peak RSS in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def http_endpoint(chdb_dir: Path) -> Iterator[int]:
    """A remote ClickHouse for the bench: tests/chhttp.py serving the chDB directory over HTTP,
    in a process of its own (so the measured process holds no engine); yields its port."""
    endpoint = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "chhttp.py"), "--path", str(chdb_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        line = endpoint.stdout.readline() if endpoint.stdout else ""
        if not line.startswith("LISTENING"):
            raise SystemExit("the ClickHouse HTTP endpoint did not start")
        yield int(line.split()[1])
    finally:
        endpoint.terminate()
        endpoint.wait(timeout=30)


def save(results: dict[str, object], name: str) -> None:
    """Write the figures to bench/results/<name> and print them as JSON."""
    out = ROOT / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def remote_once(config: Path, chdb_dir: Path, work: Path) -> tuple[float, int]:
    """The same first load from a remote ClickHouse into a table of its own: seconds and
    offloader's peak RSS, which then holds no ClickHouse engine."""
    with http_endpoint(chdb_dir) as port:
        text = config.read_text().replace(f"chdb://{chdb_dir}", f"http://default@127.0.0.1:{port}/k2")
        text = text.replace(f"file://{work}/warehouse", f"file://{work}/warehouse-remote")
        text = text.replace(f"{work}/catalog.db", f"{work}/catalog-remote.db").replace(
            f"{work}/state.db", f"{work}/state-remote.db"
        )
        remote = config.with_name("offloader-remote.toml")
        remote.write_text(text)
        seconds, peak, _ = run_once(remote)
    return seconds, peak


def first_cycle_in_process(config: Path, work: Path) -> float:
    """Seconds of the first load as one cycle inside a running process, as the exports above
    are measured (no interpreter start-up); the table and its state are dropped afterwards,
    so that `offloader once` then does the same first load as a command."""
    from offloader.app import App
    from offloader.config_loader import load_config
    from offloader.log import configure

    configure("warning")
    app = App(load_config(config, env={}))
    try:
        started = time.perf_counter()
        (result,) = app.run_cycle()
        seconds = time.perf_counter() - started
        assert result.outcome == "committed", result
        app.sink.catalog.drop_table("cold.bronze_trades")
        app.state.delete_mirror("bronze_trades")
    finally:
        app.close()
    shutil.rmtree(work / "warehouse", ignore_errors=True)
    return seconds


def warm_idle_cycle(config: Path) -> float:
    """Seconds of a cycle that finds nothing new in a running process (the service's case):
    the median of five, after one that warms imports and connections."""
    import statistics

    from offloader.app import App
    from offloader.config_loader import load_config

    app = App(load_config(config, env={}))
    try:
        app.run_cycle()
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            (result,) = app.run_cycle()
            timings.append(time.perf_counter() - started)
            assert result.outcome == "nothing_new", result
        return statistics.median(timings)
    finally:
        app.close()


def _reset_pg(dsn: str) -> str:
    """A fresh database ``offloader_bench`` on the server of ``dsn``; its DSN."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS offloader_bench WITH (FORCE)")
        cur.execute("CREATE DATABASE offloader_bench")
    conn.close()
    return dsn.rsplit("/", 1)[0] + "/offloader_bench"


if __name__ == "__main__":
    main()

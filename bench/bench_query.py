"""Benchmark: typical market-data queries on the cold tier, with and without a sort order.

Seeds the demo (`offloader demo seed --rows N --hours H`: bronze trades per exchange, silver
and gold follow), offloads ``k2.silver_trades`` twice with `offloader once` (from the seeded
ClickHouse served over HTTP) into two Iceberg tables holding the same rows:
``cold.silver_trades`` (no sort order) and ``cold.silver_trades_sorted`` (``sort_by =
["symbol", "exchange_timestamp"]``), measuring each first load's seconds and peak RSS. Then `offloader maintain` compacts the sorted table
and the queries run once more on it ("sorted+compacted").

The queries (:data:`QUERIES`): one symbol on one day; one-hour OHLCV bars of one symbol over
a week (or the seeded span if shorter); trade counts per hour; the last trade of a symbol
before a time. Each runs ``--repeat`` times per engine (:data:`ENGINES`) and table after
one warm-up; the figures are p50 and p99 (the nearest-rank percentile: with few repetitions,
the slowest) and what the engine itself says it read:

- ClickHouse (``icebergLocal`` in chDB): its ProfileEvents (:data:`EVENTS`: files pruned by
  partition and by min/max, Parquet row groups read and pruned, rows filtered, bytes read),
  the difference of ``system.events`` around the query: chDB keeps no ``system.query_log``,
  and the ``rows_read()`` of a result counts the rows after the Parquet filter, not those read;
- DuckDB (iceberg extension): the data files its scan read (``Total Files Read`` of
  ``EXPLAIN ANALYZE``); DuckDB 1.5 reports no row-group counts.

Another engine is one more entry of :data:`ENGINES`: a class with ``name``, ``dialect`` and
``run(sql) -> (result rows, counters)``, and ``source(table)``, the FROM expression of a
table. (A federated ClickHouse view, ``<db>.<table>_all`` = hot rows UNION ALL
icebergLocal rows, would be one; it does not exist on this branch and is left out.)

Usage: python bench/bench_query.py [--rows 10000000] [--hours 168] [--repeat 9] [--work DIR] [--out FILE]
Prints Markdown tables and writes JSON (default bench/results/query-<rows>.json).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import site
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from bench_backfill import timed
from bench_offload import http_endpoint

ROOT = Path(__file__).resolve().parent.parent
SORT_BY = ["symbol", "exchange_timestamp"]
TABLES = {"unsorted": "silver_trades", "sorted": "silver_trades_sorted"}
SYMBOL = "SOL-USDT"

# {t}: the table; {symbol}; {day0}/{day1}: one day; {week0}/{week1}: the week; {before}: a time
QUERIES: dict[str, dict[str, str]] = {
    "one symbol, one day": {
        "clickhouse": "SELECT exchange_timestamp, exchange, price, quantity FROM {t} WHERE symbol = '{symbol}' "
        "AND exchange_timestamp >= {ts:day0} AND exchange_timestamp < {ts:day1} ORDER BY exchange_timestamp",
        "duckdb": "SELECT exchange_timestamp, exchange, price, quantity FROM {t} WHERE symbol = '{symbol}' "
        "AND exchange_timestamp >= {ts:day0} AND exchange_timestamp < {ts:day1} ORDER BY exchange_timestamp",
    },
    "OHLCV 1h bars, one symbol, a week": {
        "clickhouse": "SELECT toStartOfHour(exchange_timestamp) AS bar, argMin(price, exchange_timestamp) AS open, "
        "max(price) AS high, min(price) AS low, argMax(price, exchange_timestamp) AS close, sum(quantity) AS volume, "
        "count() AS trades FROM {t} WHERE symbol = '{symbol}' AND exchange_timestamp >= {ts:week0} "
        "AND exchange_timestamp < {ts:week1} GROUP BY bar ORDER BY bar",
        "duckdb": "SELECT date_trunc('hour', exchange_timestamp) AS bar, arg_min(price, exchange_timestamp) AS open, "
        "max(price) AS high, min(price) AS low, arg_max(price, exchange_timestamp) AS close, sum(quantity) AS volume, "
        "count(*) AS trades FROM {t} WHERE symbol = '{symbol}' AND exchange_timestamp >= {ts:week0} "
        "AND exchange_timestamp < {ts:week1} GROUP BY bar ORDER BY bar",
    },
    "counts per hour, a week": {
        "clickhouse": "SELECT toStartOfHour(exchange_timestamp) AS hour, count() FROM {t} "
        "WHERE exchange_timestamp >= {ts:week0} AND exchange_timestamp < {ts:week1} GROUP BY hour ORDER BY hour",
        "duckdb": "SELECT date_trunc('hour', exchange_timestamp) AS hour, count(*) FROM {t} "
        "WHERE exchange_timestamp >= {ts:week0} AND exchange_timestamp < {ts:week1} GROUP BY hour ORDER BY hour",
    },
    "last trade before a time": {
        "clickhouse": "SELECT exchange_timestamp, exchange, price, quantity FROM {t} WHERE symbol = '{symbol}' "
        "AND exchange_timestamp < {ts:before} ORDER BY exchange_timestamp DESC LIMIT 1",
        "duckdb": "SELECT exchange_timestamp, exchange, price, quantity FROM {t} WHERE symbol = '{symbol}' "
        "AND exchange_timestamp < {ts:before} ORDER BY exchange_timestamp DESC LIMIT 1",
    },
}
EVENTS = {  # ClickHouse ProfileEvents, and the names the report gives them
    "IcebergPartitionPrunedFiles": "files_pruned_by_partition",
    "IcebergMinMaxIndexPrunedFiles": "files_pruned_by_minmax",
    "EngineFileLikeReadFiles": "files_read",
    "ParquetReadRowGroups": "row_groups_read",
    "ParquetPrunedRowGroups": "row_groups_pruned",  # skipped by their min/max statistics
    "ParquetRowsFilterExpression": "rows_filtered",  # rows the WHERE was evaluated on
    "ReadBufferFromFileDescriptorReadBytes": "bytes_read",
}
LITERAL = {
    "clickhouse": lambda v: f"toDateTime64('{v}', 6, 'UTC')",
    "duckdb": lambda v: f"TIMESTAMPTZ '{v}+00'",
}


class Engine(Protocol):
    name: str
    dialect: str

    def source(self, table: str) -> str: ...
    def run(self, sql: str) -> tuple[int, dict[str, Any]]: ...


class ClickHouseIceberg:
    """chDB reading the table's folder with ``icebergLocal`` (ClickHouse's own Iceberg reader)."""

    name, dialect = "ClickHouse icebergLocal", "clickhouse"

    def __init__(self, work: Path) -> None:
        from chdb import session

        os.chdir(work)  # icebergLocal reads only under the current directory
        self.session = session.Session(str(work / "chdb-reader"))
        self.work = work

    def source(self, table: str) -> str:
        return f"icebergLocal('{self.work / 'warehouse' / 'cold' / table}')"

    def run(self, sql: str) -> tuple[int, dict[str, Any]]:
        before = self._events()
        result = self.session.query(sql, "JSONCompact")
        rows = len(json.loads(result.bytes() or b'{"data": []}')["data"])
        after = self._events()
        return rows, {label: after.get(name, 0) - before.get(name, 0) for name, label in EVENTS.items()}

    def _events(self) -> dict[str, int]:
        """The process's ProfileEvents (``system.events``; chDB keeps no ``system.query_log``):
        their difference around one query is what that query did."""
        got = self.session.query("SELECT name, value FROM system.events", "JSONCompact")
        return {name: int(value) for name, value in json.loads(got.bytes())["data"]}


class DuckDBIceberg:
    """DuckDB's iceberg extension reading the table's current metadata file (``iceberg_scan``)."""

    name, dialect = "DuckDB iceberg_scan", "duckdb"

    def __init__(self, work: Path) -> None:
        import duckdb

        self.con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        for ext in ("httpfs", "avro", "iceberg"):
            found = sorted(
                f
                for sp in site.getsitepackages()
                for f in glob.glob(f"{sp}/duckdb_extension_{ext}/extensions/*/{ext}.duckdb_extension")
            )
            self.con.execute(f"LOAD '{found[-1]}'")
        self.con.execute("SET TimeZone = 'UTC'")
        self.work = work

    def source(self, table: str) -> str:
        return f"iceberg_scan('{metadata_file(self.work, table)}')"

    def run(self, sql: str) -> tuple[int, dict[str, Any]]:
        rows = self.con.execute(sql).to_arrow_table().num_rows  # Arrow: no pytz needed for timestamptz
        return rows, self.explain(sql)

    def explain(self, sql: str) -> dict[str, Any]:
        """The data files the scan read, from EXPLAIN ANALYZE (its text: DuckDB has no machine-readable form of it)."""
        text = "\n".join(str(r[1]) for r in self.con.execute(f"EXPLAIN ANALYZE {sql}").fetchall())
        counters: dict[str, Any] = {}
        files = re.search(r"Total Files Read:?\s*([\d,]+)", text)
        if files:
            counters["files_read"] = int(files.group(1).replace(",", ""))
        return counters


ENGINES: list[Callable[[Path], Engine]] = [ClickHouseIceberg, DuckDBIceberg]
"""The engines the queries run through, each built from the work directory. The federated
ClickHouse view (``<db>.<table>_all``) would be one more, with the "clickhouse" dialect."""


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


def layout(work: Path, table: str) -> dict[str, int]:
    """Data files and Parquet row groups of a table's live data files (via PyIceberg's scan plan)."""
    import pyarrow.parquet as pq
    from pyiceberg.catalog import load_catalog

    catalog = load_catalog("cold", type="sql", uri=f"sqlite:///{work}/catalog.db", warehouse=f"file://{work}/warehouse")
    files = [t.file for t in catalog.load_table(f"cold.{table}").scan().plan_files()]
    groups = sum(pq.ParquetFile(f.file_path.removeprefix("file://")).metadata.num_row_groups for f in files)
    return {"data_files": len(files), "row_groups": groups, "bytes": sum(f.file_size_in_bytes for f in files)}


def metadata_file(work: Path, table: str) -> str:
    from pyiceberg.catalog import load_catalog

    catalog = load_catalog("cold", type="sql", uri=f"sqlite:///{work}/catalog.db", warehouse=f"file://{work}/warehouse")
    return str(catalog.load_table(f"cold.{table}").metadata_location).removeprefix("file://")


def cli(config: Path, *args: str) -> tuple[float, int, str]:
    """`offloader ARGS` as a child process (warnings only): seconds, its peak RSS and its output."""
    return timed(config, "--log-level", "warning", *args)


def write_config(work: Path, hours: float) -> Path:
    config = work / "offloader.toml"
    tables = ""
    for name, sort_by in (("silver_trades", None), ("silver_trades_sorted", SORT_BY)):
        tables += (
            f'[[tables]]\nname = "{name}"\nsource = "k2.silver_trades"\ntarget = "cold.{name}"\nlayer = "silver"\n'
            'cursor = ["ingestion_timestamp", "exchange", "sequence_number"]\npartition_by = ["day(exchange_timestamp)"]\n'
        )
        if sort_by:
            tables += f"sort_by = {json.dumps(sort_by)}\n"
    config.write_text(
        f'[source]\ndsn = "chdb://{work}/clickhouse"\nsafety_lag = "0s"\nmax_window = "{int(hours) + 2}h"\n'
        f'[catalog]\nname = "cold"\ntype = "sql"\nuri = "sqlite:///{work}/catalog.db"\nwarehouse = "file://{work}/warehouse"\n'
        f'[state]\ndsn = "sqlite:///{work}/state.db"\n[maintenance]\nsettle = "0s"\n{tables}'
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--hours", type=float, default=168.0, help="hours of history the rows span (a week)")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--work", help="a work directory to reuse (seeded and offloaded steps are skipped)")
    parser.add_argument("--out")
    args = parser.parse_args()

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="offloader-bench-query-"))
    work.mkdir(parents=True, exist_ok=True)
    config = write_config(work, args.hours)
    results: dict[str, Any] = {"rows": args.rows, "hours": args.hours, "repeat": args.repeat, "cpu_count": os.cpu_count()}
    if not (work / "clickhouse").exists():
        print(f"seeding {args.rows:,} trades over {args.hours:g} h ...", file=sys.stderr)
        seconds, _, _ = cli(config, "demo", "seed", "--rows", str(args.rows), "--hours", str(args.hours))
        results["seed_seconds"] = round(seconds, 1)
    results["first_load"] = first_loads(work, config)
    results["layout"] = {kind: layout(work, table) for kind, table in TABLES.items()}

    params = span_params(work)
    results["params"] = params
    engines = [make(work) for make in ENGINES]
    results["queries"] = measure(engines, dict(TABLES), params, args.repeat)

    print("compacting the sorted table ...", file=sys.stderr)
    seconds, peak, output = cli(config, "maintain", "--table", TABLES["sorted"])
    results["compaction"] = {"seconds": round(seconds, 2), "peak_rss_mib": round(peak / 2**20, 1), "output": output.strip()}
    results["layout"]["sorted+compacted"] = layout(work, TABLES["sorted"])
    results["queries"] += measure(engines, {"sorted+compacted": TABLES["sorted"]}, params, args.repeat)
    report(results, Path(args.out or ROOT / "bench" / "results" / f"query-{args.rows}.json"))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def first_loads(work: Path, config: Path) -> dict[str, Any]:
    """Each table's first load by `offloader once --table` from a remote ClickHouse (tests/chhttp.py
    serving the seeded directory over HTTP, as `bench_offload.py` measures its peak RSS):
    seconds and peak RSS, with and without sort_by."""
    loads: dict[str, Any] = {}
    todo = [(kind, table) for kind, table in TABLES.items() if not (work / "warehouse" / "cold" / table).exists()]
    if not todo:
        return loads
    with http_endpoint(work / "clickhouse") as port:
        remote = config.with_name("offloader-remote.toml")
        remote.write_text(config.read_text().replace(f"chdb://{work}/clickhouse", f"http://default@127.0.0.1:{port}/k2"))
        for kind, table in todo:
            print(f"offloading {table} ...", file=sys.stderr)
            seconds, peak, _ = cli(remote, "once", "--table", table)
            loads[kind] = {"seconds": round(seconds, 2), "peak_rss_mib": round(peak / 2**20, 1)}
    return loads


def span_params(work: Path) -> dict[str, str]:
    """The times the queries ask about, from the data: the second full day, the whole span (at
    most a week) and noon of that day."""
    location = metadata_file(work, TABLES["unsorted"])
    con = DuckDBIceberg(work).con
    low, high = con.execute(
        f"SELECT epoch_us(min(exchange_timestamp)), epoch_us(max(exchange_timestamp)) FROM iceberg_scan('{location}')"
    ).fetchone()
    low, high = (datetime.fromtimestamp(v / 1e6, UTC).replace(tzinfo=None) for v in (low, high))
    day0 = datetime(low.year, low.month, low.day) + timedelta(days=2 if (high - low).days >= 3 else 0)
    week0 = datetime(low.year, low.month, low.day)
    week1 = min(week0 + timedelta(days=7), datetime(high.year, high.month, high.day) + timedelta(days=1))
    fmt = "%Y-%m-%d %H:%M:%S"
    return {
        "symbol": SYMBOL, "day0": day0.strftime(fmt), "day1": (day0 + timedelta(days=1)).strftime(fmt),
        "week0": week0.strftime(fmt), "week1": week1.strftime(fmt), "before": (day0 + timedelta(hours=12)).strftime(fmt),
    }  # fmt: skip


def render(template: str, engine: Engine, table: str, params: dict[str, str]) -> str:
    sql = re.sub(r"\{ts:(\w+)\}", lambda m: LITERAL[engine.dialect](params[m.group(1)]), template)
    return sql.replace("{t}", engine.source(table)).replace("{symbol}", params["symbol"])


def measure(engines: list[Engine], tables: dict[str, str], params: dict[str, str], repeat: int) -> list[dict[str, Any]]:
    out = []
    for engine in engines:
        for kind, table in tables.items():
            for query, dialects in QUERIES.items():
                sql = render(dialects[engine.dialect], engine, table, params)
                rows, counters = engine.run(sql)  # the warm-up, and the counters
                timings = []
                for _ in range(repeat):
                    started = time.perf_counter()
                    _timed(engine, sql)
                    timings.append(time.perf_counter() - started)
                entry = {
                    "engine": engine.name, "table": kind, "query": query, "result_rows": rows,
                    "p50_s": round(percentile(timings, 50), 4), "p99_s": round(percentile(timings, 99), 4),
                    **counters,
                }  # fmt: skip
                print(json.dumps(entry), file=sys.stderr)
                out.append(entry)
    return out


def _timed(engine: Engine, sql: str) -> None:
    """The query alone, as a user runs it (no counters collected)."""
    if isinstance(engine, ClickHouseIceberg):
        engine.session.query(sql, "JSONCompact").bytes()
    elif isinstance(engine, DuckDBIceberg):
        engine.con.execute(sql).to_arrow_table()
    else:
        engine.run(sql)


def report(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "queries"}, indent=2, default=str))
    keys = sorted({k for q in results["queries"] for k in q} - {"engine", "table", "query", "p50_s", "p99_s", "result_rows"})
    print("| engine | table | query | rows | p50 s | p99 s | " + " | ".join(keys) + " |")
    print("|---" * (6 + len(keys)) + "|")
    for q in results["queries"]:
        cells = [q["engine"], q["table"], q["query"], q["result_rows"], q["p50_s"], q["p99_s"], *(q.get(k, "") for k in keys)]
        print("| " + " | ".join(f"{c:,}" if isinstance(c, int) else str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()

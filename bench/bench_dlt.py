"""Benchmark: dlt, the Python peer, against offloader on the same rows from the same endpoint.

dlt (dlthub) loads a SQL table through SQLAlchemy into a destination; here its
``sql_table`` source reads bronze trades from a remote ClickHouse (tests/chhttp.py serving
chDB over HTTP, through clickhouse-connect's ``clickhousedb`` SQLAlchemy dialect) with its
fastest backend (``pyarrow``), and its ``filesystem`` destination writes an Iceberg table
(``table_format="iceberg"``, PyIceberg underneath). offloader's ``once`` then loads the same
rows from the same endpoint into a table of its own. Both run as whole processes, in turn,
``--repeat`` rounds; each round's ratio is reported, and the median.

dlt lives in a virtual environment of its own, so that its pins never touch offloader's:

    python3 -m venv .venv-dlt && .venv-dlt/bin/pip install "dlt[filesystem,pyiceberg]" clickhouse-connect

Usage: python bench/bench_dlt.py [--rows 1000000] [--repeat 2] [--dlt-python .venv-dlt/bin/python]
Writes bench/results/dlt-<rows>.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_offload import http_endpoint, run_once, save, seed  # noqa: E402

PIPELINE = textwrap.dedent(
    """
    import sys, dlt
    from dlt.sources.sql_database import sql_table

    port, out, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    source = sql_table(
        credentials=f"clickhousedb://default:@127.0.0.1:{port}/k2", table="bronze_trades",
        backend="pyarrow", chunk_size=100_000,
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench", pipelines_dir=f"{out}/pipelines",
        destination=dlt.destinations.filesystem(bucket_url=f"file://{out}/lake"), dataset_name="cold",
    )
    info = pipeline.run(source, table_format="iceberg", loader_file_format="parquet")
    info.raise_on_failed_jobs()
    loaded = pipeline.last_trace.last_normalize_info.row_counts.get("bronze_trades")
    assert loaded == rows, (loaded, rows)
    print("loaded", loaded)
    """
)


def run_dlt(python: str, port: int, out: Path, rows: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    script = out.parent / "dlt_pipeline.py"
    script.write_text(PIPELINE)
    started = time.perf_counter()
    done = subprocess.run([python, str(script), str(port), str(out), str(rows)], capture_output=True, text=True, cwd=out)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"dlt failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def offloader_config(work: Path, port: int, tag: str) -> Path:
    config = work / f"offloader-{tag}.toml"
    config.write_text(
        f'[source]\ndsn = "http://default@127.0.0.1:{port}/k2"\nsafety_lag = "0s"\nmax_window = "2d"\n'
        f'[catalog]\nname = "cold"\ntype = "sql"\nuri = "sqlite:///{work}/catalog-{tag}.db"\nwarehouse = "file://{work}/wh-{tag}"\n'
        f'[state]\ndsn = "sqlite:///{work}/state-{tag}.db"\n'
        '[[tables]]\nname = "bronze_trades"\nsource = "k2.bronze_trades"\ntarget = "cold.bronze_trades"\n'
        'layer = "bronze"\ncursor = ["ingestion_timestamp", "sequence_number"]\npartition_by = ["day(exchange_timestamp)"]\n'
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dlt-python", default=str(ROOT / ".venv-dlt" / "bin" / "python"))
    args = parser.parse_args()
    if not Path(args.dlt_python).exists():
        raise SystemExit(f"no dlt environment at {args.dlt_python}: see this file's docstring to make one")

    work = Path(tempfile.mkdtemp(prefix="offloader-bench-dlt-"))
    seed(work / "clickhouse", args.rows, 24)
    rounds = []
    with http_endpoint(work / "clickhouse") as port:
        for n in range(args.repeat):
            dlt_s = run_dlt(args.dlt_python, port, work / "dlt", args.rows)
            offloader_s, _, output = run_once(offloader_config(work, port, f"r{n}"))
            if f"committed {args.rows:,} rows" not in output:
                raise SystemExit(f"offloader did not load every row:\n{output[-2000:]}")
            rounds.append((dlt_s, offloader_s))
    dlt_s, offloader_s = (statistics.median(r[i] for r in rounds) for i in range(2))
    results = {
        "rows": args.rows,
        "dlt_seconds": round(dlt_s, 2),
        "dlt_rows_per_second": round(args.rows / dlt_s),
        "offloader_seconds": round(offloader_s, 2),
        "offloader_rows_per_second": round(args.rows / offloader_s),
        "dlt_over_offloader": round(statistics.median(d / o for d, o in rounds), 2),
        "rounds_seconds_dlt_offloader": [[round(x, 2) for x in r] for r in rounds],
    }
    save(results, f"dlt-{args.rows}.json")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

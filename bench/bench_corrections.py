"""Benchmark: what a correction costs in Iceberg (``corrections = "mutations"``).

Seeds N bronze trade rows spanning H hours into an embedded ClickHouse (chDB), offloads them in
windows of ``--window`` (partitioned by day of the cursor column: one file per window and day),
then makes each correction below in ClickHouse and runs ``offloader once``, reading the rows
the correction's snapshot rewrote from its summary (``added-records``: the corrected range read
from the source plus the rows kept from every file that held a row of the range):

- a point correction bounded in time (one row: ``WHERE ingestion_timestamp = T AND sequence_number = S``);
- a wide one (every row of one hour);
- a point correction with no bound on the time (the whole retained range is replaced);
- the bounded point correction again after ``offloader maintain`` compacted each day into one file.

Usage: python bench/bench_corrections.py [--rows 1000000] [--hours 24] [--window 1h] [--out FILE]
Prints a Markdown table and writes JSON (default bench/results/corrections-<rows>.json).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_maintenance import bronze_config, finish, run, seeded  # noqa: E402


def source(chdb_dir: Path, sql: str) -> list[list[str]]:
    """Run ``sql`` on the benchmark's chDB directory (closed again before offloader opens it)."""
    import chdb

    conn = chdb.connect(str(chdb_dir))
    try:
        text = conn.query(sql, "TSV").bytes().decode()
    finally:
        conn.close()
    return [line.split("\t") for line in text.splitlines()]


def correction_snapshot(work: Path) -> dict[str, str]:
    """The summary of the newest correction snapshot of the benchmark's table."""
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("cold", uri=f"sqlite:///{work}/catalog.db", warehouse=f"file://{work}/warehouse")
    table = catalog.load_table("cold.bronze_trades")
    for snapshot in sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True):
        props = snapshot.summary.additional_properties if snapshot.summary else {}
        if props.get("offloader.operation") == "correction":
            return dict(props)
    raise SystemExit("no correction snapshot found")


def correct(work: Path, chdb_dir: Path, config: Path, name: str, where: str) -> dict[str, object]:
    """Apply ``UPDATE … WHERE where`` in ClickHouse, offload it; the figures of its correction commit."""
    ((corrected,),) = source(chdb_dir, f"SELECT count() FROM k2.bronze_trades WHERE {where}")
    source(chdb_dir, f"ALTER TABLE k2.bronze_trades UPDATE quantity = quantity + 1 WHERE {where} SETTINGS mutations_sync = 2")
    seconds, rss, _ = run(config, "once")
    props = correction_snapshot(work)
    written = int(props["added-records"])
    return {
        "correction": name, "corrected_rows": int(corrected), "rows_rewritten": written,
        "rows_rewritten_per_corrected_row": round(written / max(int(corrected), 1), 1),
        "files_rewritten": int(props.get("deleted-data-files", 0)), "files_written": int(props.get("added-data-files", 0)),
        "once_seconds": round(seconds, 2), "peak_rss_mib": round(rss / 2**20),
    }  # fmt: skip


def main() -> None:
    args, work = seeded(__doc__, "offloader-bench-corr-", 1_000_000, 24.0, "1h")
    chdb_dir = work / "clickhouse"
    config = bronze_config(work, args.window, 'corrections = "mutations"\n')
    print("offloading ...", file=sys.stderr)
    offload_s, _, _ = run(config, "once")
    (ts, seq), (hour,) = (
        source(
            chdb_dir,
            "SELECT toString(ingestion_timestamp), sequence_number FROM k2.bronze_trades "
            "ORDER BY ingestion_timestamp LIMIT 1 OFFSET intDiv((SELECT count() FROM k2.bronze_trades), 2)",
        )[0],
        source(chdb_dir, "SELECT toString(toStartOfHour(median(ingestion_timestamp))) FROM k2.bronze_trades")[0],
    )
    point = f"ingestion_timestamp = '{ts}' AND sequence_number = {seq}"
    wide = f"ingestion_timestamp >= '{hour}' AND ingestion_timestamp < toDateTime64('{hour}', 6) + INTERVAL 1 HOUR"
    rows = [
        correct(work, chdb_dir, config, "point, bounded in time", point),
        correct(work, chdb_dir, config, "wide: one hour", wide),
        correct(work, chdb_dir, config, "point, no time bound (whole retained range)", f"sequence_number = {seq}"),
    ]
    run(config, "maintain")
    rows.append(correct(work, chdb_dir, config, "point, bounded, after compaction (one file a day)", point))
    results = {
        "rows": args.rows,
        "hours": args.hours,
        "window": args.window,
        "offload_seconds": round(offload_s, 2),
        "corrections": rows,
    }
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + " --- |" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    finish(args, work, "corrections", results)


if __name__ == "__main__":
    main()

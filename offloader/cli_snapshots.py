"""`offloader snapshots --as-of TIME`: every table's snapshot at one consistent cut, and how to read it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from offloader.cursor import parse_time
from offloader.errors import EXIT_FAILED, EXIT_OK, UsageError

ENGINES = ("clickhouse", "duckdb", "spark", "trino")


def add_parser(sub: Any) -> None:
    snapshots = sub.add_parser(
        "snapshots", help="each table's snapshot at the latest cut at or before a time, and how to read it"
    )
    snapshots.add_argument("--as-of", required=True, metavar="TIME", help='a UTC time, e.g. "2026-12-07 10:15:00"')
    snapshots.add_argument("--table", action="append", help="only these tables (repeat the flag; default: all)")
    snapshots.add_argument("--json", action="store_true", help="print JSON")


def run(app: Any, args: argparse.Namespace) -> int:
    """Print the cut; 0 when every table is exact at one time at or before --as-of, else 1."""
    try:
        parse_time(args.as_of)
    except ValueError:
        raise UsageError(f"--as-of {args.as_of!r} is not a time: use YYYY-MM-DD hh:mm:ss[.ffffff] (UTC)") from None
    tables = [app.config.table(name) for name in args.table] if args.table else app.config.ordered_tables()
    cuts = app.cuts_as_of(tables, args.as_of)
    if args.json:
        print(json.dumps(cuts.as_dict(), indent=2))
        return EXIT_OK if cuts.cut else EXIT_FAILED
    if cuts.cut:
        print(f"cut {cuts.cut} (the latest at or before {cuts.as_of} at which every table below is exact)")
    else:
        print(f"no cut at or before {cuts.as_of} at which every table below is exact; each table's newest snapshot:")
    for t in cuts.tables:
        if t.snapshot_id is None:
            print(f"  {t.name}: no snapshot at or before {cuts.as_of}")
            continue
        frozen = f", frozen to {t.frozen}" if t.frozen else ""
        print(
            f"  {t.name} ({t.target}): snapshot {t.snapshot_id}, complete to {t.complete_to}{frozen}, committed {t.committed_at}"
        )
        for engine in ENGINES:
            print(f"    {engine + ':':<11} {t.queries[engine]}")
    return EXIT_OK if cuts.cut else EXIT_FAILED

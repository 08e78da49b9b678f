"""`offloader backfill`: its arguments, and how its outcome is told (a line, an exit code)."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from offloader.cursor import parse_time
from offloader.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, UsageError
from offloader.results import Observer


def add_parser(sub: Any) -> None:
    backfill = sub.add_parser("backfill", help="a table's history in slices written by parallel workers, committed in order")
    backfill.add_argument("--table", required=True)
    backfill.add_argument("--from", dest="start", metavar="TIME", help="a table with no cursor yet starts at this time (UTC)")
    backfill.add_argument("--to", dest="end", metavar="TIME", help="stop at this time (UTC; at most now minus the safety lag)")
    backfill.add_argument("--workers", type=int, default=1, help="parallel workers (default 1: this process)")
    backfill.add_argument(
        "--ray", metavar="ADDRESS", help="run the workers as Ray tasks on this cluster ('local': a local instance)"
    )
    backfill.add_argument("--slice-rows", type=int, default=2_000_000, help="rows per slice (default 2,000,000)")


def run(app: Any, args: argparse.Namespace, observer: Observer, stop: threading.Event) -> int:
    """Run the backfill; one line says how it went. 0 done, 1 failed, 2 a usage error, 130 stopped."""
    for flag, value in (("--from", args.start), ("--to", args.end)):
        if value is not None:
            try:
                parse_time(value)
            except ValueError:
                raise UsageError(f"{flag} {value!r} is not a time: use YYYY-MM-DD hh:mm:ss[.ffffff] (UTC)") from None
    table = app.config.table(args.table)
    r = app.backfill(
        table, start=args.start, end=args.end, processes=args.workers, ray=args.ray, slice_rows=args.slice_rows,
        observer=observer, stop=stop,
    )  # fmt: skip
    rate = r.rows / r.duration if r.duration > 0 else 0.0
    if r.outcome == "committed":
        print(
            f"{r.table}: backfilled {r.rows:,} rows in {r.windows} slice(s) with {r.workers} worker(s), {r.files} file(s), "
            f"{r.duration:.2f}s ({rate:,.0f} rows/s); cursor {r.cursor}"
        )
        return EXIT_OK
    if r.outcome == "nothing_new":
        print(f"{r.table}: nothing to backfill ({r.duration:.2f}s)")
        return EXIT_OK
    if r.outcome == "stopped":
        print(f"{r.table}: stopped after {r.rows:,} rows in {r.windows} slice(s): {r.reason}")
        return 130
    if isinstance(r.error, ConfigError):  # a usage error only the table's cursor could show
        print(f"offloader: {r.error}", file=sys.stderr)
        return EXIT_USAGE
    state = "skipped" if r.outcome == "skipped" else "FAILED"
    print(f"{r.table}: {state} after {r.rows:,} rows in {r.windows} slice(s): {r.reason}", file=sys.stderr)
    return EXIT_FAILED

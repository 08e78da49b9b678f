"""`offloader rollback --table NAME [--to SNAPSHOT_ID [--yes]]`: list a table's lineage, or undo commits.

Without ``--to`` it prints the table's current lineage, newest first, with the cursor each
snapshot carries, so that the operator can pick the one to go back to. With ``--to`` it makes
that snapshot current again (``offloader/rollback.py``), after a confirmation on a terminal or
with ``--yes``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from offloader.errors import EXIT_FAILED, EXIT_OK, UsageError
from offloader.rollback import Rollback
from offloader.text import columns


def add_parser(sub: Any) -> None:
    rollback = sub.add_parser(
        "rollback", help="undo a table's latest commits: make an earlier snapshot current; without --to, list them"
    )
    rollback.add_argument("--table", required=True, help="the table (its [[tables]] name)")
    rollback.add_argument(
        "--to", metavar="SNAPSHOT_ID", help="the snapshot to make current (default: list the snapshots you can go back to)"
    )
    rollback.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed when not on a terminal)")


def run(app: Any, args: argparse.Namespace) -> int:
    config = app.config.table(args.table, "--table")
    operation = Rollback(app.job(config))
    if args.to is None:
        return _list(operation, args.table)
    try:
        snapshot_id = int(args.to)
    except ValueError:
        raise UsageError(
            f"--to = {args.to!r}: expected a snapshot id; `offloader rollback --table {args.table}` lists them"
        ) from None
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("rollback undoes commits of an Iceberg table: pass --yes to confirm when not on a terminal")
        answer = input(f"Make snapshot {args.to} of {config.target} current again, undoing every commit after it? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("nothing changed")
            return EXIT_FAILED
    done = operation.run(snapshot_id)
    print(
        f"{done.table}: rolled back from snapshot {done.from_snapshot} to {done.to_snapshot}, undoing "
        f"{len(done.undone)} commit(s); cursor moved from {done.old_cursor} to {done.new_cursor}; rows "
        f"{done.rows_before:,} -> {done.rows_after:,}; the next cycle offloads the rest again"
    )
    return EXIT_OK


def _list(operation: Rollback, table: str) -> int:
    entries = operation.lineage()
    if not entries:
        print(f"{table}: no snapshot yet; nothing was offloaded")
        return EXIT_OK
    rows = [
        (
            e.snapshot_id,
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.timestamp_ms / 1000)) + "Z",
            e.operation,
            f"{e.rows:,}",
            " / ".join(str(v) for v in e.cursor) if e.cursor is not None else "-",
            "current" if i == 0 else "",
        )
        for i, e in enumerate(entries)
    ]
    header = ("snapshot", "committed", "operation", "rows", "cursor", "")
    columns(header, rows)
    print(f"`offloader rollback --table {table} --to SNAPSHOT_ID` makes one of them current again; '-': no offloader cursor")
    return EXIT_OK

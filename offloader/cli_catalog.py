"""`offloader catalog recover`: register the tables again from the warehouse after the catalog was lost."""

from __future__ import annotations

import argparse
from typing import Any

from offloader.errors import EXIT_FAILED, EXIT_OK, OffloaderError, UsageError


def add_parser(sub: Any) -> None:
    catalog = sub.add_parser("catalog", help="the Iceberg catalog: register lost tables again from the warehouse")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", required=True, metavar="CATALOG_COMMAND")
    recover = catalog_sub.add_parser(
        "recover",
        help="register each table again from the newest metadata file known to have landed; never one that did not",
    )
    recover.add_argument("--table", help="only this table (default: every table)")
    recover.add_argument(
        "--location", help="the table's location in the warehouse (with --table; default: where the catalog puts it)"
    )
    recover.add_argument(
        "--metadata", help="register this metadata file (with --table), when recovery cannot tell which one landed"
    )
    recover.add_argument("--dry-run", action="store_true", help="print what would be registered; change nothing")


def run(app: Any, args: argparse.Namespace) -> int:
    """Recover each table; 0 when every one is registered (or already was), else 1."""
    if (args.location or args.metadata) and not args.table:
        raise UsageError("--location and --metadata name one table's files: give --table too")
    tables = [app.config.table(args.table)] if args.table else app.config.ordered_tables()
    code = EXIT_OK
    for table in tables:
        try:
            found = app.recover(table, location=args.location, metadata=args.metadata, dry_run=args.dry_run)
        except OffloaderError as exc:
            print(f"{table.name}: not recovered: {str(exc).removeprefix(f'{table.name}: ')}")
            code = EXIT_FAILED
            continue
        if found.action == "absent":
            print(f"{table.name}: nothing to recover: no table, and no metadata file at {found.metadata_location}")
            continue
        what = "already current" if found.action == "current" else found.action
        print(
            f"{table.name}: {what}: {found.metadata_location} "
            f"(version {found.version}, snapshot {found.snapshot_id}, cursor {found.cursor})"
        )
        for path in found.passed_over:
            print(f"  passed over {path}: newer, and not known to have landed")
    return code

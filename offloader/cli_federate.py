"""`offloader federate`: print, or with ``--apply`` run, each table's federated view (``<source>_all``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from offloader.config import IDENTIFIER
from offloader.errors import EXIT_FAILED, EXIT_OK, ConfigError, OffloaderError
from offloader.federation import Federation


def add_parser(sub: Any) -> None:
    federate = sub.add_parser(
        "federate", help="a ClickHouse view per table: the hot rows above the cursor UNION ALL the Iceberg rows at or below it"
    )
    federate.add_argument("--table", help="only this table")
    federate.add_argument(
        "--apply", action="store_true", help="create or replace the views on the source (default: print the DDL)"
    )
    federate.add_argument(
        "--database", help="the ClickHouse database of the views (default: federate.database, else the source's)"
    )


def run(app: Any, args: argparse.Namespace) -> int:
    """Print or apply the views; 0 when every table's view was built, 1 when one failed."""
    config = app.config
    if args.database is not None:
        if not IDENTIFIER.match(args.database):
            raise ConfigError(f"--database {args.database!r}: expected a ClickHouse identifier (letters, digits, _)")
        config = replace(config, federate=replace(config.federate, database=args.database))
    views = Federation(config)
    tables = [config.table(args.table)] if args.table else config.ordered_tables()
    failed = 0
    for table in tables:
        try:
            if not args.apply:
                print(views.plan(table, app.engine, app.sink.load(table, writable=False)).sql + ";\n")
                continue
            # under the table's lock: a run committing meanwhile replaces the view after us, never before
            with app.state.lock(table.name, wait=config.maintenance.lock_wait) as taken:
                if not taken:
                    raise OffloaderError("another runner held the table's lock past maintenance.lock_wait")
                plan = views.replace(table, app.engine, app.sink.load(table, writable=False))
            pinned = plan.pinned or "no Iceberg snapshot yet: the hot rows alone"
            print(f"{table.name}: view {plan.view} replaced ({pinned})")
        except OffloaderError as exc:
            failed += 1
            print(f"{table.name}: FAILED: {(str(exc).splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK

"""How the one-shot commands print their outcome: result lines, tables with a header, exit codes.

``once`` and ``backfill`` print one line per table; ``status``, ``history`` and ``audit`` print
aligned columns under a header; ``maintain``, ``check`` and ``reset`` one line per action or
table. Problems go to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from offloader import log
from offloader.errors import EXIT_FAILED, EXIT_OK, ConfigError, UsageError
from offloader.results import TableResult
from offloader.text import columns


def report(results: list[TableResult]) -> int:
    log.clear_progress()
    failed = 0
    for r in results:
        if r.outcome == "committed":
            print(f"{r.table}: committed {r.rows:,} rows in {r.windows} window(s), {r.files} file(s), {r.duration:.2f}s")
        elif r.outcome == "nothing_new":
            print(f"{r.table}: nothing new ({r.duration:.2f}s)")
        elif r.outcome == "stopped":
            print(f"{r.table}: stopped after {r.rows:,} rows in {r.windows} window(s): {r.reason}")
        elif r.outcome == "not_started":
            print(f"{r.table}: not started: {r.reason}")
        elif r.outcome == "skipped":
            print(f"{r.table}: skipped: {r.reason}")
            failed += 0 if r.error is not None else 1  # a lock held elsewhere is not a failure
        else:
            failed += 1
            print(f"{r.table}: FAILED: {r.reason}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def fmt_lag(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _cut_note(shown: int, limit: int, what: str) -> None:
    if shown >= limit:
        print(f"(the newest {limit} {what}; --limit N shows more)")


def status(app: Any, as_json: bool, table: str | None = None) -> int:
    """Print what can be read; exit 1 when a server is down or a table could not be read."""
    statuses = app.status([app.config.table(table)] if table else None)
    code = EXIT_FAILED if any(s.unreadable for s in statuses) else EXIT_OK
    if as_json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2, default=str))
        return code
    header = ("table", "cursor", "lag", "iceberg rows", "ttl headroom", "last run")
    rows = []
    for s in statuses:
        run = s.last_run
        last = f"{run['outcome']} {run['started_at']}{' by ' + run['replica'] if run['replica'] else ''}" if run else "never"
        cursor = " / ".join(str(v) for v in s.cursor) if s.cursor else "-"
        headroom = (
            "-"
            if s.ttl_headroom_seconds is None
            else "no limit"
            if s.ttl_headroom_seconds == float("inf")
            else fmt_lag(s.ttl_headroom_seconds)
        )
        rows.append(
            (
                s.table, cursor, fmt_lag(s.lag_seconds), f"{s.iceberg_rows:,}" if s.iceberg_rows is not None else "?",
                headroom + (" RISK" if s.ttl_risk else ""), last,
            )
        )  # fmt: skip
    columns(header, rows)
    print(
        "lag: newest source row minus the cursor ('-': nothing offloaded yet, or the source cannot be read); ttl headroom: "
        "time before the source's TTL deletes the oldest row not offloaded yet ('-': the source has no row-deleting TTL)"
    )
    print_replicas(app)
    for s in statuses:
        if s.problem:
            print(f"{s.table}: {s.problem}", file=sys.stderr)
    return code


def print_replicas(app: Any) -> None:
    """The live `offloader run` replicas, and the tables each owns."""
    live, owned = app.live_replicas(), app.owners()
    print(f"live replicas: {len(live) or 'none'}")
    for r in live:
        tables = ", ".join(t for t, who in owned.items() if who == r.replica_id) or "-"
        print(
            f"  {r.replica_id}  host={r.host} pid={r.pid} version={r.version} heartbeat {time.time() - r.heartbeat_at:.0f}s ago  owns: {tables}"
        )


def history(app: Any, table: str | None, limit: int) -> int:
    if table:
        app.config.table(table)
    runs = app.state.runs(table, limit)
    rows = [
        (
            f"{_when(run.started_at)}Z", run.table_name, run.outcome, f"{run.rows_written:,}", run.files_written, run.windows,
            f"{run.duration_seconds:.2f}s" if run.duration_seconds is not None else "-", run.replica or "-", run.run_id,
            f"{run.error_class}: {run.error_message}" if run.error_class else "",
        )
        for run in runs
    ]  # fmt: skip
    if not rows:
        print("no run recorded" + (f" for {table}" if table else ""))
        return EXIT_OK
    columns(("started", "table", "outcome", "rows", "files", "windows", "took", "replica", "run", "error"), rows)
    _cut_note(len(rows), limit, "runs")
    return EXIT_OK


def maintain(app: Any, table: str | None, dry_run: bool, stop: threading.Event) -> int:
    tables = [app.config.table(table)] if table else None
    failed = 0
    for r in app.maintain(tables, dry_run=dry_run, stop=stop):
        label = "would do" if dry_run and r.outcome == "ok" else r.outcome.replace("_", " ")
        files = f" files {r.files_before} -> {r.files_after};" if r.files_before is not None else ""
        line = f"{r.table}: {r.action}: {label}:{files} {r.detail}"
        if r.outcome in {"failed", "skipped"}:
            failed += 1
            print(line, file=sys.stderr)
        else:
            print(line)
    return EXIT_FAILED if failed else EXIT_OK


def since_time(text: str | None) -> str | None:
    """``--since``: a UTC time, or an age such as "7d" counted back from now."""
    from datetime import UTC, datetime, timedelta

    from offloader.config import parse_duration
    from offloader.cursor import format_time, parse_time

    if text is None:
        return None
    try:
        return format_time(datetime.now(UTC) - timedelta(seconds=parse_duration(text)))
    except ValueError:
        pass
    try:
        return format_time(parse_time(text.replace("T", " ").rstrip("Z")))
    except ValueError:
        raise UsageError(
            f'--since = {text!r}: expected a UTC time such as "2026-11-01 00:00:00" or an age such as "7d"'
        ) from None


def check(app: Any, table: str | None, since: str | None, repair: bool, stop: threading.Event) -> int:
    from offloader.clickhouse import NO_EMBEDDED_ENGINE, embedded_engine_available

    if not embedded_engine_available():
        raise ConfigError(f"check needs the embedded ClickHouse engine for Iceberg's checksums: {NO_EMBEDDED_ENGINE}")
    tables = [app.config.table(table)] if table else None
    bad = 0
    for r in app.check(tables, since=since_time(since), repair=repair, stop=stop):
        if r.outcome in {"failed", "skipped"}:
            bad += 1
            print(f"{r.table}: check {r.outcome}: {r.detail}", file=sys.stderr)
            continue
        if r.lo is None:
            print(f"{r.table}: nothing to compare: {r.detail}")
            continue
        state = {"ok": "consistent", "differs": "DIFFERS", "repaired": "repaired"}[r.outcome]
        print(f"{r.table}: {state}: {len(r.differing)} of {r.buckets} buckets differ between {r.lo} and {r.hi}")
        for b in r.differing[:50]:
            print(f"  {b.start}  clickhouse={b.source_rows:,}  iceberg={b.iceberg_rows:,}  ({b.iceberg_rows - b.source_rows:+,})")
        if len(r.differing) > 50:
            print(f"  ... and {len(r.differing) - 50} more buckets")
        if r.outcome == "differs":
            bad += 1
            print(f"  missing in Iceberg: {r.missing_rows:,} rows; extra in Iceberg: {r.extra_rows:,} rows")
    return EXIT_FAILED if bad else EXIT_OK


def reset(app: Any, args: argparse.Namespace) -> int:
    from offloader.cursor import format_time, parse_time

    if args.table and args.table_option and args.table != args.table_option:
        raise UsageError(f"table {args.table!r} and --table {args.table_option!r}: name the table once")
    if not (args.table or args.table_option):
        raise UsageError("--table: missing; name the table to reset (`offloader reset --table NAME --to TIME`)")
    table, to, yes = args.table or args.table_option, args.to, args.yes
    config = app.config.table(table, "table" if args.table else "--table")
    try:
        moment = format_time(parse_time(to.replace("T", " ").rstrip("Z")))
    except ValueError:
        raise UsageError(f'--to = {to!r}: expected a UTC time such as "2026-11-20 00:00:00"') from None
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("reset deletes rows from Iceberg: pass --yes to confirm when not on a terminal")
        answer = input(f"Delete the rows of {config.target} after {moment} UTC and move the cursor of {table} back? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("nothing changed")
            return EXIT_FAILED
    done = app.reset(config, moment)
    print(
        f"{table}: cursor moved from {done.old_cursor} to {done.new_cursor}; {done.rows_deleted:,} rows deleted from "
        f"Iceberg (snapshot {done.snapshot_id}); the next cycle offloads them again"
    )
    return EXIT_OK


def audit(app: Any, table: str | None, action: str | None, limit: int) -> int:
    if table:
        app.config.table(table)
    entries = app.state.audits(table, action, limit)
    rows = [
        (
            f"{_when(r.started_at)}Z", r.table_name, r.action, r.outcome, "yes" if r.dry_run else "no",
            "-" if r.files_before is None else f"{r.files_before} -> {r.files_after}", f"{r.duration_seconds:.2f}s", r.detail or "",
        )
        for r in entries
    ]  # fmt: skip
    if not rows:
        print("no audit entry" + (f" for {table}" if table else ""))
        return EXIT_OK
    columns(("started", "table", "action", "outcome", "dry run", "files", "took", "detail"), rows)
    _cut_note(len(rows), limit, "entries")
    return EXIT_OK

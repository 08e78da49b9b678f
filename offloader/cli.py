"""The command line: ``offloader [--config PATH] COMMAND``.

Commands: ``once`` (one cycle), ``backfill`` (a table's history by parallel workers), ``status``, ``history``, ``run`` (the service), ``maintain``,
``check``, ``reset``, ``audit``, ``demo seed`` and ``mirror reset``. Every failure ends in a precise one-line message per problem on
stderr and a non-zero exit: 2 for bad config or usage, 1 for a failed table or a dead
server (``status`` too, after printing what it could read), 70 for an internal error (its
traceback only with ``--debug``, or in a JSON log as the ``internal_error`` event, without locals).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from offloader import __version__, cli_backfill, cli_demo, cli_federate, footprint, log
from offloader.config import Config, TableConfig
from offloader.config_loader import load_config
from offloader.errors import EXIT_FAILED, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, ConfigError, OffloaderError
from offloader.results import AUDITED_ACTIONS, Observer, TableResult


class _Progress(Observer):
    """Shows backfill progress on a terminal (stderr); silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = 0.0

    def progress(self, table: TableConfig, done: int, total: int) -> None:
        if not self.enabled or time.monotonic() - self._last < 0.2 and done < total:
            return
        self._last = time.monotonic()
        pct = 100.0 * done / total if total else 100.0
        end = "\n" if done >= total else ""
        print(f"\r  {table.name}: {done:,}/{total:,} rows ({pct:5.1f}%)", end=end, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offloader", description="Offload ClickHouse tables into Apache Iceberg, exactly once.")
    parser.add_argument("--config", help="TOML config file (default: $OFFLOADER_CONFIG, else the embedded default)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override logging.level")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    parser.add_argument("--version", action="version", version=f"offloader {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    once = sub.add_parser("once", help="run one cycle of every table (or of one table)")
    once.add_argument("--table", help="only this table")

    cli_backfill.add_parser(sub)
    cli_federate.add_parser(sub)

    status = sub.add_parser("status", help="cursor, lag, rows in Iceberg and last run of every table")
    status.add_argument("--json", action="store_true", help="print JSON")

    history = sub.add_parser("history", help="the run history")
    history.add_argument("--table")
    history.add_argument("--limit", type=int, default=20)

    sub.add_parser("run", help="the long-running service: scheduled cycles, /metrics, /healthz, /readyz, /status")

    maintain = sub.add_parser("maintain", help="compact small files, expire old snapshots, remove orphan files")
    maintain.add_argument("--table", help="only this table")
    maintain.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")

    check = sub.add_parser("check", help="compare ClickHouse and Iceberg per time bucket; exit 1 when a bucket differs")
    check.add_argument("--table", help="only this table")
    check.add_argument("--since", help='start of the compared range: a UTC time ("2026-11-01 00:00:00") or an age ("7d")')
    check.add_argument("--repair", action="store_true", help="re-offload every differing bucket, one commit per bucket")

    rewind = sub.add_parser("reset", help="move a table's cursor back: delete its Iceberg rows after a time")
    rewind.add_argument("table", help="the table (its [[tables]] name)")
    rewind.add_argument("--to", required=True, help='the UTC time to go back to, e.g. "2026-11-20 00:00:00"')
    rewind.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed when not on a terminal)")

    audit = sub.add_parser("audit", help="the maintenance audit log")
    audit.add_argument("--table")
    audit.add_argument("--action", choices=AUDITED_ACTIONS)
    audit.add_argument("--limit", type=int, default=20)

    demo = sub.add_parser("demo", help="the embedded market-data demo")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True, metavar="DEMO_COMMAND")
    seed = demo_sub.add_parser("seed", help="fill the embedded source with market data")
    seed.add_argument("--rows", type=int, default=1_000_000, help="bronze trade rows to add (default 1,000,000)")
    seed.add_argument("--hours", type=float, default=6.0, help="hours of history the rows span, ending now")
    live = demo_sub.add_parser("run", help="seed if empty, keep a live trade feed going, and run the service")
    live.add_argument("--rows", type=int, default=200_000, help="rows to seed when the source is empty")
    live.add_argument("--interval", default="5s", help='seconds between cycles (default "5s")')
    live.add_argument("--feed-rows", type=int, default=200, help="trades added every second by the live feed")

    mirror = sub.add_parser("mirror", help="the state mirror of the Iceberg cursors")
    mirror_sub = mirror.add_subparsers(dest="mirror_command", required=True, metavar="MIRROR_COMMAND")
    reset = mirror_sub.add_parser("reset", help="forget a table's mirror; the next run rebuilds it from Iceberg")
    reset.add_argument("--table", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from offloader.demo import embedded_default

        config = load_config(args.config, default=embedded_default)
        service = args.command == "run" or (args.command == "demo" and args.demo_command == "run")
        log.configure(
            args.log_level or config.logging.level, config.logging.format, sys.stdout if service else sys.stderr, args.debug
        )
        log.bind_process(replica=config.replica.id)
        return _dispatch(args, config)
    except ConfigError as exc:
        print(f"offloader: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OffloaderError as exc:
        print(f"offloader: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("offloader: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: a message, never a bare traceback
        if args.debug:
            raise
        log.internal_error(exc)
        print(f"offloader: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    from offloader.app import App

    if args.command == "demo" and args.demo_command == "seed":
        return cli_demo.seed(config, args.rows, args.hours)
    if args.command == "demo":
        return cli_demo.run(config, args, _serve)
    if args.command == "run" and not config.source.embedded:
        footprint.leave_out_pandas()  # only the embedded engine needs it: about 40 MiB less, idle
    app = App(config)
    try:
        if args.command == "once":
            tables = [config.table(args.table)] if args.table else None
            stop = _stop_on_signals()
            results = app.run_cycle(tables, observer=_Progress(sys.stderr.isatty()), stop=stop)
            code = _report(results)
            if config.origin == "embedded default" and any("does not exist" in r.reason for r in results):
                print("hint: the embedded source is empty; fill it with `offloader demo seed`", file=sys.stderr)
            return 130 if stop.is_set() else code
        if args.command == "backfill":
            return cli_backfill.run(app, args, _Progress(sys.stderr.isatty()), _stop_on_signals())
        if args.command == "federate":
            return cli_federate.run(app, args)
        if args.command == "status":
            return _status(app, args.json)
        if args.command == "history":
            return _history(app, args.table, args.limit)
        if args.command == "run":
            return _serve(app)
        if args.command == "maintain":
            return _maintain(app, args.table, args.dry_run)
        if args.command == "check":
            return _check(app, args.table, args.since, args.repair)
        if args.command == "reset":
            return _reset(app, args.table, args.to, args.yes)
        if args.command == "audit":
            return _audit(app, args.table, args.action, args.limit)
        if args.command == "mirror":
            config.table(args.table)
            app.state.delete_mirror(args.table)
            print(f"mirror of {args.table} forgotten; the next run rebuilds it from the Iceberg marker")
            return EXIT_OK
    finally:
        app.close()
    return EXIT_USAGE


def _stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM during `once`: the table in flight abandons its window before the commit."""
    import signal

    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second signal: leave now
            raise KeyboardInterrupt
        print("offloader: stopping; the window in flight is abandoned before its commit", file=sys.stderr)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return stop


def _report(results: list[TableResult]) -> int:
    failed = 0
    for r in results:
        if r.outcome == "committed":
            print(f"{r.table}: committed {r.rows:,} rows in {r.windows} window(s), {r.files} file(s), {r.duration:.2f}s")
        elif r.outcome == "nothing_new":
            print(f"{r.table}: nothing new ({r.duration:.2f}s)")
        elif r.outcome == "stopped":
            print(f"{r.table}: stopped after {r.rows:,} rows in {r.windows} window(s): {r.reason}")
        elif r.outcome == "skipped":
            print(f"{r.table}: skipped: {r.reason}")
            failed += 0 if r.error is not None else 1  # a lock held elsewhere is not a failure
        else:
            failed += 1
            print(f"{r.table}: FAILED: {r.reason}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _fmt_lag(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _status(app: Any, as_json: bool) -> int:
    """Print what can be read; exit 1 when a server is down or a table could not be read."""
    statuses = app.status()
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
            else "inf"
            if s.ttl_headroom_seconds == float("inf")
            else _fmt_lag(s.ttl_headroom_seconds)
        )
        rows.append(
            (
                s.table, cursor, _fmt_lag(s.lag_seconds), f"{s.iceberg_rows:,}" if s.iceberg_rows is not None else "?",
                headroom + (" RISK" if s.ttl_risk else ""), last,
            )
        )  # fmt: skip
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    _print_replicas(app)
    for s in statuses:
        if s.problem:
            print(f"{s.table}: {s.problem}", file=sys.stderr)
    return code


def _print_replicas(app: Any) -> None:
    """The live `offloader run` replicas, and the tables each owns."""
    live, owned = app.live_replicas(), app.owners()
    print(f"live replicas: {len(live) or 'none'}")
    for r in live:
        tables = ", ".join(t for t, who in owned.items() if who == r.replica_id) or "-"
        print(
            f"  {r.replica_id}  host={r.host} pid={r.pid} version={r.version} heartbeat {time.time() - r.heartbeat_at:.0f}s ago  owns: {tables}"
        )


def _history(app: Any, table: str | None, limit: int) -> int:
    if table:
        app.config.table(table)
    for run in app.state.runs(table, limit):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run.started_at))
        error = f"  {run.error_class}: {run.error_message}" if run.error_class else ""
        duration = f"{run.duration_seconds:.2f}s" if run.duration_seconds is not None else "-"
        print(
            f"{started}Z  {run.table_name}  {run.outcome}  rows={run.rows_written:,} files={run.files_written} "
            f"windows={run.windows} {duration}  run={run.run_id} replica={run.replica or '-'}{error}"
        )
    return EXIT_OK


def _maintain(app: Any, table: str | None, dry_run: bool) -> int:
    tables = [app.config.table(table)] if table else None
    failed = 0
    for r in app.maintain(tables, dry_run=dry_run, stop=_stop_on_signals()):
        label = "would do" if dry_run and r.outcome == "ok" else r.outcome.replace("_", " ")
        files = f" files {r.files_before} -> {r.files_after};" if r.files_before is not None else ""
        line = f"{r.table}: {r.action}: {label}:{files} {r.detail}"
        if r.outcome in {"failed", "skipped"}:
            failed += 1
            print(line, file=sys.stderr)
        else:
            print(line)
    return EXIT_FAILED if failed else EXIT_OK


def _since(text: str | None) -> str | None:
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
        raise ConfigError(
            f'--since = {text!r}: expected a UTC time such as "2026-11-01 00:00:00" or an age such as "7d"'
        ) from None


def _check(app: Any, table: str | None, since: str | None, repair: bool) -> int:
    from offloader.clickhouse import NO_EMBEDDED_ENGINE, embedded_engine_available

    if not embedded_engine_available():
        raise ConfigError(f"check needs the embedded ClickHouse engine for Iceberg's checksums: {NO_EMBEDDED_ENGINE}")
    tables = [app.config.table(table)] if table else None
    bad = 0
    for r in app.check(tables, since=_since(since), repair=repair, stop=_stop_on_signals()):
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


def _reset(app: Any, table: str, to: str, yes: bool) -> int:
    from offloader.cursor import format_time, parse_time

    config = app.config.table(table)
    try:
        moment = format_time(parse_time(to.replace("T", " ").rstrip("Z")))
    except ValueError:
        raise ConfigError(f'--to = {to!r}: expected a UTC time such as "2026-11-20 00:00:00"') from None
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("reset deletes rows from Iceberg: pass --yes to confirm when not on a terminal")
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


def _audit(app: Any, table: str | None, action: str | None, limit: int) -> int:
    if table:
        app.config.table(table)
    for r in app.state.audits(table, action, limit):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.started_at))
        files = f" files {r.files_before} -> {r.files_after}" if r.files_before is not None else ""
        dry = " (dry run)" if r.dry_run else ""
        print(f"{started}Z  {r.table_name}  {r.action}  {r.outcome}{dry}{files}  {r.duration_seconds:.2f}s  {r.detail or ''}")
    return EXIT_OK


def _serve(app: Any, before_wait: Any = None) -> int:
    """The service: scheduler and HTTP endpoints until SIGTERM/SIGINT; exit 0 when stopped cleanly."""
    from offloader.server import serve
    from offloader.service import Service

    service = Service(app)
    service.install_signal_handlers()
    server = None
    if app.config.server.enabled:
        try:
            server, _ = serve(service, app.config.server.host, app.config.server.port)
        except OSError as exc:
            raise ConfigError(
                f"server.port = {app.config.server.port}: cannot listen on {app.config.server.host}:{app.config.server.port} ({exc.strerror})"
            ) from None
    service.start()
    if before_wait is not None:
        before_wait(service)
    try:
        service.wait()
    finally:
        if server is not None:
            server.shutdown()
    return EXIT_OK


def entrypoint() -> None:
    os.environ.setdefault("PYICEBERG_DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE", "false")
    sys.exit(main())

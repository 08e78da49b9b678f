"""The command line: ``offloader [--config PATH] COMMAND``.

Commands: ``once`` (one cycle), ``backfill`` (a table's history by parallel workers), ``status``, ``history``, ``run`` (the service), ``maintain``,
``check``, ``reset``, ``rollback``, ``audit``, ``catalog recover``, ``demo seed`` and ``mirror reset``. Every failure ends in a precise one-line message per problem on
stderr and a non-zero exit: 2 for bad config or usage, 1 for a failed table or a dead
server (``status`` too, after printing what it could read), 70 for an internal error (its
traceback only with ``--debug``, or in a JSON log as the ``internal_error`` event, without locals).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from offloader import (
    __version__,
    cli_backfill,
    cli_catalog,
    cli_demo,
    cli_federate,
    cli_report,
    cli_rollback,
    cli_snapshots,
    faults,
    footprint,
    log,
    stops,
)
from offloader.config import Config, TableConfig
from offloader.config_loader import load_config
from offloader.errors import EXIT_FAILED, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, ConfigError, OffloaderError
from offloader.results import AUDITED_ACTIONS, Observer


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
        log.show_progress(f"  {table.name}: {done:,}/{total:,} rows ({pct:5.1f}%)", sys.stderr, done=done >= total)


EXAMPLES = {
    "once": "offloader once --table bronze_trades_binance",
    "backfill": 'offloader backfill --table silver_trades --from "2025-01-01 00:00:00" --workers 2',
    "snapshots": 'offloader snapshots --as-of "2026-12-07 10:15:00" --json',
    "federate": "offloader federate --table bronze_trades_binance --apply",
    "status": "offloader status --table silver_trades",
    "history": "offloader history --table silver_trades --limit 50",
    "run": "offloader --config /etc/offloader/offloader.toml run",
    "maintain": "offloader maintain --table silver_trades --dry-run",
    "check": "offloader check --since 7d --repair",
    "reset": 'offloader reset --table silver_trades --to "2026-11-20 00:00:00" --yes',
    "rollback": "offloader rollback --table silver_trades --to 4851302371512305187 --yes",
    "audit": "offloader audit --action compact --limit 10",
    "demo": "offloader demo seed --rows 1000000",
    "mirror": "offloader mirror reset --table silver_trades",
    "catalog": "offloader catalog recover --dry-run",
}


def positive(text: str) -> int:
    """An argument that must be a whole number of at least 1 (``--limit``)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offloader", description="Offload ClickHouse tables into Apache Iceberg, exactly once.")
    parser.add_argument("--version", action="version", version=f"offloader {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    once = sub.add_parser("once", help="run one cycle of every table (or of one table)")
    once.add_argument("--table", help="only this table (default: every table, in dependency order)")

    cli_backfill.add_parser(sub)
    cli_snapshots.add_parser(sub)
    cli_federate.add_parser(sub)
    cli_catalog.add_parser(sub)

    status = sub.add_parser("status", help="cursor, lag, rows in Iceberg and last run of every table")
    status.add_argument("--table", help="only this table (default: every table)")
    status.add_argument("--json", action="store_true", help="print JSON")

    history = sub.add_parser("history", help="the run history, newest first")
    history.add_argument("--table", help="only this table's runs (default: every table)")
    history.add_argument("--limit", type=positive, default=20, help="at most this many runs")

    sub.add_parser("run", help="the long-running service: scheduled cycles, the page at /, /metrics, /healthz, /readyz, /status")

    maintain = sub.add_parser("maintain", help="compact small files, expire old snapshots, remove orphan files")
    maintain.add_argument("--table", help="only this table (default: every table)")
    maintain.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing, record nothing")

    check = sub.add_parser("check", help="compare ClickHouse and Iceberg per time bucket; exit 1 when a bucket differs")
    check.add_argument("--table", help="only this table (default: every table)")
    check.add_argument(
        "--since", help='start of the compared range: a UTC time ("2026-11-01 00:00:00") or an age ("7d"); default: all'
    )
    check.add_argument("--repair", action="store_true", help="re-offload every differing bucket, one commit per bucket")

    rewind = sub.add_parser("reset", help="move a table's cursor back: delete its Iceberg rows after a time")
    rewind.add_argument("table", nargs="?", help="the table (its [[tables]] name); or give it with --table")
    rewind.add_argument("--table", dest="table_option", metavar="NAME", help="the table (its [[tables]] name)")
    rewind.add_argument("--to", required=True, help='the UTC time to go back to, e.g. "2026-11-20 00:00:00"')
    rewind.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed when not on a terminal)")

    cli_rollback.add_parser(sub)

    audit = sub.add_parser("audit", help="the maintenance audit log, newest first")
    audit.add_argument("--table", help="only this table's entries (default: every table)")
    audit.add_argument("--action", choices=AUDITED_ACTIONS, help="only this action (default: every action)")
    audit.add_argument("--limit", type=positive, default=20, help="at most this many entries")

    demo = sub.add_parser("demo", help="the embedded market-data demo")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True, metavar="DEMO_COMMAND")
    seed = demo_sub.add_parser("seed", help="fill the embedded source with market data")
    seed.add_argument("--rows", type=int, default=1_000_000, help="bronze trade rows to add")
    seed.add_argument("--hours", type=float, default=6.0, help="hours of history the rows span, ending now")
    live = demo_sub.add_parser("run", help="seed if empty, keep a live trade feed going, and run the service")
    live.add_argument("--rows", type=int, default=200_000, help="rows to seed when the source is empty")
    live.add_argument("--interval", default="5s", help="time between cycles")
    live.add_argument("--feed-rows", type=int, default=200, help="trades added every second by the live feed")

    mirror = sub.add_parser("mirror", help="the state mirror of the Iceberg cursors")
    mirror_sub = mirror.add_subparsers(dest="mirror_command", required=True, metavar="MIRROR_COMMAND")
    reset = mirror_sub.add_parser("reset", help="forget a table's mirror; the next run rebuilds it from Iceberg")
    reset.add_argument("--table", required=True, help="the table whose mirror is forgotten")
    _everywhere(parser, top=True)
    return parser


def _everywhere(parser: argparse.ArgumentParser, top: bool = False, name: str = "") -> None:
    """The global options on every (sub)command, before or after it; defaults in every help;
    each command's description and example."""
    default = None if top else argparse.SUPPRESS  # a subcommand's own copy never hides the top one
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument(
        "--config", default=default, help="TOML config file (default: $OFFLOADER_CONFIG, else the embedded default)"
    )
    parser.add_argument(
        "--log-level", default=default, choices=["debug", "info", "warning", "error"], help="override logging.level"
    )
    parser.add_argument("--debug", default=default, action="store_true", help="show tracebacks of internal errors")
    if name in EXAMPLES:
        parser.epilog = f"example: {EXAMPLES[name]}"
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its subcommands here only
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child_name, child in action.choices.items():
                if child.description is None:
                    child.description = next((a.help for a in action._choices_actions if a.dest == child_name), None)  # noqa: SLF001
                _everywhere(child, name=child_name if top else name)


# Commands that take SIGTERM/SIGINT over (stop at a window's edge, or shut the service down);
# the others get Python's defaults back before they start.
_STOPPABLE = frozenset({"once", "backfill", "run", "maintain", "check", "demo run"})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "demo_command", None))))
    if command not in _STOPPABLE:
        stops.release()
    try:
        from offloader.demo import embedded_default

        config = load_config(args.config, default=embedded_default)
        service = command in {"run", "demo run"}
        quiet = not service and sys.stderr.isatty()  # a person at a terminal: the result lines, warnings and errors
        level = args.log_level or ("warning" if quiet else config.logging.level)
        log.configure(level, config.logging.format, sys.stdout if service else sys.stderr, args.debug)
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
            code = cli_report.report(results)
            if config.origin == "embedded default" and any("does not exist" in r.reason for r in results):
                print("hint: the embedded source is empty; fill it with `offloader demo seed`", file=sys.stderr)
            return 130 if stop.is_set() else code
        if args.command == "backfill":
            return cli_backfill.run(app, args, _Progress(sys.stderr.isatty()), _stop_on_signals())
        if args.command == "snapshots":
            return cli_snapshots.run(app, args)
        if args.command == "federate":
            return cli_federate.run(app, args)
        if args.command == "catalog":
            return cli_catalog.run(app, args)
        if args.command == "status":
            return cli_report.status(app, args.json, args.table)
        if args.command == "history":
            return cli_report.history(app, args.table, args.limit)
        if args.command == "run":
            return _serve(app)
        if args.command == "maintain":
            return cli_report.maintain(app, args.table, args.dry_run, _stop_on_signals())
        if args.command == "check":
            return cli_report.check(app, args.table, args.since, args.repair, _stop_on_signals())
        if args.command == "reset":
            return cli_report.reset(app, args)
        if args.command == "rollback":
            return cli_rollback.run(app, args)
        if args.command == "audit":
            return cli_report.audit(app, args.table, args.action, args.limit)
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
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second signal: leave now
            raise KeyboardInterrupt
        print("offloader: stopping; the window in flight is abandoned before its commit", file=sys.stderr)
        stop.set()

    stops.take_over(handler)
    return stop


def _serve(app: Any, before_wait: Any = None) -> int:
    """The service: scheduler and HTTP endpoints until SIGTERM/SIGINT; exit 0 when stopped cleanly."""
    from offloader.server import serve
    from offloader.service import Service

    service = Service(app)
    faults.checkpoint("starting")
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

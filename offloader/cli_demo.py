"""The demo's commands: ``offloader demo seed`` and ``offloader demo run``.

``seed`` fills the embedded source with market data; ``run`` seeds it if empty, keeps a live
trade feed going and runs the service on a short schedule, for a first look.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from offloader.config import Config
from offloader.errors import EXIT_OK, ConfigError, OffloaderError, UsageError


def run(config: Config, args: argparse.Namespace, serve: Callable[..., int]) -> int:
    """Seed if empty, feed live trades into the embedded source, run the service on a short schedule."""
    import dataclasses

    from offloader import demo, demo_feed
    from offloader.app import App
    from offloader.config import parse_duration

    if not config.source.embedded:
        raise ConfigError(f"source.dsn = {config.source.display_dsn!r}: demo run needs the embedded engine (chdb://...)")
    try:
        interval = parse_duration(args.interval)
    except ValueError:
        raise UsageError(f'--interval = {args.interval!r}: expected a duration such as "5s"') from None
    config = dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, interval=max(interval, 1.0)))
    app = App(config)
    try:
        demo.ensure_schema(app.engine)
        if demo.is_empty(app.engine):
            print(f"seeding {args.rows:,} trades into {config.source.display_dsn} ...", file=sys.stderr)
            demo_feed.seed(app.engine, args.rows)
        stop = threading.Event()

        def feed() -> None:
            log_ = __import__("structlog").get_logger("offloader")
            while not stop.wait(1.0):
                try:
                    demo_feed.live_batch(app.engine, args.feed_rows)
                except OffloaderError as exc:
                    log_.warning("demo_feed_failed", error=str(exc))

        def start_feed(service: Any) -> None:
            threading.Thread(target=feed, name="offloader-demo-feed", daemon=True).start()
            where = f"http://{config.server.host}:{config.server.port}"
            print(f"offloader demo: live feed running; see {where}/status and {where}/metrics (Ctrl-C stops)", file=sys.stderr)

        try:
            return serve(app, before_wait=start_feed)
        finally:
            stop.set()
    finally:
        app.close()


def seed(config: Config, rows: int, hours: float) -> int:
    """Fill the embedded source with ``rows`` trades over the last ``hours``."""
    from offloader import demo, demo_feed
    from offloader.clickhouse import connect

    if rows <= 0:
        raise UsageError(f"--rows = {rows}: expected a positive number of rows")
    if not config.source.embedded:
        raise ConfigError(f"source.dsn = {config.source.display_dsn!r}: demo seed only fills the embedded engine (chdb://...)")
    engine = connect(config.source)
    try:
        tty = sys.stderr.isatty()
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            if tty:
                print(f"\r  seeding: {done:,}/{total:,} rows", end="\n" if done >= total else "", file=sys.stderr, flush=True)

        demo.ensure_schema(engine)
        added = demo_feed.seed(engine, rows, hours=hours, progress=progress)
        print(f"seeded {added:,} bronze trade rows into {config.source.display_dsn} in {time.monotonic() - started:.1f}s")
    finally:
        engine.close()
    return EXIT_OK

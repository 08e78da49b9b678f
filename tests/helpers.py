"""What the tests share that is not a fixture: paths, the test's workspace, the one way to run
the CLI, readers of the cold tier and the assertions that it is exact.

Fixtures and hooks live in tests/conftest.py and build the objects defined here. No test
module imports another test module: what two of them need is here, or, for one concern, in
tests/storage.py (object storage and catalogs), tests/typecases.py (edge values of every
type), tests/faultproxy.py or tests/chhttp.py.

- **Paths and servers:** :data:`ROOT`, :data:`PG_DSN`, :func:`pg_admin`,
  :func:`fresh_pg_database`, :func:`require_binary`, :func:`clean_env`.
- **The CLI:** :func:`cli_argv` builds ``python -m offloader [--config PATH] ARGS``,
  :func:`run_cli` runs it in a real subprocess and :func:`start_cli` starts it without
  waiting; :meth:`Workspace.cli`, :meth:`Workspace.run_once` and :meth:`Workspace.start` do
  the same on a workspace's config. (No test runs the CLI in-process: ``cli.main``
  configures logging for the whole process.)
- **A workspace:** :class:`Workspace` (chDB source, warehouse, PostgreSQL, config file),
  :func:`trades_table`, :func:`bars_table` and :func:`create_bars`.
- **Reading the cold tier back** with readers that share no code with offloader's writer:
  :func:`cold_keys` (ClickHouse's icebergLocal), :func:`duckdb_keys`, :func:`pyiceberg_keys`,
  :func:`full_rows`, :func:`iceberg_rows` (:func:`table_rows` of any catalog's table).
- **Exactness:** :func:`assert_same_rows`, :func:`assert_exact`, :func:`assert_bars_exact`;
  :func:`events` picks one event out of the log entries ``structlog.testing.capture_logs()`` caught.
- **Waiting and HTTP:** :func:`wait_for`, :func:`http_get`; Markdown heading
  :func:`anchors`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from storage import Storage, free_port

from offloader.clickhouse import ChdbEngine
from offloader.config import Config
from offloader.config_loader import load_config

ROOT = Path(__file__).resolve().parent.parent
PG_DSN = os.environ.get("OFFLOADER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

TRADES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.{table} (
    exchange_timestamp DateTime64(3, 'UTC'),
    ingestion_timestamp DateTime64(6, 'UTC'),
    sequence_number UInt64,
    symbol LowCardinality(String),
    side Enum8('buy' = 1, 'sell' = 2),
    price Decimal(18, 8),
    quantity Decimal(18, 8)
) ENGINE = MergeTree ORDER BY (ingestion_timestamp, sequence_number)
"""

# -- paths, servers and the environment ------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any OFFLOADER* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOADER")}
    env.update(extra)
    return env


def pg_admin() -> Any:
    """An autocommit connection to the test server's maintenance database."""
    import psycopg2

    conn = psycopg2.connect(PG_DSN.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=5)
    conn.autocommit = True
    return conn


@contextmanager
def fresh_pg_database(prefix: str = "offloader_t") -> Iterator[str]:
    """A new, empty PostgreSQL database on the test server, dropped on exit; its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = pg_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"{PG_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def require_binary(name: str, package: str = "prometheus") -> str:
    """The path of a tool the tests run; skipped without it, except in CI (``OFFLOADER_REQUIRE_PG``), where it fails."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("OFFLOADER_REQUIRE_PG"):
            pytest.fail(f"{name} is required in CI: apt-get install {package} (tests/run.sh tries)")
        pytest.skip(f"{name} not installed (apt-get install {package})")
    return path


# -- the CLI ---------------------------------------------------------------------------------


def cli_argv(*args: str, config: Path | None = None) -> list[str]:
    """The command line of ``offloader [--config CONFIG] ARGS`` with this interpreter."""
    return [sys.executable, "-m", "offloader", *(["--config", str(config)] if config else []), *args]


def run_cli(
    *args: str, config: Path | None = None, env: Mapping[str, str] | None = None, cwd: Path = ROOT, timeout: float | None = 300
) -> subprocess.CompletedProcess[str]:
    """``offloader [--config CONFIG] ARGS`` in a real subprocess, its output captured as text.

    Its environment is this process's without any OFFLOADER* setting, plus ``env``; its stdin is
    closed, so that it is never on a terminal. Without ``config`` it runs the embedded default
    (``OFFLOADER_DATA_DIR`` in ``env`` says where).
    """
    return subprocess.run(
        cli_argv(*args, config=config), capture_output=True, text=True, env=clean_env(**(env or {})), cwd=cwd,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def start_cli(
    *args: str, config: Path | None = None, env: Mapping[str, str] | None = None, cwd: Path = ROOT,
    stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE,
) -> subprocess.Popen[str]:  # fmt: skip
    """``offloader [--config CONFIG] ARGS`` started in a real subprocess and not waited for (a
    daemon, or a run to signal or kill), with the environment and stdin of :func:`run_cli`."""
    return subprocess.Popen(
        cli_argv(*args, config=config), stdout=stdout, stderr=stderr, text=True, env=clean_env(**(env or {})), cwd=cwd,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


# -- the workspace ---------------------------------------------------------------------------


@dataclass
class Workspace:
    """One test's world: a chDB data dir, a warehouse, a PostgreSQL database, a config file."""

    root: Path
    pg_dsn: str
    storage: Storage = None  # type: ignore[assignment]  # local files and the SQL catalog unless given
    tables: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=lambda: {"safety_lag": "0s", "max_window": "1h"})
    offload: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=lambda: {"retry_attempts": 1})
    server: dict[str, Any] = field(default_factory=dict)
    maintenance: dict[str, Any] = field(default_factory=dict)
    federate: dict[str, Any] = field(default_factory=dict)  # a [federate] section when given
    source_dsn: str | None = None  # overrides the chDB source, e.g. an HTTP endpoint (tests/chhttp.py)
    secret_files: bool = True  # the storage's secrets as catalog.<name>_file keys; else the caller's environment gives them
    _engine: ChdbEngine | None = None
    _duckdb: Any = None

    def __post_init__(self) -> None:
        if self.storage is None:
            self.storage = Storage(setup="local", pg_dsn=self.pg_dsn, root=self.root)

    @property
    def chdb_path(self) -> Path:
        return self.root / "clickhouse"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse"

    @property
    def config_path(self) -> Path:
        return self.root / "offloader.toml"

    @property
    def engine(self) -> ChdbEngine:
        """The test's own handle on the source; released before a subprocess opens it."""
        if self._engine is None:
            self._engine = ChdbEngine(str(self.chdb_path))
        return self._engine

    def release(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def target(self, target: str) -> str:
        """A configured target as the catalog names it (each test has namespaces of its own on REST)."""
        return self.storage.target(target)

    def write_config(self) -> Path:
        lines = [
            "[source]",
            f'dsn = "{self.source_dsn or f"chdb://{self.chdb_path}"}"',
            *(f"{k} = {toml_value(v)}" for k, v in self.source.items()),
            "[catalog]",
            *(f"{toml_key(k)} = {toml_value(v)}" for k, v in self.storage.catalog_properties().items()),
            *(f"{k} = {toml_value(str(v))}" for k, v in self._secret_files().items()),
            "[state]",
            f'dsn = "{self.pg_dsn}"',
            "[offload]",
            *(f"{k} = {toml_value(v)}" for k, v in self.offload.items()),
            "[schedule]",
            *(f"{k} = {toml_value(v)}" for k, v in self.schedule.items()),
            "[server]",
            *(f"{k} = {toml_value(v)}" for k, v in self.server.items()),
            "[maintenance]",
            *(f"{k} = {toml_value(v)}" for k, v in self.maintenance.items()),
            "[logging]",
            'format = "json"',
            *(["[federate]"] if self.federate else []),
            *(f"{k} = {toml_value(v)}" for k, v in self.federate.items()),
        ]
        for table in self.tables:
            lines.append("[[tables]]")
            lines += [f"{k} = {toml_value(self.target(v) if k == 'target' else v)}" for k, v in table.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def _secret_files(self) -> dict[str, Path]:
        """The storage's secrets as files (catalog.<name>_file), so every subprocess finds them."""
        out: dict[str, Path] = {}
        for variable, value in self.storage.env().items() if self.secret_files else ():
            name = variable.removeprefix("OFFLOADER__CATALOG__").lower()
            path = self.root / "secrets" / name
            path.parent.mkdir(exist_ok=True)
            path.write_text(value)
            out[f"{name}_file"] = path
        return out

    def config(self) -> Config:
        return load_config(self.write_config(), env={})

    def app(self) -> Any:
        from offloader.app import App

        return App(self.config(), engine=self.engine)

    def cli(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float | None = 300
    ) -> subprocess.CompletedProcess[str]:
        """`offloader --config <this workspace> ARGS` in a real subprocess (:func:`run_cli`), in the
        workspace: the config is written and the test's chDB handle released first (one process
        at a time may open the data directory)."""
        self.release()
        return run_cli(*args, config=self.write_config(), env=env, cwd=self.root, timeout=timeout)

    def start(
        self, *args: str, env: Mapping[str, str] | None = None, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE
    ) -> subprocess.Popen[str]:
        """`offloader --config <this workspace> ARGS` started and not waited for (:func:`start_cli`), in the workspace."""
        self.release()
        return start_cli(*args, config=self.write_config(), env=env, cwd=self.root, stdout=stdout, stderr=stderr)

    def run_once(self, *args: str, kill_at: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`offloader once` in a real subprocess; ``kill_at`` makes it SIGKILL itself there (offloader/faults.py)."""
        return self.cli("once", *args, env={"OFFLOADER_KILL_AT": kill_at} if kill_at else None, timeout=timeout)

    # -- source data -----------------------------------------------------------------------

    def create_trades(self, table: str = "trades", db: str = "k2") -> None:
        self.engine.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        self.engine.command(TRADES_DDL.format(db=db, table=table))

    def insert_trades(
        self, n: int, start: str = "2026-01-01 00:00:00", step_us: int = 1000, first_seq: int = 0,
        table: str = "k2.trades", same_ts: bool = False,
    ) -> None:  # fmt: skip
        """n trades from ``start`` (UTC), ``step_us`` apart (or all at one instant)."""
        offset = "0" if same_ts else f"number * {int(step_us)}"
        self.engine.command(
            f"INSERT INTO {table} SELECT "
            f"toDateTime64({{start:String}}, 3, 'UTC') + toIntervalMicrosecond({offset}), "
            f"toDateTime64({{start:String}}, 6, 'UTC') + toIntervalMicrosecond({offset}), "
            "{first:UInt64} + number, ['BTC-USDT', 'ETH-USDT', 'SOL-USDT'][number % 3 + 1], "
            "if(number % 2 = 0, 'buy', 'sell'), toDecimal64(30000 + (number % 1000) / 7, 8), "
            "toDecimal64((number % 97 + 1) / 1000, 8) FROM numbers({n:UInt64})",
            {"start": start, "first": first_seq, "n": n},
        )

    def source_rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.engine.rows(sql)

    # -- reading the cold tier back --------------------------------------------------------

    def iceberg_table(self, target: str) -> Any:
        """The table as PyIceberg loads it from the catalog, reaching the servers directly."""
        return load_table(self.storage, self.target(target))

    def iceberg_arrow(self, target: str) -> pa.Table:
        return self.iceberg_table(target).scan().to_arrow()

    def iceberg_local(self, target: str, columns: str = "*", order: str = "") -> list[tuple[Any, ...]]:
        """Read the table with ClickHouse's own Iceberg reader (icebergLocal, or icebergS3 on S3)."""
        function = self.storage.clickhouse_source(self.iceberg_table(target).metadata_location)
        order_by = f" ORDER BY {order}" if order else ""
        # chDB only lets file table functions read under its user_files_path, which is the
        # current directory: read from inside the workspace.
        here = os.getcwd()
        os.chdir(self.root)
        try:
            return self.engine.rows(f"SELECT {columns} FROM {function}{order_by}")
        finally:
            os.chdir(here)

    def duckdb_rows(self, target: str, columns: str = "*") -> list[tuple[Any, ...]]:
        """Read the table with DuckDB's Iceberg reader (iceberg_scan of the current metadata file)."""
        if self._duckdb is None:
            self._duckdb = self.storage.duckdb()
        location = self.iceberg_table(target).metadata_location.removeprefix("file://")
        return [tuple(r) for r in self._duckdb.execute(f"SELECT {columns} FROM iceberg_scan('{location}')").fetchall()]


def toml_key(key: str) -> str:
    return key if key.replace("_", "").isalnum() else toml_value(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def dedent(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


def trades_table(name: str = "trades", **overrides: Any) -> dict[str, Any]:
    """An append-mode [[tables]] entry for k2.<name> (create it with :meth:`Workspace.create_trades`)."""
    table = {
        "name": name,
        "source": f"k2.{name}",
        "target": f"cold.{name}",
        "layer": "bronze",
        "cursor": ["ingestion_timestamp", "sequence_number"],
        "partition_by": ["day(exchange_timestamp)"],
    }
    table.update(overrides)
    return table


def bars_table(**overrides: Any) -> dict[str, Any]:
    """A replace-mode table of one-minute bars over the trades (create its view with :func:`create_bars`)."""
    table = {
        "name": "bars", "source": "k2.bars", "target": "cold.bars", "layer": "gold", "cursor": ["window_start"],
        "partition_by": ["month(window_start)"], "mode": "replace", "replace_lookback": "2m",
    }  # fmt: skip
    table.update(overrides)
    return table


def create_bars(ws: Workspace) -> None:
    """The trades table and the bars view over it: a bar changes while trades land in its minute."""
    ws.create_trades()
    ws.engine.command(
        "CREATE VIEW k2.bars AS SELECT toStartOfMinute(exchange_timestamp) AS window_start, symbol, "
        "count() AS trades, sum(quantity) AS volume FROM k2.trades GROUP BY window_start, symbol"
    )


# -- reading the cold tier back --------------------------------------------------------------

KEY = "toString(ingestion_timestamp), sequence_number"
MICROS_KEY = "toUnixTimestamp64Micro(ingestion_timestamp), sequence_number"  # (epoch µs, sequence) in ClickHouse
BARS_KEY = "toString(toDateTime64(window_start, 6, 'UTC')), symbol, trades, toString(volume)"


def cold_keys(ws: Workspace, target: str = "cold.trades", columns: str = KEY) -> list[tuple[Any, ...]]:
    """The cold tier's keys, read by ClickHouse's own Iceberg reader."""
    return sorted(ws.iceberg_local(target, columns))


def duckdb_keys(ws: Workspace, target: str = "cold.trades") -> list[tuple[Any, ...]]:
    """The cold tier's keys, read by DuckDB's Iceberg reader, as (epoch microseconds, sequence)."""
    return sorted(ws.duckdb_rows(target, "epoch_us(ingestion_timestamp), sequence_number"))


def pyiceberg_keys(ws: Workspace, target: str = "cold.trades") -> list[tuple[Any, ...]]:
    """The cold tier's keys, read by PyIceberg, as (epoch microseconds, sequence)."""
    import pyarrow.compute as pc

    table = ws.iceberg_arrow(target)
    ts = pc.cast(table.column("ingestion_timestamp"), pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return sorted(zip(ts.to_pylist(), table.column("sequence_number").to_pylist(), strict=True))


def full_rows(ws: Workspace, target: str = "cold.trades") -> list[tuple[Any, ...]]:
    """Every column of the trades in Iceberg, as text, read by ClickHouse's own Iceberg reader."""
    cols = "toString(exchange_timestamp), toString(ingestion_timestamp), sequence_number, symbol, toString(side), toString(price), toString(quantity)"
    return sorted(ws.iceberg_local(target, cols))


def load_table(storage: Storage, identifier: str) -> Any:
    """The Iceberg table ``identifier`` as PyIceberg loads it from the storage's catalog, reaching the servers directly."""
    catalog = storage.catalog()
    try:
        return catalog.load_table(identifier)
    finally:
        if hasattr(catalog, "engine"):
            catalog.engine.dispose()


def table_rows(storage: Storage, identifier: str) -> int:
    """Rows committed to the Iceberg table ``identifier``, read by PyIceberg; 0 while it does not exist yet.

    Only a missing table counts as 0: any other error (the catalog down, a broken metadata
    file) fails the caller."""
    from pyiceberg.exceptions import NoSuchTableError

    try:
        table = load_table(storage, identifier)
    except NoSuchTableError:
        return 0
    return 0 if table.current_snapshot() is None else int(table.scan().to_arrow().num_rows)


def iceberg_rows(ws: Workspace, target: str = "cold.trades") -> int:
    """Rows committed to a workspace's table (:func:`table_rows`); 0 while it does not exist yet."""
    return table_rows(ws.storage, ws.target(target))


# -- exactness -------------------------------------------------------------------------------


def assert_same_rows(source: Sequence[tuple[Any, ...]], cold: Sequence[tuple[Any, ...]], reader: str = "Iceberg") -> None:
    """``cold`` holds exactly the rows of ``source``: none twice, none missing, none extra."""
    dupes = [k for k, n in Counter(cold).items() if n > 1]
    assert not dupes, f"{reader}: {len(dupes)} rows twice, e.g. {dupes[:3]}"
    missing = sorted(set(source) - set(cold))
    assert not missing, f"{reader}: {len(missing)} rows missing, e.g. {missing[:3]}"
    extra = sorted(set(cold) - set(source))
    assert not extra, f"{reader}: {len(extra)} rows not in the source, e.g. {extra[:3]}"
    assert sorted(cold) == sorted(source), reader


def assert_exact(
    ws: Workspace, table: str = "k2.trades", target: str = "cold.trades", *,
    source: Callable[[str], Sequence[tuple[Any, ...]]] | None = None, rows: int | None = None,
) -> None:  # fmt: skip
    """The cold tier equals the source row for row (none missing, none twice), read by PyIceberg,
    DuckDB and, when the test's own chDB handle reads the source, ClickHouse's icebergLocal.

    ``source`` runs a query on the source where the test cannot open the chDB directory (an
    HTTP endpoint owns it); ``rows`` is the number of source rows the test expects.
    """
    query = f"SELECT {MICROS_KEY} FROM {table}"
    src = sorted(tuple(r) for r in (source(query) if source else ws.engine.rows(query)))
    if rows is not None:
        assert len(src) == rows, f"the source holds {len(src)} rows, not {rows}"
    readers = {"PyIceberg": pyiceberg_keys(ws, target), "DuckDB": duckdb_keys(ws, target)}
    if source is None:
        readers["ClickHouse icebergLocal"] = cold_keys(ws, target, MICROS_KEY)
    for reader, cold in readers.items():
        assert_same_rows(src, cold, reader)


def assert_bars_exact(ws: Workspace, source: str = "k2.bars", target: str = "cold.bars") -> None:
    """Every bar of the source is in Iceberg once, unchanged, read by ClickHouse and by DuckDB."""
    expected = sorted(ws.engine.rows(f"SELECT {BARS_KEY} FROM {source}"))
    assert sorted(ws.iceberg_local(target, BARS_KEY)) == expected
    typed = "toUnixTimestamp64Micro(toDateTime64(window_start, 6, 'UTC')), symbol, trades, volume"
    expected_typed = sorted(ws.engine.rows(f"SELECT {typed} FROM {source}"))
    assert sorted(ws.duckdb_rows(target, "epoch_us(window_start), symbol, trades, volume")) == expected_typed


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    """The log entries of one event, from ``structlog.testing.capture_logs()``."""
    return [entry for entry in logs if entry["event"] == name]


# -- waiting, HTTP and documents -------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float = 90, what: str = "condition") -> Any:
    """The first truthy value of ``predicate``, polled until ``timeout``; a connection refused counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH: the status and the body, an error status included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:  # noqa: S310 - http on loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lstrip("#").strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of every heading of a Markdown file."""
    return {slug(line) for line in path.read_text().splitlines() if line.startswith("#")}


@contextmanager
def daemon(ws: Workspace, env: Mapping[str, str] | None = None, **streams: Any) -> Iterator[subprocess.Popen[str]]:
    """`offloader run` on the workspace, killed at the end if still running. The SQL catalog
    creates its tables first, so that no reader races the daemon doing it."""
    catalog = ws.storage.catalog()
    if hasattr(catalog, "engine"):
        catalog.engine.dispose()
    proc = ws.start("run", env=env, **streams)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def service_ws(ws: Workspace, interval: str = "2s") -> int:
    """The workspace set up for `offloader run`: a schedule, a free port for its endpoints (returned)."""
    port = free_port()
    ws.schedule.update(interval=interval, shutdown_timeout="30s")
    ws.server.update(port=port)
    return port

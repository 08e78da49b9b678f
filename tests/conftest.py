"""Test fixtures: a workspace per test with a real chDB source, real PostgreSQL, real Iceberg.

Every test that needs PostgreSQL gets a fresh database on the server named by
``OFFLOADER_TEST_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``), used
for both the Iceberg SQL catalog and offloader's state. With ``OFFLOADER_REQUIRE_PG=1``
(set by tests/run.sh, so in CI) an unreachable server fails the tests instead of skipping.

A test marked ``@pytest.mark.storage`` runs on each storage set-up of tests/storage.py (local
files, S3 with the SQL catalog, S3 with the REST catalog; ``fileio=True`` adds the fsspec
FileIO variants); the others run on local files. The S3 set-ups share one SeaweedFS server
per session, started on first use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from storage import FSSPEC_SETUPS, SETUPS, SeaweedFS, Storage

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


def _pg_admin() -> Any:
    import psycopg2

    conn = psycopg2.connect(PG_DSN.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=5)
    conn.autocommit = True
    return conn


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Storage-marked tests run once per set-up."""
    marker = metafunc.definition.get_closest_marker("storage")
    if marker is not None and "storage" in metafunc.fixturenames:
        setups = SETUPS + (FSSPEC_SETUPS if marker.kwargs.get("fileio") else ())
        metafunc.parametrize("storage", setups, indirect=True)


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real SeaweedFS (S3 + Iceberg REST catalog) for the session."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def storage(request: pytest.FixtureRequest, tmp_path: Path, pg_database: str) -> Storage:
    """The test's warehouse and catalog: local files and the SQL catalog unless the test is storage-marked."""
    setup = getattr(request, "param", "local")
    seaweed = request.getfixturevalue("seaweed_server") if setup.startswith("s3") else None
    return Storage(setup=setup, pg_dsn=pg_database, root=tmp_path, seaweed=seaweed)


@pytest.fixture(scope="session")
def pg_available() -> bool:
    try:
        _pg_admin().close()
        return True
    except Exception as exc:
        if os.environ.get("OFFLOADER_REQUIRE_PG"):
            pytest.fail(f"PostgreSQL is required but not reachable at {PG_DSN}: {exc}")
        return False


@pytest.fixture
def pg_database(pg_available: bool) -> Iterator[str]:
    """A fresh PostgreSQL database for one test; its DSN."""
    if not pg_available:
        pytest.skip(f"PostgreSQL not reachable at {PG_DSN}")
    name = f"offloader_t_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = PG_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


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
            *(f"{k} = {_toml(v)}" for k, v in self.source.items()),
            "[catalog]",
            *(f"{_toml_key(k)} = {_toml(v)}" for k, v in self.storage.catalog_properties().items()),
            *(f"{k} = {_toml(str(v))}" for k, v in self._secret_files().items()),
            "[state]",
            f'dsn = "{self.pg_dsn}"',
            "[offload]",
            *(f"{k} = {_toml(v)}" for k, v in self.offload.items()),
            "[schedule]",
            *(f"{k} = {_toml(v)}" for k, v in self.schedule.items()),
            "[server]",
            *(f"{k} = {_toml(v)}" for k, v in self.server.items()),
            "[maintenance]",
            *(f"{k} = {_toml(v)}" for k, v in self.maintenance.items()),
            "[logging]",
            'format = "json"',
        ]
        for table in self.tables:
            lines.append("[[tables]]")
            lines += [f"{k} = {_toml(self.target(v) if k == 'target' else v)}" for k, v in table.items()]
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

    def command(self, *args: str) -> list[str]:
        """The command line of `offloader --config <this workspace> ARGS`, ready to run in a
        subprocess: the config is written and the test's chDB handle released (one process
        at a time may open the data directory)."""
        self.release()
        self.write_config()
        return [sys.executable, "-m", "offloader", "--config", str(self.config_path), *args]

    def run_once(self, *args: str, kill_at: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`offloader once` in a real subprocess."""
        env = clean_env(OFFLOADER_KILL_AT=kill_at) if kill_at else clean_env()
        return subprocess.run(
            self.command("once", *args), capture_output=True, text=True, timeout=timeout, env=env, cwd=self.root
        )

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
        catalog = self.storage.catalog()
        try:
            return catalog.load_table(self.target(target))
        finally:
            if hasattr(catalog, "engine"):
                catalog.engine.dispose()

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


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any OFFLOADER* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOADER")}
    env.update(extra)
    return env


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").isalnum() else _toml(key)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def trades_table(name: str = "trades", **overrides: Any) -> dict[str, Any]:
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


@pytest.fixture
def ws(tmp_path: Path, pg_database: str, storage: Storage) -> Iterator[Workspace]:
    workspace = Workspace(root=tmp_path, pg_dsn=pg_database, storage=storage)
    try:
        yield workspace
    finally:
        workspace.release()


def dedent(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"

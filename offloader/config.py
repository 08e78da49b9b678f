"""Configuration: loading, environment overrides, validation, the embedded default.

A TOML file (``--config PATH`` or ``OFFLOADER_CONFIG``) is read, environment variables
``OFFLOADER__SECTION__KEY`` override single keys (``OFFLOADER__TABLES__<NAME>__KEY`` for one
table), and the result is validated as a whole: every problem is reported at once, one line
each, naming the key, the bad value and what would be accepted. With no file at all the
embedded default applies: chDB, SQLite and a local warehouse under one data directory.

Passwords and the other secrets never come from the file: only from
``OFFLOADER__<SECTION>__PASSWORD`` or a ``password_file`` key, and for the catalog's secret
properties (``SECRET_PROPERTIES``: S3 secret key, REST credential or token, ...) from
``OFFLOADER__CATALOG__<NAME>``, a ``<name>_file`` key or the standard AWS variables. They are
held in :class:`Secret`, whose ``repr`` hides the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from offloader.errors import ConfigError, UsageError

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
TRANSFORM = re.compile(
    r"^(?:(?P<fn>year|month|day|hour|identity|void)\((?P<col1>[A-Za-z_][A-Za-z0-9_]*)\)"
    r"|(?P<pfn>bucket|truncate)\((?P<n>\d+),\s*(?P<col2>[A-Za-z_][A-Za-z0-9_]*)\)"
    r"|(?P<col0>[A-Za-z_][A-Za-z0-9_]*))$"
)
LAYERS = ("bronze", "silver", "gold")
MODES = ("append", "replace")
CORRECTIONS = ("none", "mutations", "replacing")  # how corrected source rows reach Iceberg (docs/corrections.md)
ENV_PREFIX = "OFFLOADER__"
DEFAULT_DATA_DIR = ".offloader"
DEFAULT_FILE_SIZE = 128 * 2**20  # the data files offloader writes and compacts to, by default
DEFAULT_BATCH_SIZE = (
    8 * 2**20
)  # Arrow bytes per chunk (one row group): 8 MiB measured faster than 32 and 16, and a third of the memory


class Secret:
    """A password that never shows in logs, reprs or endpoints."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def parse_duration(text: str) -> float:
    """Parse ``"5m"``, ``"1h30m"``, ``"0s"``, ``"250ms"`` into seconds; raise ValueError otherwise."""
    text = str(text).strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(text)
    return total


def format_duration(seconds: float) -> str:
    """A duration as the config writes it, read back by :func:`parse_duration`: ``7d``, ``1h30m``, ``45s``, ``250ms``.
    Never in weeks: a reader counts ``7d`` at a glance."""
    if seconds == float("inf"):
        return "no limit"
    if 0 < seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    whole, out = int(round(seconds)), []
    for unit in ("d", "h", "m", "s"):
        size = int(_DURATION_UNITS[unit])
        count, whole = divmod(whole, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out) or "0s"


def parse_size(text: str | int) -> int:
    """Parse ``"128MiB"``, ``"64MB"`` or a byte count into bytes; raise ValueError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(text)
        return text
    match = _SIZE.match(str(text).strip())
    if not match:
        raise ValueError(text)
    value = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])
    if value <= 0:
        raise ValueError(text)
    return value


@dataclass(frozen=True)
class SourceConfig:
    dsn: str
    safety_lag: float = 300.0
    max_window: float = 86400.0
    max_window_rows: int = 10_000_000
    max_replica_delay: float = 3600.0  # above it a table does not move (offloader/replica_lag.py)
    user: str | None = None
    password: Secret | None = None
    query_timeout: float = 600.0
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return self.dsn.startswith("chdb:")

    @property
    def display_dsn(self) -> str:
        """The DSN as safe to show: no password ever."""
        return redact(self.dsn)


# Catalog and FileIO properties that carry a secret. They never come from the config file:
# each comes from OFFLOADER__CATALOG__<NAME> (the property upper-cased, "." and "-" as "_") or
# from the file named by catalog.<name>_file; the S3 keys also from the standard AWS variables.
SECRET_PROPERTIES = (
    "s3.secret-access-key", "s3.session-token", "client.secret-access-key", "client.session-token",
    "credential", "token", "adls.account-key", "adls.sas-token", "gcs.oauth2.token",
)  # fmt: skip
AWS_VARIABLES = {"s3.secret-access-key": "AWS_SECRET_ACCESS_KEY", "s3.session-token": "AWS_SESSION_TOKEN"}
DEFAULT_S3_REGION = "us-east-1"


def secret_name(prop: str) -> str:
    """``s3.secret-access-key`` -> ``s3_secret_access_key``: its name in the environment and its file key."""
    return re.sub(r"[.-]", "_", prop)


@dataclass(frozen=True)
class CatalogConfig:
    name: str
    properties: Mapping[str, str]
    password: Secret | None = None
    secrets: Mapping[str, Secret] = field(default_factory=dict)  # property -> value, e.g. s3.secret-access-key

    @property
    def warehouse(self) -> str:
        return self.properties.get("warehouse", "")


@dataclass(frozen=True)
class StateConfig:
    dsn: str
    password: Secret | None = None
    history_retention: float = 30 * 86400.0

    @property
    def is_sqlite(self) -> bool:
        return self.dsn.startswith("sqlite")

    @property
    def display_dsn(self) -> str:
        return redact(self.dsn)


@dataclass(frozen=True)
class TableConfig:
    name: str
    source: str
    target: str
    layer: str
    cursor: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    mode: str = "append"
    replace_lookback: float = 0.0
    uint64: str = "long"
    bigint: str = "decimal"
    truncate_datetime64: bool = False
    target_file_size: int | None = None
    safety_lag: float | None = None
    max_window: float | None = None
    max_window_rows: int | None = None
    cron: str | None = None
    check_columns: tuple[str, ...] = ()
    max_replica_delay: float | None = None
    sort_by: tuple[str, ...] = ()  # the Iceberg sort order of the table: files are written sorted by it
    corrections: str = "none"
    version_column: str | None = None  # corrections = "replacing": the ReplacingMergeTree's version
    deleted_column: str | None = None  # and its is_deleted column, if it has one

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The columns the consistency check sums a checksum over: ``check_columns``, or the cursor."""
        return self.check_columns or self.cursor

    @property
    def source_database(self) -> str:
        return self.source.split(".", 1)[0]

    @property
    def source_table(self) -> str:
        return self.source.split(".", 1)[1]

    @property
    def target_namespace(self) -> str:
        return self.target.rsplit(".", 1)[0]


@dataclass(frozen=True)
class OffloadConfig:
    target_file_size: int = DEFAULT_FILE_SIZE
    batch_bytes: int = DEFAULT_BATCH_SIZE
    commit_attempts: int = 5


@dataclass(frozen=True)
class ScheduleConfig:
    interval: float | None = None
    cron: str = "*/15 * * * *"
    run_at_start: bool = True
    max_parallel: int = 2
    maintenance_cron: str = "0 2 * * *"
    shutdown_timeout: float = 60.0
    retry_attempts: int = 3
    retry_backoff: float = 5.0
    retry_backoff_max: float = 120.0


@dataclass(frozen=True)
class MaintenanceConfig:
    """What `offloader maintain` and `offloader check` do (also daily at ``schedule.maintenance_cron``)."""

    target_file_size: int = DEFAULT_FILE_SIZE
    retain: float = 7 * 86400.0
    orphan_age: float = 86400.0
    settle: float = 86400.0
    lock_wait: float = 600.0
    check: bool = True
    repair: bool = False
    check_bucket: float = 3600.0
    check_since: float | None = None
    ttl_margin: float = 86400.0


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9108
    enabled: bool = True


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"


def default_replica_id() -> str:
    """``<hostname>-<pid>``: the identity of a process whose ``[replica] id`` is not set."""
    import os
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class ReplicaConfig:
    """``[replica]``: this process's identity and its lease among the `offloader run` replicas (replicas.py)."""

    id: str = field(default_factory=default_replica_id)
    heartbeat: float = 5.0
    lease: float = 30.0
    upstream_wait: float = 300.0  # how long a dependent waits for an upstream another replica is offloading


@dataclass(frozen=True)
class FederateConfig:
    """``[federate]``: a ClickHouse view per table over warm and cold rows (offloader/federation.py)."""

    enabled: bool = False
    database: str | None = None  # where the views go; default: each source table's database
    warehouse_path: str | None = None  # a local warehouse as ClickHouse sees it; default: catalog.warehouse
    s3_endpoint: str | None = None  # an S3 warehouse's endpoint as ClickHouse reaches it; default: catalog.s3.endpoint
    named_collection: str | None = None  # the ClickHouse named collection holding the S3 credentials


@dataclass(frozen=True)
class Config:
    source: SourceConfig
    catalog: CatalogConfig
    state: StateConfig
    tables: tuple[TableConfig, ...]
    offload: OffloadConfig = OffloadConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    replica: ReplicaConfig = field(default_factory=ReplicaConfig)
    federate: FederateConfig = FederateConfig()
    data_dir: Path | None = None
    origin: str = "embedded default"

    def table(self, name: str, argument: str = "--table") -> TableConfig:
        """The table named ``name`` on the command line (``argument`` names where it was given)."""
        for table in self.tables:
            if table.name == name:
                return table
        raise UsageError(f"{argument}: unknown table {name!r}; configured: {', '.join(t.name for t in self.tables)}")

    def ordered_tables(self) -> list[TableConfig]:
        """Tables in dependency order: every table after all of its upstreams."""
        by_name = {t.name: t for t in self.tables}
        done: dict[str, None] = {}

        def visit(t: TableConfig) -> None:
            if t.name in done:
                return
            for dep in t.depends_on:
                visit(by_name[dep])
            done[t.name] = None

        for t in sorted(self.tables, key=lambda t: LAYERS.index(t.layer)):
            visit(t)
        return [by_name[n] for n in done]


def connection_url(dsn: str, password: Secret | None) -> str:
    """The URL a driver connects with: the password put in, PostgreSQL through psycopg2."""
    if dsn.startswith("postgresql://"):
        dsn = "postgresql+psycopg2://" + dsn[len("postgresql://") :]
    if password is None or dsn.startswith("sqlite"):
        return dsn
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{quote(parts.username or '', safe='')}:{quote(password.reveal(), safe='')}@{host}"
    return parts._replace(netloc=netloc).geturl()


def redact(dsn: str) -> str:
    """A DSN or URI as safe to show: its password replaced by ***."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def partition_transform(expr: str) -> tuple[str, str, int | None]:
    """Split a validated ``partition_by`` entry into (transform, column, parameter)."""
    match = TRANSFORM.match(expr)
    if match is None:  # validated at start-up; kept as a guard
        raise ConfigError(f"partition_by: {expr!r} is not a transform")
    if match.group("col0"):
        return "identity", match.group("col0"), None
    if match.group("fn"):
        return match.group("fn"), match.group("col1"), None
    return match.group("pfn"), match.group("col2"), int(match.group("n"))

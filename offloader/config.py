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

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from offloader.errors import ConfigError
from offloader.scheduler import cron_problem

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_TRANSFORM = re.compile(
    r"^(?:(?P<fn>year|month|day|hour|identity|void)\((?P<col1>[A-Za-z_][A-Za-z0-9_]*)\)"
    r"|(?P<pfn>bucket|truncate)\((?P<n>\d+),\s*(?P<col2>[A-Za-z_][A-Za-z0-9_]*)\)"
    r"|(?P<col0>[A-Za-z_][A-Za-z0-9_]*))$"
)
LAYERS = ("bronze", "silver", "gold")
MODES = ("append", "replace")
ENV_PREFIX = "OFFLOADER__"
DEFAULT_DATA_DIR = ".offloader"
DEFAULT_FILE_SIZE = 128 * 2**20  # the data files offloader writes and compacts to, by default


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
    max_window: float = 3600.0
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
_AWS_VARIABLES = {"s3.secret-access-key": "AWS_SECRET_ACCESS_KEY", "s3.session-token": "AWS_SESSION_TOKEN"}
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
    cron: str | None = None
    check_columns: tuple[str, ...] = ()

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
    batch_bytes: int = 32 * 2**20
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
    data_dir: Path | None = None
    origin: str = "embedded default"

    def table(self, name: str) -> TableConfig:
        for table in self.tables:
            if table.name == name:
                return table
        raise ConfigError(f"--table: unknown table {name!r}; configured: {', '.join(t.name for t in self.tables)}")

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


# ---------------------------------------------------------------------------------------
# Loading


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    default: Callable[[Path], dict[str, Any]] | None = None,
) -> Config:
    """Load, override and validate the configuration; raise ConfigError listing every problem.

    With no file (``path`` or ``OFFLOADER_CONFIG``), ``default`` gives the raw config for a
    data directory (``OFFLOADER_DATA_DIR``): the CLI passes the embedded demo set.
    """
    env = dict(os.environ if env is None else env)
    path = path or env.get("OFFLOADER_CONFIG") or None
    if path is None:
        if default is None:
            raise ConfigError("--config: no configuration file given (pass --config or set OFFLOADER_CONFIG)")
        raw = default(Path(env.get("OFFLOADER_DATA_DIR", DEFAULT_DATA_DIR)))
        origin = "embedded default"
    else:
        file = Path(path)
        try:
            raw = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"--config: file {str(file)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {str(file)!r} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {str(file)!r}: {exc.strerror}") from None
        origin = str(file)
    raw = _apply_env(raw, env)
    return _Validator(raw, env, origin).build()


def _coerce_env_value(text: str) -> Any:
    """Environment values are strings; TOML syntax is accepted for lists, numbers and booleans."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Put the ``OFFLOADER__...`` overrides in; each section and table keeps in ``_from_env``
    which of its keys came from which variable, so that a problem can name the variable."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    raw["tables"] = [dict(t) for t in raw.get("tables", [])] if isinstance(raw.get("tables", []), list) else raw["tables"]
    tables = [t for t in raw["tables"] if isinstance(t, dict)] if isinstance(raw["tables"], list) else []
    problems: list[str] = []
    for key, text in sorted(env.items()):
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        if len(parts) != (3 if parts[0] == "tables" else 2) or not all(parts):
            problems.append(f"{key}: environment overrides take the form OFFLOADER__SECTION__KEY or OFFLOADER__TABLES__NAME__KEY")
            continue
        if parts[0] == "tables":
            matched = [t for t in tables if str(t.get("name", "")).lower() == parts[1]]
            if not matched:
                configured = ", ".join(str(t.get("name")) for t in tables) or "none"
                problems.append(f"{key}: no table named {parts[1]!r} is configured; configured: {configured}")
            for table in matched:
                table[parts[2]] = _coerce_env_value(text)
                table.setdefault("_from_env", {})[parts[2]] = key
            continue
        section, name = parts
        value: Any = text if name == "password" else _coerce_env_value(text)
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            problems.append(f"{key}: {section} is not a section ([{section}]) whose keys can be overridden")
            continue
        target[name] = value
        target.setdefault("_from_env", {})[name] = key
    if problems:
        raw["_env_problems"] = problems
    return raw


# ---------------------------------------------------------------------------------------
# Validation


class _Validator:
    """Turns the raw mapping into a Config, collecting every problem before failing."""

    def __init__(self, raw: dict[str, Any], env: Mapping[str, str], origin: str) -> None:
        self.raw = raw
        self.env = env
        self.origin = origin
        self.problems: list[str] = list(raw.pop("_env_problems", []))
        self.env_keys: dict[str, str] = {}  # "source.safety_lag" -> the variable that set it

    def problem(self, key: str, value: Any, accepted: str) -> None:
        """One problem line: the key, the bad value, the variable it came from if it did, what is accepted."""
        variables = [self.env_keys[key]] if key in self.env_keys else []
        if isinstance(value, dict) and "_from_env" in value:  # a whole section set by variables
            variables += sorted(value["_from_env"].values())
            value = {k: v for k, v in value.items() if k != "_from_env"}
        origin = f" (from {', '.join(variables)})" if variables else ""
        self.problems.append(f"{key} = {_shown(key, value)}{origin}: {accepted}")

    def from_env(self, label: str, values: dict[str, Any]) -> None:
        """Remember which keys of the section or table ``label`` came from which variable."""
        for key, variable in values.get("_from_env", {}).items():
            self.env_keys[f"{label}.{key}"] = variable

    def build(self) -> Config:
        known = {"source", "catalog", "state", "tables", "offload", "schedule", "maintenance", "server", "logging", "data_dir"}
        for key in self.raw:
            if key not in known:
                self.problem(key, self.raw[key], f"unknown section; accepted: {', '.join(sorted(known))}")
        source = self.source(self.section("source"))
        catalog = self.catalog(self.section("catalog"))
        state = self.state(self.section("state"))
        offload = self.offload(self.section("offload", required=False))
        schedule = self.schedule(self.section("schedule", required=False))
        maintenance = self.maintenance(self.section("maintenance", required=False))
        server = self.server(self.section("server", required=False))
        logging = self.logging(self.section("logging", required=False))
        tables = self.tables(self.raw.get("tables"), offload)
        if self.problems:
            raise ConfigError(self.problems)
        data_dir = self.raw.get("data_dir")
        return Config(
            source=source,  # type: ignore[arg-type]
            catalog=catalog,  # type: ignore[arg-type]
            state=state,  # type: ignore[arg-type]
            tables=tuple(tables),
            offload=offload,
            schedule=schedule,
            maintenance=maintenance,
            server=server,
            logging=logging,
            data_dir=Path(data_dir) if data_dir else None,
            origin=self.origin,
        )

    # -- helpers ------------------------------------------------------------------------

    def section(self, name: str, required: bool = True) -> dict[str, Any]:
        value = self.raw.get(name)
        if value is None:
            if required:
                self.problems.append(f"[{name}]: section is missing")
            return {}
        if not isinstance(value, dict):
            self.problem(name, value, "must be a table ([section])")
            return {}
        self.from_env(name, value)
        return value

    def unknown_keys(self, section: str, values: dict[str, Any], allowed: set[str]) -> None:
        for key in values:
            if key not in allowed and key != "_from_env":
                self.problem(f"{section}.{key}", values[key], f"unknown key; accepted: {', '.join(sorted(allowed))}")

    def duration(self, key: str, value: Any, default: float, minimum: float = 0.0) -> float:
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.problem(key, value, 'expected a duration such as "0s", "90s", "5m", "1h30m", "2d"')
            return default
        if seconds < minimum:
            self.problem(key, value, f"must be at least {minimum:g}s")
        return seconds

    def size(self, key: str, value: Any, default: int | None) -> int | None:
        if value is None:
            return default
        try:
            return parse_size(value)
        except ValueError:
            self.problem(key, value, 'expected a positive size such as "128MiB", "64MB" or a byte count')
            return default

    def integer(self, key: str, value: Any, default: int, minimum: int, maximum: int = 2**31) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            self.problem(key, value, f"expected an integer from {minimum} to {maximum}")
            return default
        return value

    def boolean(self, key: str, value: Any, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key, value, "expected true or false")
            return default
        return value

    def choice(self, key: str, value: Any, default: str, choices: tuple[str, ...]) -> str:
        if value is None:
            return default
        if value not in choices:
            self.problem(key, value, f"accepted: {', '.join(repr(c) for c in choices)}")
            return default
        return str(value)

    def password(self, section: str, values: dict[str, Any]) -> Secret | None:
        """A password from the environment or a file; never from the config file itself."""
        if "password" in values and "password" not in values.get("_from_env", set()):
            self.problems.append(
                f"{section}.password: passwords are not accepted in the config file; "
                f"set OFFLOADER__{section.upper()}__PASSWORD or {section}.password_file"
            )
            return None
        if "password" in values:
            return Secret(str(values["password"]))
        file = values.get("password_file")
        if file is None:
            return None
        try:
            return Secret(Path(str(file)).read_text().strip())
        except OSError as exc:
            self.problem(f"{section}.password_file", file, f"cannot be read ({exc.strerror})")
            return None

    def dsn_without_password(self, key: str, dsn: str) -> None:
        try:
            has_password = urlsplit(dsn).password is not None
        except ValueError:
            has_password = False
        if has_password:
            self.problems.append(
                f"{key}: the DSN carries a password; remove it and set OFFLOADER__{key.split('.')[0].upper()}__PASSWORD "
                f"or {key.split('.')[0]}.password_file"
            )

    # -- sections -----------------------------------------------------------------------

    def source(self, s: dict[str, Any]) -> SourceConfig | None:
        self.unknown_keys(
            "source",
            s,
            {"dsn", "safety_lag", "max_window", "user", "password", "password_file", "query_timeout", "settings"},
        )
        dsn = s.get("dsn")
        if not isinstance(dsn, str) or not re.match(r"^(chdb://|https?://)", dsn or ""):
            self.problem("source.dsn", dsn, 'expected "http(s)://user@host:8123/database" or "chdb:///path/to/dir"')
            dsn = "chdb://invalid"
        self.dsn_without_password("source.dsn", dsn)
        settings = s.get("settings", {})
        if not isinstance(settings, dict):
            self.problem("source.settings", settings, "must be a table of ClickHouse settings")
            settings = {}
        for key in settings:
            if not IDENTIFIER.match(key):
                self.problem(f"source.settings.{key}", settings[key], "setting names are letters, digits and _")
        return SourceConfig(
            dsn=dsn,
            safety_lag=self.duration("source.safety_lag", s.get("safety_lag"), 300.0),
            max_window=self.duration("source.max_window", s.get("max_window"), 3600.0, minimum=0.001),
            user=s.get("user"),
            password=self.password("source", s),
            query_timeout=self.duration("source.query_timeout", s.get("query_timeout"), 600.0, minimum=1),
            settings=dict(settings),
        )

    def catalog(self, s: dict[str, Any]) -> CatalogConfig | None:
        name = s.get("name", "cold")
        if not isinstance(name, str) or not IDENTIFIER.match(name):
            self.problem("catalog.name", name, "expected an identifier (letters, digits, _)")
        env_secrets = {secret_name(p) for p in SECRET_PROPERTIES}
        from_env = s.get("_from_env", {})
        props: dict[str, str] = {}
        for key, value in s.items():
            if key in {"name", "password", "password_file", "_from_env"} or (key in env_secrets and key in from_env):
                continue  # secrets from the environment are read by catalog_secrets, as given
            if key.endswith("_file") and key[: -len("_file")] in env_secrets:
                continue
            if isinstance(value, dict | list):
                self.problem(f"catalog.{key}", value, "catalog properties are strings, numbers or booleans")
                continue
            props[key] = str(value).lower() if isinstance(value, bool) else str(value)
        if "uri" not in props and props.get("type", "sql") == "sql":
            self.problems.append('catalog.uri: missing; e.g. "postgresql://offloader@postgres/offloader" or "sqlite:///cat.db"')
        if "warehouse" not in props:
            self.problems.append(
                'catalog.warehouse: missing; e.g. "s3://cold/warehouse" or "file:///var/lib/offloader/warehouse"'
            )
        if "uri" in props:
            self.dsn_without_password("catalog.uri", props["uri"])
        secrets = self.catalog_secrets(s, props)
        self.object_storage(props, secrets)
        timeout = props.get("rest.request-timeout")
        if timeout is not None and not _positive_number(timeout):
            self.problem("catalog.rest.request-timeout", timeout, "expected seconds a REST request may take, e.g. 60")
        if props.get("rest.sigv4-enabled") == "true" and not _importable("boto3"):
            self.problem(
                "catalog.rest.sigv4-enabled",
                "true",
                "SigV4 signing needs boto3, which is not installed: pip install 'offloader[aws]'",
            )
        return CatalogConfig(name=str(name), properties=props, password=self.password("catalog", s), secrets=secrets)

    def catalog_secrets(self, s: dict[str, Any], props: dict[str, str]) -> dict[str, Secret]:
        """Secret catalog properties, from the environment or a file; a secret in the config file is refused."""
        secrets: dict[str, Secret] = {}
        for prop in SECRET_PROPERTIES:
            env_name, file_key = f"OFFLOADER__CATALOG__{secret_name(prop).upper()}", f"{secret_name(prop)}_file"
            if prop in props:
                del props[prop]
                self.problems.append(
                    f"catalog.{prop}: secrets are not accepted in the config file; set {env_name} or catalog.{file_key}"
                    + (f" (or {_AWS_VARIABLES[prop]})" if prop in _AWS_VARIABLES else "")
                )
            if env_name in self.env:
                secrets[prop] = Secret(self.env[env_name])
            elif file_key in s:
                try:
                    secrets[prop] = Secret(Path(str(s[file_key])).read_text().strip())
                except OSError as exc:
                    self.problem(f"catalog.{file_key}", s[file_key], f"cannot be read ({exc.strerror})")
        return secrets

    def object_storage(self, props: dict[str, str], secrets: dict[str, Secret]) -> None:
        """S3 credentials complete (the standard AWS variables fill in), and a region that needs no lookup."""
        if "s3.access-key-id" in props:
            for prop, variable in _AWS_VARIABLES.items():
                if prop not in secrets and self.env.get(variable):
                    secrets[prop] = Secret(self.env[variable])
            if "s3.secret-access-key" not in secrets:
                self.problems.append(
                    "catalog.s3.access-key-id: is set but no secret key is; set OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY, "
                    "AWS_SECRET_ACCESS_KEY or catalog.s3_secret_access_key_file"
                )
        elif "s3.secret-access-key" in secrets:
            self.problems.append(
                "catalog.s3.access-key-id: missing; the S3 secret key is set, so its key id is needed too "
                '(e.g. s3.access-key-id = "offloader" in [catalog])'
            )
        on_s3 = urlsplit(props.get("warehouse", "")).scheme in {"s3", "s3a", "s3n"} or "s3.endpoint" in props
        if on_s3 and "s3.region" not in props:
            # Without a region PyArrow looks the bucket's region up on every start (seconds, or a
            # timeout against an S3-compatible server); a custom endpoint does not care which.
            region = self.env.get("AWS_REGION") or self.env.get("AWS_DEFAULT_REGION")
            if region or "s3.endpoint" in props:
                props["s3.region"] = region or DEFAULT_S3_REGION

    def state(self, s: dict[str, Any]) -> StateConfig | None:
        self.unknown_keys("state", s, {"dsn", "password", "password_file", "history_retention"})
        dsn = s.get("dsn")
        if not isinstance(dsn, str) or not re.match(r"^(postgresql(\+\w+)?://|sqlite:///)", dsn or ""):
            self.problem("state.dsn", dsn, 'expected "postgresql://user@host/db" or "sqlite:///path/state.db"')
            dsn = "sqlite:///invalid"
        self.dsn_without_password("state.dsn", dsn)
        return StateConfig(
            dsn=dsn,
            password=self.password("state", s),
            history_retention=self.duration("state.history_retention", s.get("history_retention"), 30 * 86400.0, 60),
        )

    def offload(self, s: dict[str, Any]) -> OffloadConfig:
        self.unknown_keys("offload", s, {"target_file_size", "batch_size", "commit_attempts"})
        return OffloadConfig(
            target_file_size=self.size("offload.target_file_size", s.get("target_file_size"), DEFAULT_FILE_SIZE) or 0,
            batch_bytes=self.size("offload.batch_size", s.get("batch_size"), 32 * 2**20) or 0,
            commit_attempts=self.integer("offload.commit_attempts", s.get("commit_attempts"), 5, 1, 100),
        )

    def schedule(self, s: dict[str, Any]) -> ScheduleConfig:
        allowed = {
            "interval", "cron", "run_at_start", "max_parallel", "maintenance_cron", "shutdown_timeout",
            "retry_attempts", "retry_backoff", "retry_backoff_max",
        }  # fmt: skip
        self.unknown_keys("schedule", s, allowed)
        interval = None
        if s.get("interval") is not None:
            interval = self.duration("schedule.interval", s["interval"], 900.0, minimum=1)
        for key in ("cron", "maintenance_cron"):
            if key in s:
                self.cron(f"schedule.{key}", s[key])
        return ScheduleConfig(
            interval=interval,
            cron=str(s.get("cron", "*/15 * * * *")),
            run_at_start=self.boolean("schedule.run_at_start", s.get("run_at_start"), True),
            max_parallel=self.integer("schedule.max_parallel", s.get("max_parallel"), 2, 1, 64),
            maintenance_cron=str(s.get("maintenance_cron", "0 2 * * *")),
            shutdown_timeout=self.duration("schedule.shutdown_timeout", s.get("shutdown_timeout"), 60.0, 1),
            retry_attempts=self.integer("schedule.retry_attempts", s.get("retry_attempts"), 3, 1, 100),
            retry_backoff=self.duration("schedule.retry_backoff", s.get("retry_backoff"), 5.0),
            retry_backoff_max=self.duration("schedule.retry_backoff_max", s.get("retry_backoff_max"), 120.0),
        )

    def maintenance(self, s: dict[str, Any]) -> MaintenanceConfig:
        allowed = {
            "target_file_size", "retain", "orphan_age", "settle", "lock_wait", "check", "repair",
            "check_bucket", "check_since", "ttl_margin",
        }  # fmt: skip
        self.unknown_keys("maintenance", s, allowed)
        since = s.get("check_since")
        return MaintenanceConfig(
            target_file_size=self.size("maintenance.target_file_size", s.get("target_file_size"), DEFAULT_FILE_SIZE) or 0,
            retain=self.duration("maintenance.retain", s.get("retain"), 7 * 86400.0, 60),
            orphan_age=self.duration("maintenance.orphan_age", s.get("orphan_age"), 86400.0, 60),
            settle=self.duration("maintenance.settle", s.get("settle"), 86400.0),
            lock_wait=self.duration("maintenance.lock_wait", s.get("lock_wait"), 600.0),
            check=self.boolean("maintenance.check", s.get("check"), True),
            repair=self.boolean("maintenance.repair", s.get("repair"), False),
            check_bucket=self.duration("maintenance.check_bucket", s.get("check_bucket"), 3600.0, 1),
            check_since=None if since is None else self.duration("maintenance.check_since", since, 0, 1),
            ttl_margin=self.duration("maintenance.ttl_margin", s.get("ttl_margin"), 86400.0),
        )

    def server(self, s: dict[str, Any]) -> ServerConfig:
        self.unknown_keys("server", s, {"host", "port", "enabled"})
        host = s.get("host", "127.0.0.1")
        if not isinstance(host, str) or not re.match(r"^[A-Za-z0-9.:\-\[\]]+$", host):
            self.problem("server.host", host, "expected a host name or IP address")
            host = "127.0.0.1"
        return ServerConfig(
            host=host,
            port=self.integer("server.port", s.get("port"), 9108, 0, 65535),
            enabled=self.boolean("server.enabled", s.get("enabled"), True),
        )

    def logging(self, s: dict[str, Any]) -> LoggingConfig:
        self.unknown_keys("logging", s, {"level", "format"})
        return LoggingConfig(
            level=self.choice("logging.level", s.get("level"), "info", ("debug", "info", "warning", "error")),
            format=self.choice("logging.format", s.get("format"), "auto", ("auto", "json", "console")),
        )

    def tables(self, raw: Any, offload: OffloadConfig) -> list[TableConfig]:
        if not isinstance(raw, list) or not raw:
            self.problems.append("[[tables]]: at least one table is required")
            return []
        tables = [t for i, item in enumerate(raw) if (t := self.table(i, item)) is not None]
        names = [t.name for t in tables]
        for name in sorted({n for n in names if names.count(n) > 1}):
            self.problem("tables.name", name, "table names must be unique")
        targets = [t.target for t in tables]
        for target in sorted({n for n in targets if targets.count(n) > 1}):
            self.problem("tables.target", target, "two tables cannot write the same Iceberg table")
        by_name = {t.name: t for t in tables}
        for t in tables:
            for dep in t.depends_on:
                if dep not in by_name:
                    self.problem(f"tables.{t.name}.depends_on", dep, f"not a configured table; known: {', '.join(names)}")
        self._check_cycles(by_name)
        return tables

    def _check_cycles(self, by_name: dict[str, TableConfig]) -> None:
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2 or name not in by_name:
                return
            if state.get(name) == 1:
                cycle = path[path.index(name) :] + [name]
                self.problem(f"tables.{name}.depends_on", " -> ".join(cycle), "dependencies must not form a cycle")
                return
            state[name] = 1
            for dep in by_name[name].depends_on:
                visit(dep, path + [name])
            state[name] = 2

        for name in by_name:
            visit(name, [])

    def table(self, index: int, t: Any) -> TableConfig | None:
        if not isinstance(t, dict):
            self.problem(f"tables[{index}]", t, "each [[tables]] entry must be a table")
            return None
        name = t.get("name")
        label = f"tables.{name}" if isinstance(name, str) and IDENTIFIER.match(name) else f"tables[{index}]"
        self.from_env(label, t)
        before = len(self.problems)
        allowed = {
            "name", "source", "target", "layer", "cursor", "partition_by", "depends_on", "mode", "replace_lookback",
            "uint64", "bigint", "truncate_datetime64", "target_file_size", "safety_lag", "max_window", "cron",
            "check_columns",
        }  # fmt: skip
        self.unknown_keys(label, t, allowed)
        if not isinstance(name, str) or not IDENTIFIER.match(name):
            self.problem(f"{label}.name", name, "expected an identifier: a letter or _, then letters, digits or _")
        source, target = t.get("source"), t.get("target")
        if not _is_dotted(source, 2):
            self.problem(f"{label}.source", source, 'expected "database.table" of identifiers (letters, digits, _)')
        if not _is_dotted(target, 2, max_parts=4):
            self.problem(f"{label}.target", target, 'expected "namespace.table" of identifiers (letters, digits, _)')
        layer = self.choice(f"{label}.layer", t.get("layer"), "bronze", LAYERS)
        mode = self.choice(f"{label}.mode", t.get("mode"), "append", MODES)
        cursor = self.names(f"{label}.cursor", t.get("cursor"), required=True)
        if mode == "replace" and len(cursor) != 1:
            self.problem(f"{label}.cursor", t.get("cursor"), 'mode = "replace" takes exactly one time column')
        partition_by = self.names(f"{label}.partition_by", t.get("partition_by", []), pattern=_TRANSFORM)
        depends_on = self.names(f"{label}.depends_on", t.get("depends_on", []))
        if isinstance(name, str) and name in depends_on:
            self.problem(f"{label}.depends_on", name, "a table cannot depend on itself")
        lookback = self.duration(f"{label}.replace_lookback", t.get("replace_lookback"), 0.0)
        if mode == "replace" and lookback <= 0:
            self.problem(
                f"{label}.replace_lookback", t.get("replace_lookback"), 'mode = "replace" needs a positive duration, e.g. "2h"'
            )
        table = TableConfig(
            name=str(name),
            source=str(source),
            target=str(target),
            layer=layer,
            cursor=cursor,
            partition_by=partition_by,
            depends_on=depends_on,
            mode=mode,
            replace_lookback=lookback,
            uint64=self.choice(f"{label}.uint64", t.get("uint64"), "long", ("long", "decimal")),
            bigint=self.choice(f"{label}.bigint", t.get("bigint"), "decimal", ("decimal", "string")),
            truncate_datetime64=self.boolean(f"{label}.truncate_datetime64", t.get("truncate_datetime64"), False),
            target_file_size=self.size(f"{label}.target_file_size", t.get("target_file_size"), None),
            safety_lag=None if t.get("safety_lag") is None else self.duration(f"{label}.safety_lag", t["safety_lag"], 0),
            max_window=None if t.get("max_window") is None else self.duration(f"{label}.max_window", t["max_window"], 0, 0.001),
            cron=self.cron(f"{label}.cron", t.get("cron")),
            check_columns=self.names(f"{label}.check_columns", t.get("check_columns", [])),
        )
        return table if len(self.problems) == before else None

    def cron(self, key: str, value: Any) -> str | None:
        if value is None:
            return None
        why = cron_problem(str(value))
        if why is not None:
            self.problem(key, value, f'expected a 5-field cron expression such as "*/15 * * * *" ({why})')
            return None
        return str(value)

    def names(self, key: str, value: Any, required: bool = False, pattern: re.Pattern[str] = IDENTIFIER) -> tuple[str, ...]:
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(v, str) and pattern.match(v) for v in value):
            what = (
                "Iceberg transforms such as day(col), month(col), bucket(16, col) or col"
                if pattern is _TRANSFORM
                else "identifiers (letters, digits, _)"
            )
            self.problem(key, value, f"expected a list of {what}")
            return ()
        if required and not value:
            self.problem(key, value, "at least one column is required; the first must be a DateTime/DateTime64 column")
        if len(set(value)) != len(value):
            self.problem(key, value, "names must not repeat")
        return tuple(value)


_SECRET_WORDS = re.compile(r"password|secret|credential|token|account[-_]key", re.IGNORECASE)


def _shown(key: str, value: Any) -> str:
    """A value as a problem line shows it: never the value of a key that names a secret."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_shown(str(k), v)}" for k, v in value.items()) + "}"
    return "'***'" if _SECRET_WORDS.search(key) and not key.endswith("_file") else repr(value)


def _positive_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _is_dotted(value: Any, parts: int, max_parts: int | None = None) -> bool:
    if not isinstance(value, str):
        return False
    split = value.split(".")
    return parts <= len(split) <= (max_parts or parts) and all(IDENTIFIER.match(p) for p in split)


def partition_transform(expr: str) -> tuple[str, str, int | None]:
    """Split a validated ``partition_by`` entry into (transform, column, parameter)."""
    match = _TRANSFORM.match(expr)
    if match is None:  # validated at start-up; kept as a guard
        raise ConfigError(f"partition_by: {expr!r} is not a transform")
    if match.group("col0"):
        return "identity", match.group("col0"), None
    if match.group("fn"):
        return match.group("fn"), match.group("col1"), None
    return match.group("pfn"), match.group("col2"), int(match.group("n"))

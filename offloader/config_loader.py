"""Loading the configuration: the TOML file, the ``OFFLOADER__…`` overrides, and validation.

:func:`load_config` reads the file (or, with none, the default its caller gives), puts the
environment overrides in, and builds a :class:`~offloader.config.Config` section by
section; every problem of every section is reported at once in one :class:`ConfigError`,
naming its key (and the variable that set it). Validation happens here, at start-up, and
nowhere later.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from offloader.config import (
    AWS_VARIABLES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DATA_DIR,
    DEFAULT_FILE_SIZE,
    DEFAULT_S3_REGION,
    IDENTIFIER,
    LAYERS,
    MODES,
    SECRET_PROPERTIES,
    TRANSFORM,
    CatalogConfig,
    Config,
    LoggingConfig,
    MaintenanceConfig,
    OffloadConfig,
    ReplicaConfig,
    ScheduleConfig,
    Secret,
    ServerConfig,
    SourceConfig,
    StateConfig,
    TableConfig,
    secret_name,
)
from offloader.config_checks import Checks, apply_env, importable, is_dotted, positive_number
from offloader.errors import ConfigError


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
    raw = apply_env(raw, env)
    return _Validator(raw, env, origin).build()


class _Validator(Checks):
    """Turns the raw mapping into a Config, section by section."""

    def build(self) -> Config:
        known = {"source", "catalog", "state", "tables", "offload", "schedule", "maintenance", "server", "logging", "data_dir"}
        known.add("replica")
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
        replica = self.replica(self.section("replica", required=False))
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
            replica=replica,
            data_dir=Path(data_dir) if data_dir else None,
            origin=self.origin,
        )

    def source(self, s: dict[str, Any]) -> SourceConfig | None:
        allowed = {
            "dsn", "safety_lag", "max_window", "max_window_rows", "max_replica_delay", "user", "password", "password_file",
            "query_timeout", "settings",
        }  # fmt: skip
        self.unknown_keys("source", s, allowed)
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
            max_window=self.duration("source.max_window", s.get("max_window"), 86400.0, minimum=0.001),
            max_window_rows=self.integer("source.max_window_rows", s.get("max_window_rows"), 10_000_000, 1, 2**62),
            max_replica_delay=self.duration("source.max_replica_delay", s.get("max_replica_delay"), 3600.0),
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
        if timeout is not None and not positive_number(timeout):
            self.problem("catalog.rest.request-timeout", timeout, "expected seconds a REST request may take, e.g. 60")
        if props.get("rest.sigv4-enabled") == "true" and not importable("boto3"):
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
                    + (f" (or {AWS_VARIABLES[prop]})" if prop in AWS_VARIABLES else "")
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
            for prop, variable in AWS_VARIABLES.items():
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
            batch_bytes=self.size("offload.batch_size", s.get("batch_size"), DEFAULT_BATCH_SIZE) or 0,
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

    def replica(self, s: dict[str, Any]) -> ReplicaConfig:
        self.unknown_keys("replica", s, {"id", "heartbeat", "lease", "upstream_wait"})
        heartbeat = self.duration("replica.heartbeat", s.get("heartbeat"), 5.0, 0.1)
        lease = self.duration("replica.lease", s.get("lease"), 30.0, 0.1)
        if lease <= 2 * heartbeat:
            self.problem("replica.lease", s.get("lease", "30s"), f"must be more than twice replica.heartbeat ({heartbeat:g}s)")
        wait = self.duration("replica.upstream_wait", s.get("upstream_wait"), 300.0)
        rid = self.replica_id("replica.id", s.get("id"))
        return ReplicaConfig(heartbeat=heartbeat, lease=lease, upstream_wait=wait, **({"id": rid} if rid else {}))

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
            "check_columns", "max_window_rows", "max_replica_delay",
        }  # fmt: skip
        self.unknown_keys(label, t, allowed)
        if not isinstance(name, str) or not IDENTIFIER.match(name):
            self.problem(f"{label}.name", name, "expected an identifier: a letter or _, then letters, digits or _")
        source, target = t.get("source"), t.get("target")
        if not is_dotted(source, 2):
            self.problem(f"{label}.source", source, 'expected "database.table" of identifiers (letters, digits, _)')
        if not is_dotted(target, 2, max_parts=4):
            self.problem(f"{label}.target", target, 'expected "namespace.table" of identifiers (letters, digits, _)')
        layer = self.choice(f"{label}.layer", t.get("layer"), "bronze", LAYERS)
        mode = self.choice(f"{label}.mode", t.get("mode"), "append", MODES)
        cursor = self.names(f"{label}.cursor", t.get("cursor"), required=True)
        if mode == "replace" and len(cursor) != 1:
            self.problem(f"{label}.cursor", t.get("cursor"), 'mode = "replace" takes exactly one time column')
        partition_by = self.names(f"{label}.partition_by", t.get("partition_by", []), pattern=TRANSFORM)
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
            max_window_rows=None
            if t.get("max_window_rows") is None
            else self.integer(f"{label}.max_window_rows", t["max_window_rows"], 0, 1, 2**62),
            cron=self.cron(f"{label}.cron", t.get("cron")),
            check_columns=self.names(f"{label}.check_columns", t.get("check_columns", [])),
            max_replica_delay=None if (d := t.get("max_replica_delay")) is None else self.duration(f"{label}.max_replica_delay", d, 0),
        )  # fmt: skip
        return table if len(self.problems) == before else None

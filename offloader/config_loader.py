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
    SECRET_PROPERTIES,
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
    secret_name,
)
from offloader.config_checks import apply_env, importable, positive_number
from offloader.config_federate import FederateChecks
from offloader.config_tables import TableChecks
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


class _Validator(TableChecks, FederateChecks):
    """Turns the raw mapping into a Config, section by section."""

    def build(self) -> Config:
        known = {"source", "catalog", "state", "tables", "offload", "schedule", "maintenance", "server", "logging", "data_dir"}
        known |= {"replica", "federate"}
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
        federate = self.federate(self.section("federate", required=False), catalog)
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
            federate=federate,
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

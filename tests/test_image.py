"""The container image, built with podman and run for real (deploy/test-image.sh builds it).

The full image (``offloader:test``) and the slim one (``offloader:test-slim``, ``VARIANT=slim``:
no chDB) run in the production shape, on the host network: ClickHouse over HTTP (tests/chhttp.py
on a chDB directory seeded with trades, checking users), PostgreSQL for the state and the SQL
catalog (a fresh database per deployment), SeaweedFS for S3 and, in one deployment, for the
Iceberg REST catalog. The config is a mounted file; every secret comes from the environment
(``podman run -e NAME`` without a value, so that no secret is on a command line). The rows are
read back with PyIceberg from the test, straight from the catalog and S3.

podman cannot schedule health checks without systemd here, so the tests run the image's
HEALTHCHECK with ``podman healthcheck run``. When podman cannot be installed or run, the tests
skip, or fail with the reason under ``OFFLOADER_REQUIRE_PG=1`` (tests/run.sh sets it: CI).
compose.yaml is validated with a real compose implementation (podman-compose).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import PG_DSN, ROOT, TRADES_DDL, fresh_pg_database, http_get, table_rows, toml_key, toml_value, trades_table
from storage import SeaweedFS, Storage, free_port, stop_process

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

SCRIPT = ROOT / "deploy/test-image.sh"
FULL = os.environ.get("OFFLOADER_IMAGE", "offloader:test")
SLIM = os.environ.get("OFFLOADER_SLIM_IMAGE", "offloader:test-slim")
ROWS = 5000  # two hours of trades across midnight: two day partitions, several 1h windows
REPLICA_ROWS = 3000
CONFIG_IN_CONTAINER = "/etc/offloader/offloader.toml"
UID = "10001"
DEV_PASSWORD = "offloader-dev-password"  # noqa: S105 - compose.yaml's development default
OVERRIDE = "from-the-environment"


def _unavailable(reason: str) -> None:
    """Skip, or fail when the suite requires every server (CI), as tests/conftest.py does for PostgreSQL."""
    if os.environ.get("OFFLOADER_REQUIRE_PG"):
        pytest.fail(f"podman is required but cannot build or run images here: {reason}")
    pytest.skip(f"podman cannot build or run images here: {reason}")


def podman(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=env)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _results(stdout: str) -> dict[str, str]:
    """The RESULT lines of deploy/test-image.sh: key (with the image) -> value."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            *key, value = line.split()[1:]
            out[" ".join(key)] = value
    return out


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Both images, built by deploy/test-image.sh from the repository's Dockerfile (cached after the first time)."""
    if os.geteuid() != 0 and not shutil.which("podman"):
        _unavailable("podman is not installed and installing it needs root")
    setup = subprocess.run(["bash", str(SCRIPT), "setup"], capture_output=True, text=True, timeout=900)
    if setup.returncode != 0:
        _unavailable(f"deploy/test-image.sh setup exited {setup.returncode}: {_tail(setup.stderr, 10)}")
    build = subprocess.run(["bash", str(SCRIPT), "build"], capture_output=True, text=True, timeout=1500)
    assert build.returncode == 0, f"deploy/test-image.sh build exited {build.returncode}:\n{_tail(build.stderr, 60)}"
    results = _results(setup.stdout + build.stdout)
    print(f"\nimage build: {results}", file=sys.stderr)
    return results


# -- the servers the container talks to ---------------------------------------------------------


@dataclass
class ClickHouse:
    """tests/chhttp.py on a chDB directory, accepting only user ``offloader`` with its password."""

    root: Path
    password: str = field(default_factory=lambda: "ch-" + secrets.token_hex(10))
    proc: subprocess.Popen[str] | None = None
    port: int = 0

    def start(self) -> ClickHouse:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/chhttp.py"), "--path", str(self.root / "chdb"), "--port", "0",
             "--user", f"offloader:{self.password}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=self.root,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("LISTENING "), f"chhttp did not start: {line!r}"
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)

    @property
    def dsn(self) -> str:
        return f"http://offloader@127.0.0.1:{self.port}/k2"

    def query(self, sql: str) -> str:
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"http://127.0.0.1:{self.port}/", data=sql.encode(),
            headers={"X-ClickHouse-User": "offloader", "X-ClickHouse-Key": self.password},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as reply:  # noqa: S310
            return str(reply.read().decode())

    def seed(self, rows: int, table: str = "trades", step_ms: int = 1440) -> None:
        """``rows`` trades from 2026-01-01 23:00 UTC, ``step_ms`` apart."""
        self.query("CREATE DATABASE IF NOT EXISTS k2")
        self.query(TRADES_DDL.format(db="k2", table=table))
        start = "2026-01-01 23:00:00"
        self.query(
            f"INSERT INTO k2.{table} SELECT "
            f"toDateTime64('{start}', 3, 'UTC') + toIntervalMillisecond(number * {step_ms}), "
            f"toDateTime64('{start}', 6, 'UTC') + toIntervalMillisecond(number * {step_ms}), "
            "number, ['BTC-USDT', 'ETH-USDT', 'SOL-USDT'][number % 3 + 1], if(number % 2 = 0, 'buy', 'sell'), "
            f"toDecimal64(30000 + (number % 1000) / 7, 8), toDecimal64((number % 97 + 1) / 1000, 8) FROM numbers({rows})"
        )


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouse]:
    server = ClickHouse(tmp_path_factory.mktemp("chhttp")).start()
    try:
        server.seed(ROWS)
        server.seed(REPLICA_ROWS, table="replicated", step_ms=1000)  # 50 minutes: 50 windows of 1m
        assert server.query("SELECT count() FROM k2.trades").strip() == str(ROWS)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_databases(pg_available: bool) -> Iterator[Callable[[], str]]:
    """Makes fresh PostgreSQL databases (dropped at the end); their DSNs."""
    if not pg_available:
        pytest.skip(f"PostgreSQL not reachable at {PG_DSN}")
    with contextlib.ExitStack() as made:
        yield lambda: made.enter_context(fresh_pg_database("offloader_img"))


# -- one deployment: a container of an image on a config ---------------------------------------


@dataclass
class Deployment:
    """``podman run -d IMAGE --config /etc/offloader/offloader.toml run`` on the host network."""

    image: str
    storage: Storage
    clickhouse: ClickHouse
    root: Path
    name: str = field(default_factory=lambda: f"offloader-test-{uuid.uuid4().hex[:8]}")
    port: int = field(default_factory=free_port)
    secrets: dict[str, str] = field(default_factory=dict)
    table: str = "trades"
    max_window: str = "1h"

    @property
    def target(self) -> str:
        return self.storage.target(f"cold.{self.table}")

    def write_config(self) -> Path:
        catalog = {**self.storage.catalog_properties(), "s3.region": "us-east-1"}
        table = {**trades_table(self.table), "target": self.target}
        lines = [
            "[source]", f"dsn = {toml_value(self.clickhouse.dsn)}", 'safety_lag = "0s"', f"max_window = {toml_value(self.max_window)}",
            "[catalog]", *(f"{toml_key(k)} = {toml_value(v)}" for k, v in catalog.items()),
            "[state]", f"dsn = {toml_value(self.storage.pg_dsn)}",
            "[schedule]", 'interval = "2s"', 'shutdown_timeout = "60s"',
            "[logging]", 'level = "debug"', 'format = "json"',
            "[[tables]]", *(f"{k} = {toml_value(v)}" for k, v in table.items()),
        ]  # fmt: skip
        path = self.root / f"{self.name}.toml"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o644)  # read by uid 10001 in the container
        return path

    def environment(self) -> dict[str, str]:
        """The secrets, as a deployment hands them over: only in the environment."""
        found = {
            "OFFLOADER__SOURCE__PASSWORD": self.clickhouse.password,
            # PostgreSQL trusts loopback here, so these reach no server: they must only stay out of the logs.
            "OFFLOADER__STATE__PASSWORD": "pg-" + secrets.token_hex(10),
            "OFFLOADER__CATALOG__PASSWORD": "pg-" + secrets.token_hex(10),
            **self.storage.env(),
        }
        if not self.storage.rest:
            found.pop("OFFLOADER__CATALOG__PASSWORD")  # the SQL catalog's URI and the state DSN share the one below
        return found

    def run_args(self, *command: str, detach: bool = True) -> list[str]:
        """podman run's arguments for this deployment (secrets by name only: their values come from podman's environment)."""
        config = self.write_config()
        self.secrets = self.environment()
        args = ["run", "-d", "--name", self.name] if detach else ["run", "--rm"]
        args += [
            "--network=host", "--cap-drop=ALL", "--security-opt=no-new-privileges",
            "-v", f"{config}:{CONFIG_IN_CONTAINER}:ro",
            # On the host network: loopback only, and a port of its own, which the HEALTHCHECK follows.
            "-e", "OFFLOADER__SERVER__HOST=127.0.0.1", "-e", f"OFFLOADER__SERVER__PORT={self.port}",
        ]  # fmt: skip
        for name in self.secrets:
            args += ["-e", name]
        return [*args, self.image, "--config", CONFIG_IN_CONTAINER, *command]

    def podman_env(self) -> dict[str, str]:
        return {**os.environ, **self.secrets}

    def start(self) -> Deployment:
        args = self.run_args("run")
        started = podman(*args, env=self.podman_env())
        assert started.returncode == 0, f"podman run failed: {started.stderr}"
        return self

    def run_once(self, *command: str) -> subprocess.CompletedProcess[str]:
        """A one-off ``podman run --rm`` of the image on this deployment's config."""
        return podman(*self.run_args(*command, detach=False), env=self.podman_env(), timeout=300)

    def state(self) -> dict[str, Any]:
        inspected = podman("inspect", self.name)
        assert inspected.returncode == 0, inspected.stderr
        return dict(json.loads(inspected.stdout)[0]["State"])

    def logs(self) -> str:
        return podman("logs", self.name).stdout + podman("logs", self.name).stderr

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.port, path)

    def iceberg_rows(self) -> int:
        """The row count of the table as PyIceberg reads it from the catalog and S3 (0 before it exists)."""
        return table_rows(self.storage, self.target)

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = 240) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.state()["Running"]:
                raise AssertionError(f"{self.name} exited while waiting for {what}:\n{_tail(self.logs(), 40)}")
            try:
                value = predicate()
            except OSError:
                value = None
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}:\n{_tail(self.logs(), 40)}")

    def stop(self) -> subprocess.CompletedProcess[str]:
        return podman("stop", "-t", "90", self.name, timeout=150)

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name)


def _deploy(
    image: str, setup: str, root: Path, clickhouse: ClickHouse, seaweed: SeaweedFS, database: str
) -> Iterator[Deployment]:
    storage = Storage(setup=setup, pg_dsn=database, root=root, seaweed=seaweed)
    deployment = Deployment(image=image, storage=storage, clickhouse=clickhouse, root=root).start()
    try:
        deployment.wait_for(lambda: deployment.get("/healthz")[0] == 200, "/healthz")
        deployment.wait_for(lambda: deployment.iceberg_rows() == ROWS, f"{ROWS} rows in Iceberg")
        yield deployment
    finally:
        deployment.remove()


@pytest.fixture(scope="module")
def full_sql(
    images: dict[str, str], clickhouse: ClickHouse, seaweed_server: SeaweedFS, pg_databases: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:  # fmt: skip
    """The full image with the SQL catalog in PostgreSQL and the warehouse on S3, once the rows have landed."""
    yield from _deploy(FULL, "s3-sql", tmp_path_factory.mktemp("full-sql"), clickhouse, seaweed_server, pg_databases())


@pytest.fixture(scope="module")
def full_rest(
    images: dict[str, str], clickhouse: ClickHouse, seaweed_server: SeaweedFS, pg_databases: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:  # fmt: skip
    """The full image with SeaweedFS's REST catalog (OAuth2 credential from the environment), once the rows have landed."""
    yield from _deploy(FULL, "s3-rest", tmp_path_factory.mktemp("full-rest"), clickhouse, seaweed_server, pg_databases())


@pytest.fixture(scope="module")
def slim_sql(
    images: dict[str, str], clickhouse: ClickHouse, seaweed_server: SeaweedFS, pg_databases: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:  # fmt: skip
    """The slim image (no chDB) with the HTTP source, the SQL catalog and S3, once the rows have landed."""
    yield from _deploy(SLIM, "s3-sql", tmp_path_factory.mktemp("slim-sql"), clickhouse, seaweed_server, pg_databases())


def _assert_stops_cleanly(deployment: Deployment) -> None:
    stopped = deployment.stop()
    assert stopped.returncode == 0, stopped.stderr
    state = deployment.state()
    assert state["Status"] == "exited" and state["ExitCode"] == 0, (state, _tail(deployment.logs()))
    assert '"event": "service_stopped"' in deployment.logs(), "SIGTERM reached offloader (PID 1), which shut down itself"


def _assert_no_secret_in_logs(deployment: Deployment) -> None:
    logs = deployment.logs()
    assert '"event": "offload_committed"' in logs and '"level": "debug"' in logs, "the logs of a debug-level run"
    assert deployment.secrets, "the deployment was given secrets"
    for name, value in deployment.secrets.items():
        assert value not in logs, f"{name} appears in podman logs"


# -- the full image -----------------------------------------------------------------------------


def test_full_image_answers_healthz_and_readyz(full_sql: Deployment) -> None:
    """/healthz and /readyz of the running container answer 200 (readyz: ClickHouse, the catalog and the state store answer)."""
    assert full_sql.get("/healthz")[0] == 200
    assert full_sql.get("/readyz") == (200, "ready\n")


def test_full_image_offloads_every_source_row(full_sql: Deployment) -> None:
    """Every source row lands once in the Iceberg table, as PyIceberg reads it back from PostgreSQL's catalog and S3."""
    source = int(full_sql.clickhouse.query("SELECT count() FROM k2.trades"))
    table = full_sql.storage.catalog().load_table(full_sql.target)
    rows = table.scan().to_arrow()
    assert rows.num_rows == source == ROWS
    assert len(set(rows.column("sequence_number").to_pylist())) == ROWS, "no row twice"
    assert table.metadata_location.startswith("s3://"), "the table lives on S3"


def test_full_image_healthcheck_passes(full_sql: Deployment) -> None:
    """The image carries its HEALTHCHECK (docker format) and `podman healthcheck run` reports the container healthy."""
    image = json.loads(podman("image", "inspect", FULL).stdout)[0]
    assert "docker" in image["ManifestType"], image["ManifestType"]  # an OCI image config has no HEALTHCHECK
    healthcheck = image.get("Healthcheck") or {}
    assert "/healthz" in " ".join(healthcheck.get("Test", [])) and "OFFLOADER__SERVER__PORT" in healthcheck["Test"][-1], image
    checked = podman("healthcheck", "run", full_sql.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "unhealthy" not in checked.stdout


def test_full_image_runs_as_uid_10001(full_sql: Deployment) -> None:
    """The service process (PID 1) and a command run in the container both run as uid and gid 10001, not root."""
    status = podman("exec", full_sql.name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    gids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Gid:"))
    assert set(uids) == {UID} and set(gids) == {UID}, status
    assert podman("exec", full_sql.name, "id", "-u").stdout.strip() == UID
    top = podman("top", full_sql.name, "user", "args").stdout
    assert "offloader" in top and "root" not in top, top


def test_full_image_check_finds_the_copy_consistent(full_sql: Deployment) -> None:
    """`offloader check` in the full image compares ClickHouse and Iceberg with its embedded engine and finds them consistent."""
    checked = podman("exec", full_sql.name, "offloader", "--config", CONFIG_IN_CONTAINER, "check", timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "trades: consistent: 0 of" in checked.stdout, checked.stdout


def test_full_image_stops_cleanly_on_sigterm(full_sql: Deployment) -> None:
    """`podman stop -t 90` (SIGTERM) ends the service within the shutdown timeout with exit code 0."""
    _assert_stops_cleanly(full_sql)


def test_full_image_logs_hold_no_secret(full_sql: Deployment) -> None:
    """No secret given in the environment (ClickHouse, PostgreSQL, S3) appears in `podman logs` of a debug-level run."""
    _assert_no_secret_in_logs(full_sql)


def test_full_image_on_the_rest_catalog(full_rest: Deployment) -> None:
    """With the REST catalog the full image answers /readyz, offloads every row, stops cleanly and logs neither the REST credential nor the S3 secret."""
    assert full_rest.get("/readyz") == (200, "ready\n")
    assert full_rest.iceberg_rows() == ROWS
    assert "OFFLOADER__CATALOG__CREDENTIAL" in full_rest.secrets
    _assert_stops_cleanly(full_rest)
    _assert_no_secret_in_logs(full_rest)


def test_replicas_on_one_config_share_the_table(
    images: dict[str, str], clickhouse: ClickHouse, seaweed_server: SeaweedFS, pg_databases: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:  # fmt: skip
    """Two containers of the full image on one config (ports of their own) share the work (the owner of the table runs it, PostgreSQL's advisory lock guards every run): every row lands exactly once."""
    root = tmp_path_factory.mktemp("replicas")
    storage = Storage(setup="s3-sql", pg_dsn=pg_databases(), root=root, seaweed=seaweed_server)
    replicas = [
        Deployment(image=FULL, storage=storage, clickhouse=clickhouse, root=root, table="replicated", max_window="1m")
        for _ in range(2)
    ]
    try:
        for replica in replicas:
            replica.start()
        first = replicas[0]
        first.wait_for(lambda: first.iceberg_rows() == REPLICA_ROWS, f"{REPLICA_ROWS} rows from the replicas")
        for replica in replicas:
            replica.wait_for(lambda r=replica: r.get("/healthz")[0] == 200, f"/healthz of {replica.name}")
        rows = storage.catalog().load_table(first.target).scan().to_arrow()
        assert rows.num_rows == REPLICA_ROWS == len(set(rows.column("sequence_number").to_pylist())), "exactly once"
        logs = {replica.name: replica.logs() for replica in replicas}
        committed = [
            json.loads(line)["rows"]
            for text in logs.values()
            for line in text.splitlines()
            if '"event": "offload_committed"' in line
        ]
        assert sum(committed) == REPLICA_ROWS, "the windows the replicas committed add up to the source, none twice"
        assert not any('"event": "table_locked"' in text for text in logs.values()), "a table held elsewhere is no warning"
        assert all('"replica": ' in text for text in logs.values()), "every replica logs its id"
        for replica in replicas:
            _assert_stops_cleanly(replica)
    finally:
        for replica in replicas:
            replica.remove()


# -- the slim image -----------------------------------------------------------------------------


def test_slim_image_offloads_from_an_http_source(slim_sql: Deployment) -> None:
    """The slim image (no chDB) answers /healthz and /readyz, offloads every row from the HTTP source and stops cleanly."""
    assert slim_sql.get("/healthz")[0] == 200
    assert slim_sql.get("/readyz") == (200, "ready\n")
    assert slim_sql.iceberg_rows() == ROWS
    assert podman("healthcheck", "run", slim_sql.name).returncode == 0
    _assert_stops_cleanly(slim_sql)
    _assert_no_secret_in_logs(slim_sql)


def test_slim_image_says_what_needs_the_embedded_engine(slim_sql: Deployment) -> None:
    """In the slim image, `check` and a chdb:// source exit 2 with one line naming the missing embedded engine and the full image."""
    checked = slim_sql.run_once("check")
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "check needs the embedded ClickHouse engine" in checked.stderr and "slim image" in checked.stderr, checked.stderr
    assert "Traceback" not in checked.stderr
    embedded = podman("run", "--rm", "--network=none", SLIM, "once")  # no config: the embedded default (chdb://)
    assert embedded.returncode == 2, embedded.stdout + embedded.stderr
    assert "source.dsn = 'chdb://" in embedded.stderr and "needs the embedded ClickHouse engine" in embedded.stderr
    assert "use the full image" in embedded.stderr and "Traceback" not in embedded.stderr


def test_slim_image_is_much_smaller_and_has_no_chdb(images: dict[str, str]) -> None:
    """The slim image lacks chDB (and pandas, numpy), keeps what the HTTP path needs, and is less than half the size of the full one."""
    sizes = {tag: int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout) for tag in (FULL, SLIM)}
    probe = "import importlib.util as u; print(*(u.find_spec(m) is not None for m in ('chdb', 'pandas', 'numpy', 'clickhouse_connect', 'pyarrow', 'pyiceberg')))"
    found = {
        tag: podman("run", "--rm", "--network=none", "--entrypoint", "python", tag, "-c", probe).stdout.split() for tag in sizes
    }
    assert found[FULL] == ["True"] * 6, found
    assert found[SLIM] == ["False", "False", "False", "True", "True", "True"], found
    assert podman("image", "inspect", "--format", '{{index .Labels "offloader.variant"}}', SLIM).stdout.strip() == "slim"
    print(f"\nimage sizes: {sizes}", file=sys.stderr)
    assert sizes[SLIM] < sizes[FULL] / 2, sizes


# -- compose.yaml -------------------------------------------------------------------------------


def _compose_config(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as podman-compose resolves it (`podman-compose config`, through deploy/test-image.sh)."""
    done = subprocess.run(
        ["bash", str(SCRIPT), "compose-config"], capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )
    assert done.returncode == 0, _tail(done.stderr, 30)
    resolved = yaml.safe_load(done.stdout)
    assert isinstance(resolved, dict), done.stdout[:2000]
    return resolved


def test_compose_file_is_valid_for_podman_compose(images: dict[str, str]) -> None:
    """podman-compose accepts compose.yaml and resolves it to the seven services, with the shared secrets interpolated alike, from defaults and from the environment."""
    resolved = _compose_config()
    services = resolved["services"]
    assert set(services) == {"clickhouse", "clickhouse-feed", "postgres", "seaweedfs", "offloader", "prometheus", "grafana"}

    def env(service: str, config: dict[str, Any]) -> dict[str, str]:
        value = config["services"][service].get("environment") or {}
        return dict(v.split("=", 1) for v in value) if isinstance(value, list) else {k: str(v) for k, v in value.items()}

    offloader = env("offloader", resolved)
    assert (
        offloader["OFFLOADER__SOURCE__PASSWORD"] == env("clickhouse", resolved)["OFFLOADER_CLICKHOUSE_PASSWORD"] == DEV_PASSWORD
    )
    assert offloader["OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY"] == env("seaweedfs", resolved)["OFFLOADER_S3_SECRET_KEY"]
    assert services["offloader"]["build"]["context"] in {".", str(ROOT)}
    overridden = _compose_config({"OFFLOADER_CLICKHOUSE_PASSWORD": OVERRIDE})
    assert env("offloader", overridden)["OFFLOADER__SOURCE__PASSWORD"] == OVERRIDE
    assert env("clickhouse", overridden)["OFFLOADER_CLICKHOUSE_PASSWORD"] == OVERRIDE


def test_compose_stack_runs_with_podman_compose(images: dict[str, str]) -> None:
    """compose.yaml's stack, run by podman-compose on stand-in images (grafana aside), offloads the feed's trades into every table, Prometheus scrapes offloader and loads the alert rules, every health check passes and offloader stops with exit code 0."""
    done = subprocess.run(
        ["bash", str(SCRIPT), "stack"],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "OFFLOADER_SKIP_BUILD": "1"},
    )
    assert done.returncode == 0, _tail(done.stderr, 60)
    results = _results(done.stdout)
    print(f"\ncompose stack: {results}", file=sys.stderr)
    status = json.loads(results["stack_status"])
    assert len(status) == 10 and all(rows and rows > 0 for rows in status.values()), status
    assert status["silver_trades"] >= 60000, "the feed's backfill of 3 x 20,000 trades reached silver"
    assert results["stack_readyz"] == "ready"
    assert results["stack_prometheus_scrapes_offloader"] == "up"
    assert int(results["stack_prometheus_rules"]) > 0
    for service in ("clickhouse", "postgres", "seaweedfs", "offloader", "prometheus"):
        assert results[f"stack_health {service}"] == "healthy", service
    assert results["stack_offloader_exit_code"] == "0"

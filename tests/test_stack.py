"""Static checks of the container image and the compose stack (Docker is not available here).

compose.yaml is parsed and cross-checked against the files it mounts, the Dockerfile, the
offloader config it mounts (loaded with offloader's own validator), the Prometheus and Grafana
provisioning, and the init and feed scripts (the feed's SQL runs against the ClickHouse schema
in chDB). docs/container.md describes the stack.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml  # a test dependency (pyproject.toml)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {"clickhouse", "clickhouse-feed", "postgres", "minio", "minio-init", "offloader", "prometheus", "grafana"}
OFFLOADER_NEEDS = {
    "clickhouse": "service_healthy",
    "postgres": "service_healthy",
    "minio": "service_healthy",
    "minio-init": "service_completed_successfully",
}

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
    """compose.yaml defines the eight services of the stack, each with a pinned image or a build."""
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
    assert checked >= 12
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else str(volume.get("source", ""))
            if source and not source.startswith(("./", "../", "/")):
                assert source in declared, f"{name}: named volume {source} is not declared under volumes:"


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
    """offloader starts only once ClickHouse, PostgreSQL and MinIO are healthy and the bucket exists."""
    deps = _depends_on(_service(compose, "offloader"))
    assert deps == OFFLOADER_NEEDS
    assert _depends_on(_service(compose, "clickhouse-feed")) == {"clickhouse": "service_healthy"}
    assert _depends_on(_service(compose, "minio-init")) == {"minio": "service_healthy"}
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
        if name in {"minio-init", "clickhouse-feed"}:
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
        9000: ("minio", 9000),
        9001: ("minio", 9001),
        9108: ("offloader", 9108),
        9090: ("prometheus", 9090),
        3000: ("grafana", 3000),
    }


def test_passwords_agree_between_services(compose: dict[str, Any]) -> None:
    """The secrets offloader is given are the ones the servers are initialised with."""
    clickhouse = _environment(_service(compose, "clickhouse"))
    postgres = _environment(_service(compose, "postgres"))
    minio = _environment(_service(compose, "minio"))
    minio_init = _environment(_service(compose, "minio-init"))
    feed = _environment(_service(compose, "clickhouse-feed"))
    offloader = _environment(_service(compose, "offloader"))

    assert offloader["OFFLOADER__SOURCE__PASSWORD"] == clickhouse["OFFLOADER_CLICKHOUSE_PASSWORD"] != ""
    assert offloader["OFFLOADER__CATALOG__PASSWORD"] == postgres["OFFLOADER_POSTGRES_PASSWORD"] != ""
    assert offloader["OFFLOADER__STATE__PASSWORD"] == postgres["OFFLOADER_POSTGRES_PASSWORD"]
    assert offloader["AWS_ACCESS_KEY_ID"] == minio_init["OFFLOADER_S3_ACCESS_KEY"]
    assert offloader["AWS_SECRET_ACCESS_KEY"] == minio_init["OFFLOADER_S3_SECRET_KEY"]
    assert len(minio_init["OFFLOADER_S3_SECRET_KEY"]) >= 8, "MinIO secret keys have at least 8 characters"
    assert minio_init["MINIO_ROOT_USER"] == minio["MINIO_ROOT_USER"]
    assert minio_init["MINIO_ROOT_PASSWORD"] == minio["MINIO_ROOT_PASSWORD"]
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8
    assert (feed["CLICKHOUSE_USER"], feed["CLICKHOUSE_PASSWORD"]) == (
        clickhouse["CLICKHOUSE_USER"],
        clickhouse["CLICKHOUSE_PASSWORD"],
    )
    assert clickhouse["CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT"] == "1", "the admin user creates the offloader user"


def test_stack_offloader_config_loads_with_the_container_environment(compose: dict[str, Any]) -> None:
    """The mounted offloader.toml passes offloader's validator with the image's and compose's environment, and names the stack's hosts."""
    from offloader.config import load_config

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
    assert config.catalog.warehouse.startswith("s3://cold/")
    endpoint = urlsplit(config.catalog.properties["s3.endpoint"])
    assert endpoint.hostname == "minio" and endpoint.port == 9000
    assert "s3.secret-access-key" not in config.catalog.properties, "the S3 secret comes from the environment"
    for hostname in ("clickhouse", "postgres", "minio"):
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
        ("minio-init", "init.sh"): {
            "MINIO_ROOT_USER",
            "MINIO_ROOT_PASSWORD",
            "OFFLOADER_S3_ACCESS_KEY",
            "OFFLOADER_S3_SECRET_KEY",
        },
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
    minio_policy = _host_path_of(compose, "minio-init", "/etc/minio-init/offloader-policy.json")
    assert minio_policy is not None and "/etc/minio-init/offloader-policy.json" in (ROOT / "deploy/minio/init.sh").read_text()


def test_feed_sql_runs_against_the_clickhouse_schema(tmp_path: Path) -> None:
    """The feed's backfill and live INSERTs run against config/clickhouse/schema.sql (in chDB) and reach silver and gold."""
    chdb = pytest.importorskip("chdb")
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

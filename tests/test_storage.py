"""offloader on real object storage and a real REST catalog (SeaweedFS): what only S3 shows.

The rest of the suite runs its storage-marked tests on every set-up; these check what a
deployment on S3 meets: the credential patterns it uses (from the environment, as a
container gets them), the region, and the engines that read through the REST catalog.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import Workspace, assert_exact, dedent, events, trades_table


@pytest.mark.parametrize("storage", ["s3-sql", "s3-rest"], indirect=True)
@pytest.mark.parametrize("pattern", ["aws", "offloader"])
def test_secrets_from_the_environment_as_the_example_config_suggests(ws: Workspace, pattern: str) -> None:
    """The key id in the file and the secret in AWS_SECRET_ACCESS_KEY (or OFFLOADER__CATALOG__*) offloads exactly."""
    assert ws.storage.seaweed is not None
    ws.secret_files = False
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(2000, start="2026-01-01 00:00:00")
    secrets = ws.storage.env()
    if pattern == "aws":
        secrets["AWS_SECRET_ACCESS_KEY"] = secrets.pop("OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY")
    done = ws.cli("once", env=secrets)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "committed 2,000 rows" in done.stdout
    assert ws.storage.seaweed.secret_key not in done.stdout + done.stderr
    assert_exact(ws)

    without = ws.cli("once")
    assert without.returncode == 2, "a missing secret is a config error at start, not a transient failure"
    assert "catalog.s3.access-key-id: is set but no secret key is" in without.stderr
    assert "table_retry" not in without.stderr


@pytest.mark.parametrize("storage", ["s3-rest"], indirect=True)
def test_the_cold_tier_is_read_through_the_rest_catalog_by_duckdb_and_clickhouse(ws: Workspace) -> None:
    """DuckDB's ATTACH (TYPE iceberg) and ClickHouse's DataLakeCatalog, as docs/storage.md gives them, read every row once."""
    seaweed = ws.storage.seaweed
    assert seaweed is not None
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(3000, start="2026-01-01 00:00:00")
    assert ws.run_once().returncode == 0
    namespace = ws.target("cold.trades").split(".")[0]
    expected = sorted(ws.engine.rows("SELECT toUnixTimestamp64Micro(ingestion_timestamp), sequence_number FROM k2.trades"))

    duck = ws.storage.duckdb()
    duck.execute(
        f"CREATE SECRET cold_rest (TYPE iceberg, CLIENT_ID 'offloader', CLIENT_SECRET '{seaweed.secret_key}', "
        f"OAUTH2_SERVER_URI '{seaweed.rest_uri}/v1/oauth/tokens')"
    )
    duck.execute(f"ATTACH 'warehouse' AS cold (TYPE iceberg, SECRET cold_rest, ENDPOINT '{seaweed.rest_uri}')")
    rows = duck.execute(f"SELECT epoch_us(ingestion_timestamp), sequence_number FROM cold.{namespace}.trades").fetchall()
    assert sorted(tuple(r) for r in rows) == expected

    ws.engine.command("SET allow_experimental_database_iceberg = 1")
    ws.engine.command(
        f"CREATE DATABASE cold_rest ENGINE = DataLakeCatalog('{seaweed.rest_uri}/v1', 'offloader', '{seaweed.secret_key}') "
        "SETTINGS catalog_type = 'rest', "
        f"catalog_credential = 'offloader:{seaweed.secret_key}', warehouse = 'warehouse', "
        f"oauth_server_uri = '{seaweed.rest_uri}/v1/oauth/tokens', storage_endpoint = '{seaweed.endpoint}/warehouse'"
    )
    rows = ws.engine.rows(
        f"SELECT toUnixTimestamp64Micro(ingestion_timestamp), sequence_number FROM cold_rest.`{namespace}.trades`"
    )
    assert sorted(rows) == expected


def test_an_s3_warehouse_on_aws_without_a_region_is_warned_about(tmp_path: Path) -> None:
    """On AWS (no s3.endpoint) without s3.region or AWS_REGION, a start warns once that every start looks the region up."""
    from offloader.app import App
    from offloader.config_loader import load_config

    config = tmp_path / "offloader.toml"
    config.write_text(
        dedent(
            f"""
            [source]
            dsn = "chdb://{tmp_path / "clickhouse"}"
            [catalog]
            uri = "sqlite:///{tmp_path / "catalog.db"}"
            warehouse = "s3://cold/warehouse"
            [state]
            dsn = "sqlite:///{tmp_path / "state.db"}"
            [logging]
            format = "json"
            [[tables]]
            name = "trades"
            source = "k2.trades"
            target = "cold.trades"
            cursor = ["ingestion_timestamp"]
            """
        )
    )

    def start(env: dict[str, str]) -> list[Any]:
        """The s3_region_unset warnings of one start (the app built from the config, as every command does)."""
        with structlog.testing.capture_logs() as logs:
            App(load_config(config, env=env)).close()
        return events(logs, "s3_region_unset")

    quiet, warned = start({"AWS_REGION": "eu-west-1"}), start({})
    (warning,) = warned
    assert warning["log_level"] == "warning" and "catalog.s3.region" in warning["hint"]
    assert quiet == []

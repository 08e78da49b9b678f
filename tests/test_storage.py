"""offloader on real object storage and a real REST catalog (SeaweedFS): how credentials reach it.

The rest of the suite runs its storage-marked tests on every set-up; these tests check what
only a deployment on S3 shows: the credential patterns that a deployment uses, from the
environment as a container gets them.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import Workspace, clean_env, trades_table
from test_offload import assert_exact


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
    done = subprocess.run(ws.command("once"), capture_output=True, text=True, env=clean_env(**secrets), cwd=ws.root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "committed 2,000 rows" in done.stdout
    assert ws.storage.seaweed.secret_key not in done.stdout + done.stderr
    assert_exact(ws)

    without = subprocess.run(ws.command("once"), capture_output=True, text=True, env=clean_env(), cwd=ws.root, timeout=300)
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

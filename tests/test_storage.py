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

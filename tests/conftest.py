"""Test fixtures: a workspace per test with a real chDB source, real PostgreSQL, real Iceberg.

Only fixtures and hooks live here; what they build, and every helper tests share, is in
tests/helpers.py and tests/endpoint.py (tests import from there, never from conftest).

Every test that needs PostgreSQL gets a fresh database on the server named by
``OFFLOADER_TEST_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``), used
for both the Iceberg SQL catalog and offloader's state. With ``OFFLOADER_REQUIRE_PG=1``
(set by tests/run.sh, so in CI) an unreachable server fails the tests instead of skipping.

A test marked ``@pytest.mark.storage`` runs on each storage set-up of tests/storage.py (local
files, S3 with the SQL catalog, S3 with the REST catalog; ``fileio=True`` adds the fsspec
FileIO variants); the others run on local files. The S3 set-ups share one SeaweedFS server
per session, started on first use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from endpoint import Endpoint
from helpers import PG_DSN, Workspace, fresh_pg_database, pg_admin
from storage import FSSPEC_SETUPS, SETUPS, SeaweedFS, Storage

from offloader.config import StateConfig
from offloader.state import StateStore


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Storage-marked tests run once per set-up."""
    marker = metafunc.definition.get_closest_marker("storage")
    if marker is not None and "storage" in metafunc.fixturenames:
        setups = SETUPS + (FSSPEC_SETUPS if marker.kwargs.get("fileio") else ())
        metafunc.parametrize("storage", setups, indirect=True)


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real SeaweedFS (S3 + Iceberg REST catalog) for the session."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def storage(request: pytest.FixtureRequest, tmp_path: Path, pg_database: str) -> Storage:
    """The test's warehouse and catalog: local files and the SQL catalog unless the test is storage-marked."""
    setup = getattr(request, "param", "local")
    seaweed = request.getfixturevalue("seaweed_server") if setup.startswith("s3") else None
    return Storage(setup=setup, pg_dsn=pg_database, root=tmp_path, seaweed=seaweed)


@pytest.fixture(scope="session")
def pg_available() -> bool:
    """Whether the test PostgreSQL server answers (in CI, ``OFFLOADER_REQUIRE_PG``, it must)."""
    try:
        pg_admin().close()
        return True
    except Exception as exc:
        if os.environ.get("OFFLOADER_REQUIRE_PG"):
            pytest.fail(f"PostgreSQL is required but not reachable at {PG_DSN}: {exc}")
        return False


@pytest.fixture
def pg_database(pg_available: bool) -> Iterator[str]:
    """A fresh PostgreSQL database for one test; its DSN."""
    if not pg_available:
        pytest.skip(f"PostgreSQL not reachable at {PG_DSN}")
    with fresh_pg_database() as dsn:
        yield dsn


@pytest.fixture
def ws(tmp_path: Path, pg_database: str, storage: Storage) -> Iterator[Workspace]:
    """The test's workspace (tests/helpers.py) on its own directory, database and storage set-up."""
    workspace = Workspace(root=tmp_path, pg_dsn=pg_database, storage=storage)
    try:
        yield workspace
    finally:
        workspace.release()


@pytest.fixture
def endpoint(ws: Workspace) -> Iterator[Endpoint]:
    """A remote ClickHouse over HTTP on the workspace's chDB directory (tests/endpoint.py), killed at the end."""
    ep = Endpoint(ws)
    try:
        yield ep
    finally:
        ep.kill()


@pytest.fixture(params=["postgresql", "sqlite"])
def state_config(request: pytest.FixtureRequest, tmp_path: Path) -> StateConfig:
    """A fresh, empty state database: PostgreSQL (its own database) or SQLite (its own file)."""
    if request.param == "postgresql":
        return StateConfig(dsn=request.getfixturevalue("pg_database"))
    return StateConfig(dsn=f"sqlite:///{tmp_path / 'state' / 'offloader.db'}")


@pytest.fixture
def store(state_config: StateConfig) -> Iterator[StateStore]:
    """The state store on the fresh database, its schema applied."""
    opened = StateStore(state_config)
    opened.migrate()
    try:
        yield opened
    finally:
        opened.close()

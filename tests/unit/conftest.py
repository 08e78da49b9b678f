"""The unit tier: tests of pure logic that need no server, run alone with ``pytest tests/unit``.

What belongs here: a test of one piece of logic (parsing, planning, validation, formatting,
the architecture read from the source) that opens no PostgreSQL, no chDB or ClickHouse, no
SeaweedFS and starts no offloader process, and finishes in well under a second. Fakes are
for these tests only. Everything that touches a real component is an integration test and
lives in ``tests/`` beside this directory (``pytest tests --ignore=tests/unit`` runs that tier
alone); the house style's bias is towards those.

The split is kept by the fixtures a test asks for: a test collected here that asks for one of
the integration tier's fixtures (:data:`SERVER_FIXTURES`, tests/conftest.py) is an error at
collection, so ``pytest tests/unit`` stays server-free and fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent
SERVER_FIXTURES = frozenset({"ws", "storage", "pg_database", "pg_available", "seaweed_server"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a unit test that asks for a server."""
    for item in items:
        if UNIT in Path(item.path).resolve().parents:
            servers = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
            if servers:
                raise pytest.UsageError(
                    f"{item.nodeid} is in tests/unit but asks for {', '.join(sorted(servers))}: "
                    "a test that needs a server belongs in tests/"
                )

"""A minimal valid config file for the unit tests: nothing in it is contacted by load_config."""

from __future__ import annotations

from pathlib import Path

MINIMAL = """\
[source]
dsn = "http://offloader@clickhouse:8123/k2"
[catalog]
uri = "sqlite:///catalog.db"
warehouse = "file:///tmp/warehouse"
[state]
dsn = "sqlite:///state.db"
[[tables]]
name = "trades"
source = "k2.trades"
target = "cold.trades"
cursor = ["ingestion_timestamp", "sequence_number"]
"""


def write(tmp_path: Path, text: str = MINIMAL) -> Path:
    """Write ``text`` as offloader.toml under ``tmp_path`` and return its path."""
    path = tmp_path / "offloader.toml"
    path.write_text(text)
    return path

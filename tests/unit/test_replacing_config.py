"""``corrections = "replacing"``: its keys checked at start-up, and the engine's parameters read."""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_config import MINIMAL, write

from offloader.config_loader import load_config
from offloader.errors import ConfigError
from offloader.replacing import engine_columns


def test_replacing_with_its_columns_is_kept(tmp_path: Path) -> None:
    text = MINIMAL + 'corrections = "replacing"\nversion_column = "version"\ndeleted_column = "is_deleted"\n'
    (table,) = load_config(write(tmp_path, text), env={}).tables
    assert (table.corrections, table.version_column, table.deleted_column) == ("replacing", "version", "is_deleted")


def test_the_default_is_none(tmp_path: Path) -> None:
    (table,) = load_config(write(tmp_path), env={}).tables
    assert (table.corrections, table.version_column, table.deleted_column) == ("none", None, None)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('corrections = "sometimes"\n', "tables.trades.corrections"),
        ('corrections = "replacing"\n', "tables.trades.version_column"),
        ('corrections = "replacing"\nversion_column = "bad name"\n', "tables.trades.version_column"),
        ('corrections = "replacing"\nversion_column = "v"\ndeleted_column = 3\n', "tables.trades.deleted_column"),
        ('version_column = "v"\n', "tables.trades.version_column"),
        ('deleted_column = "d"\n', "tables.trades.deleted_column"),
        (
            'corrections = "replacing"\nversion_column = "v"\nmode = "replace"\nreplace_lookback = "1h"\n',
            "tables.trades.corrections",
        ),
    ],
)
def test_bad_corrections_keys_are_refused_naming_the_key(tmp_path: Path, extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL + extra), env={})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("engine_full", "columns"),
    [
        ("ReplacingMergeTree(ver, is_deleted) ORDER BY (sym, id) SETTINGS index_granularity = 8192", ["ver", "is_deleted"]),
        ("ReplacingMergeTree(`ver`) ORDER BY id", ["ver"]),
        ("ReplacingMergeTree ORDER BY id", []),
        ("ReplacingMergeTree() ORDER BY id", []),
        ("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/t, x', '{replica}', ver, del) ORDER BY id", ["ver", "del"]),
        ("ReplicatedReplacingMergeTree ORDER BY id", []),
    ],
)
def test_engine_columns_are_read_from_engine_full(engine_full: str, columns: list[str]) -> None:
    assert engine_columns(engine_full) == columns

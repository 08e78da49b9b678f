"""The tests' own helpers (tests/helpers.py) do what the integration tests rely on them for:
the exactness assertion fails on a row twice, missing or extra, the CLI runner builds the
command line the CLI takes, and the config writer quotes what TOML needs quoted."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import anchors, assert_same_rows, clean_env, cli_argv, slug, toml_key, toml_value


def test_same_rows_pass_in_any_order() -> None:
    """The same rows in another order are the same rows."""
    assert_same_rows([(1, "a"), (2, "b")], [(2, "b"), (1, "a")])


@pytest.mark.parametrize(
    ("cold", "says"),
    [
        ([(1,), (2,), (2,)], "1 rows twice"),
        ([(1,)], "1 rows missing"),
        ([(1,), (2,), (3,)], "1 rows not in the source"),
        ([], "2 rows missing"),
    ],
    ids=["twice", "missing", "extra", "empty"],
)
def test_same_rows_fail_on_a_row_twice_missing_or_extra(cold: list[tuple[int]], says: str) -> None:
    """A row twice, a row missing and a row the source does not hold each fail, naming the reader."""
    with pytest.raises(AssertionError, match=f"DuckDB: {says}"):
        assert_same_rows([(1,), (2,)], cold, "DuckDB")


def test_cli_argv_runs_this_interpreter_on_the_package() -> None:
    """The command line is this interpreter running the package, with --config before the command."""
    assert cli_argv("once", "--table", "t") == [sys.executable, "-m", "offloader", "once", "--table", "t"]
    assert cli_argv("status", config=Path("/x/o.toml")) == [sys.executable, "-m", "offloader", "--config", "/x/o.toml", "status"]


def test_clean_env_drops_every_offloader_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A subprocess's environment keeps nothing of the test's OFFLOADER* settings but what it is given."""
    monkeypatch.setenv("OFFLOADER__STATE__DSN", "postgresql://leak")
    monkeypatch.setenv("OFFLOADER_KILL_AT", "after_read")
    env = clean_env(OFFLOADER_FAULT="internal_error:state_connect")
    assert [k for k in env if k.startswith("OFFLOADER")] == ["OFFLOADER_FAULT"]
    assert env["PATH"] == os.environ["PATH"]


def test_toml_values_and_keys_read_back_as_written() -> None:
    """Values with quotes, backslashes and lists, and dotted keys, are written so that TOML reads them back."""
    values = {"s": 'a "q" \\ b', "n": 3, "b": True, "l": ["x", 1]}
    text = "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in {**values, "s3.endpoint": "http://h"}.items())
    assert tomllib.loads(text) == {**values, "s3.endpoint": "http://h"}


def test_anchors_are_github_s(tmp_path: Path) -> None:
    """Headings become the anchors GitHub gives them."""
    doc = tmp_path / "doc.md"
    doc.write_text("# Offload failure\n## OffloadLagHigh (table)\ntext\n### Step 2: `check --repair`\n")
    assert slug("## Step 2: `check --repair`") == "step-2-check---repair"
    assert anchors(doc) == {"offload-failure", "offloadlaghigh-table", "step-2-check---repair"}

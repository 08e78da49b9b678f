"""Cron expressions checked by the scheduler's own parser at load time, and the default config when no file is given."""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_config import MINIMAL, write

from offloader.cli import main
from offloader.config import ConfigError
from offloader.config_loader import load_config
from offloader.demo import embedded_default
from offloader.scheduler import cron_problem

ACCEPTED = 'expected a 5-field cron expression such as "*/15 * * * *"'


@pytest.mark.parametrize("expression", ["*/15 * * * *", "0 2 * * *", "30 6 1 * mon-fri", "0 0 1 jan,jul *"])
def test_five_field_expressions_are_accepted(expression: str) -> None:
    assert cron_problem(expression) is None


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("bad", "Wrong number of fields; got 1, expected 5"),
        ("* * * * * *", "Wrong number of fields; got 6, expected 5"),
        ("61 * * * *", "Error validating expression '61': the last value (61) is higher than the maximum value (59)"),
    ],
)
def test_a_refused_expression_says_why(expression: str, reason: str) -> None:
    assert cron_problem(expression) == reason


def test_load_config_reports_every_bad_cron_with_the_other_problems(tmp_path: Path) -> None:
    """Bad crons in [schedule], in a table and from a variable are all reported at once, beside any other problem."""
    text = MINIMAL.replace('cursor = ["', 'cron = "0 25 * * *"\ncursor = ["') + '[schedule]\ncron = "often"\nmax_parallel = 0\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={"OFFLOADER__SCHEDULE__MAINTENANCE_CRON": "2am"})
    found = info.value.problems
    assert [p.split(" = ", 1)[0] for p in found] == [
        "schedule.cron", "schedule.maintenance_cron", "schedule.max_parallel", "tables.trades.cron"
    ]  # fmt: skip
    assert found[0].startswith(f"schedule.cron = 'often': {ACCEPTED} (Wrong number of fields")
    assert found[1].startswith(f"schedule.maintenance_cron = '2am' (from OFFLOADER__SCHEDULE__MAINTENANCE_CRON): {ACCEPTED}")
    assert found[3].startswith(f"tables.trades.cron = '0 25 * * *': {ACCEPTED} (Error validating expression '25'")


def test_a_good_cron_is_kept_as_written(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL + '[schedule]\ncron = "0 3 * * *"\n'), env={}).schedule.cron == "0 3 * * *"


def test_the_cli_refuses_a_bad_cron_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command checks cron at start-up: a bad one is one line on stderr and exit code 2, before anything connects."""
    path = write(tmp_path, MINIMAL + '[schedule]\nmaintenance_cron = "0 2 * *"\n')
    assert main(["--config", str(path), "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("offloader: invalid configuration:\n  - schedule.maintenance_cron = '0 2 * *': " + ACCEPTED)
    assert "Traceback" not in err


def test_no_file_takes_the_default_given_under_the_data_directory(tmp_path: Path) -> None:
    """With no path nor OFFLOADER_CONFIG, the default is built under OFFLOADER_DATA_DIR and validated like a file."""
    config = load_config(None, env={"OFFLOADER_DATA_DIR": str(tmp_path)}, default=embedded_default)
    assert config.origin == "embedded default" and config.data_dir == tmp_path
    assert config.source.dsn == f"chdb://{tmp_path / 'clickhouse'}" and config.state.dsn == f"sqlite:///{tmp_path / 'state.db'}"
    assert config.schedule.interval == 30 and len(config.tables) == 10
    with pytest.raises(ConfigError) as info:
        load_config(
            None, env={"OFFLOADER_DATA_DIR": str(tmp_path), "OFFLOADER__SOURCE__SAFETY_LAG": "x"}, default=embedded_default
        )
    assert info.value.problems[0].startswith("source.safety_lag = 'x' (from OFFLOADER__SOURCE__SAFETY_LAG)")


def test_no_file_and_no_default_is_a_config_error(tmp_path: Path) -> None:
    """Without a file and without a default to fall back on, loading says how to give a file."""
    with pytest.raises(ConfigError) as info:
        load_config(None, env={})
    assert info.value.problems == ["--config: no configuration file given (pass --config or set OFFLOADER_CONFIG)"]
    assert load_config(None, env={"OFFLOADER_CONFIG": str(write(tmp_path))}).origin == str(tmp_path / "offloader.toml")

"""OFFLOADER__... overrides: how a variable's text becomes a value, and which variables are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_config import MINIMAL, write

from offloader.config import ConfigError
from offloader.config_loader import load_config


def problems(path: Path, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    return info.value.problems


def test_numbers_booleans_and_lists_are_read_as_toml(tmp_path: Path) -> None:
    """An integer, a boolean and a list in a variable arrive typed, as they would from the file."""
    env = {
        "OFFLOADER__SCHEDULE__MAX_PARALLEL": "8",
        "OFFLOADER__SCHEDULE__RUN_AT_START": "false",
        "OFFLOADER__SERVER__ENABLED": "false",
        "OFFLOADER__TABLES__TRADES__CURSOR": '["ts"]',
        "OFFLOADER__TABLES__TRADES__PARTITION_BY": '["day(ts)", "bucket(4, symbol)"]',
        "OFFLOADER__TABLES__TRADES__TRUNCATE_DATETIME64": "true",
    }
    config = load_config(write(tmp_path), env=env)
    assert config.schedule.max_parallel == 8 and config.schedule.run_at_start is False
    assert config.server.enabled is False
    (table,) = config.tables
    assert table.cursor == ("ts",) and table.partition_by == ("day(ts)", "bucket(4, symbol)")
    assert table.truncate_datetime64 is True


def test_text_that_is_not_toml_stays_text(tmp_path: Path) -> None:
    """A bare word or a duration is kept as the string it is."""
    env = {"OFFLOADER__SOURCE__SAFETY_LAG": "90s", "OFFLOADER__LOGGING__LEVEL": "debug", "OFFLOADER__SOURCE__USER": "reader one"}
    config = load_config(write(tmp_path), env=env)
    assert config.source.safety_lag == 90 and config.logging.level == "debug" and config.source.user == "reader one"


def test_a_coerced_value_of_the_wrong_type_is_refused_naming_the_variable(tmp_path: Path) -> None:
    """A number where a boolean belongs, or a decimal where an integer does, is a problem naming its variable."""
    env = {"OFFLOADER__SCHEDULE__RUN_AT_START": "1", "OFFLOADER__OFFLOAD__COMMIT_ATTEMPTS": "1.5"}
    assert problems(write(tmp_path), env) == [
        "offload.commit_attempts = 1.5 (from OFFLOADER__OFFLOAD__COMMIT_ATTEMPTS): expected an integer from 1 to 100",
        "schedule.run_at_start = 1 (from OFFLOADER__SCHEDULE__RUN_AT_START): expected true or false",
    ]


def test_a_password_is_taken_verbatim_never_parsed(tmp_path: Path) -> None:
    """A password variable keeps its exact text, even when it reads as TOML (a boolean, a quoted string, a number)."""
    env = {"OFFLOADER__SOURCE__PASSWORD": "true", "OFFLOADER__STATE__PASSWORD": '"quoted"', "OFFLOADER__CATALOG__PASSWORD": "007"}
    config = load_config(write(tmp_path), env=env)
    assert config.source.password is not None and config.source.password.reveal() == "true"
    assert config.state.password is not None and config.state.password.reveal() == '"quoted"'
    assert config.catalog.password is not None and config.catalog.password.reveal() == "007"


def test_variable_names_match_sections_keys_and_tables_in_any_case(tmp_path: Path) -> None:
    """Section, key and table name in a variable are matched without regard to case."""
    env = {"OFFLOADER__Schedule__Max_Parallel": "3", "OFFLOADER__TABLES__Trades__MAX_WINDOW": "5m"}
    config = load_config(write(tmp_path), env=env)
    assert config.schedule.max_parallel == 3 and config.tables[0].max_window == 300


def test_malformed_variables_are_refused_by_name(tmp_path: Path) -> None:
    """A variable with an empty part, too many parts, or aimed inside a value that is not a section is a problem naming it."""
    path = write(tmp_path, 'data_dir = "/var/lib/offloader"\n' + MINIMAL)
    env = {"OFFLOADER__SOURCE__": "x", "OFFLOADER__SOURCE__DSN__EXTRA": "x", "OFFLOADER__DATA_DIR__PATH": "/x"}
    assert problems(path, env) == [
        "OFFLOADER__DATA_DIR__PATH: data_dir is not a section ([data_dir]) whose keys can be overridden",
        "OFFLOADER__SOURCE__: environment overrides take the form OFFLOADER__SECTION__KEY or OFFLOADER__TABLES__NAME__KEY",
        "OFFLOADER__SOURCE__DSN__EXTRA: environment overrides take the form OFFLOADER__SECTION__KEY or "
        "OFFLOADER__TABLES__NAME__KEY",
    ]


def test_other_variables_are_ignored(tmp_path: Path) -> None:
    """Variables without the double-underscore prefix leave the config as the file has it."""
    env = {"OFFLOADER_SCHEDULE__MAX_PARALLEL": "9", "SCHEDULE__MAX_PARALLEL": "9", "OFFLOADER_DATA_DIR": "/elsewhere"}
    assert load_config(write(tmp_path), env=env) == load_config(write(tmp_path), env={})


def test_a_section_that_only_the_environment_names_is_created(tmp_path: Path) -> None:
    """An override of a section absent from the file creates it, so [schedule] can come wholly from variables."""
    config = load_config(write(tmp_path), env={"OFFLOADER__SCHEDULE__CRON": "0 * * * *"})
    assert config.schedule.cron == "0 * * * *"

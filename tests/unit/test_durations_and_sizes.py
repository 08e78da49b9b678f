"""parse_duration and parse_size: every unit, decimals and compounds, and what they refuse."""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_config import MINIMAL, write

from offloader.config import ConfigError, parse_duration, parse_size
from offloader.config_loader import load_config


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("1ms", 0.001), ("1s", 1), ("1m", 60), ("1h", 3600), ("1d", 86400), ("1w", 604800),
        ("1.5h", 5400), ("0.5s", 0.5), ("2.25m", 135), ("1w2d", 777600), ("1h30m15s", 5415),
        ("1s500ms", 1.5), ("  5m  ", 300), ("0ms", 0),
    ],
)  # fmt: skip
def test_duration_units_decimals_and_compounds(text: str, seconds: float) -> None:
    """Each unit, a decimal amount and several parts in a row add up to the seconds they name."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5x", "m5", "5M", "5 m", "1.5.5s", "5m ago", "1h-30m", ".5s", "5.s", "ms", "1s2"])
def test_duration_refuses_what_is_not_a_sequence_of_amounts_and_units(text: str) -> None:
    """A missing or unknown unit, an upper-case unit, inner spaces or trailing text is a ValueError naming the input."""
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert info.value.args == (text.strip(),)


@pytest.mark.parametrize(
    "text, size",
    [
        ("100B", 100), ("1KB", 1000), ("1MB", 10**6), ("2GB", 2 * 10**9), ("1KiB", 1024), ("1MiB", 2**20),
        ("1GiB", 2**30), ("64mib", 64 * 2**20), ("10 MiB", 10 * 2**20), ("1.5MiB", 1572864), ("0.5KiB", 512),
        ("1.0009KB", 1000), ("4096", 4096), (4096, 4096),
    ],
)  # fmt: skip
def test_size_units_decimals_and_byte_counts(text: str | int, size: int) -> None:
    """Decimal (KB, MB, GB) and binary (KiB, MiB, GiB) units in any case, decimals rounded down to a byte, plain counts."""
    assert parse_size(text) == size


@pytest.mark.parametrize("value", [0, -5, True, "0", "0MiB", "0.0001B", "-1MiB", "5TB", "MiB", "1 0MB", "12 bytes", ""])
def test_size_refuses_zero_negative_unknown_units_and_booleans(value: str | int) -> None:
    """A size must be a positive byte count: zero, below one byte, negative, a boolean or an unknown unit is a ValueError."""
    with pytest.raises(ValueError):
        parse_size(value)


def problems(tmp_path: Path, extra: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + extra), env={})
    return info.value.problems


def test_bad_sizes_are_reported_with_the_accepted_forms(tmp_path: Path) -> None:
    """A size that does not parse names its key, its value and the forms a size takes."""
    assert problems(tmp_path, '[offload]\ntarget_file_size = "5TB"\nbatch_size = -1\n') == [
        'offload.target_file_size = \'5TB\': expected a positive size such as "128MiB", "64MB" or a byte count',
        'offload.batch_size = -1: expected a positive size such as "128MiB", "64MB" or a byte count',
    ]


def test_a_duration_below_its_minimum_names_the_minimum(tmp_path: Path) -> None:
    """A duration that parses but is too short says how short it may be."""
    assert problems(tmp_path, '[schedule]\ninterval = "500ms"\n[maintenance]\nretain = "30s"\n') == [
        "schedule.interval = '500ms': must be at least 1s",
        "maintenance.retain = '30s': must be at least 1m",
    ]


def test_sizes_and_durations_reach_the_config_in_bytes_and_seconds(tmp_path: Path) -> None:
    """Sizes and durations in the file arrive in the Config as bytes and seconds; unset ones keep their defaults."""
    config = load_config(
        write(tmp_path, MINIMAL + '[offload]\ntarget_file_size = "64MiB"\n[schedule]\ninterval = "1m30s"\n'), env={}
    )
    assert config.offload.target_file_size == 64 * 2**20 and config.offload.batch_bytes == 8 * 2**20
    assert config.schedule.interval == 90
    assert config.maintenance.target_file_size == 128 * 2**20 and config.tables[0].target_file_size is None

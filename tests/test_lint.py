"""The code base passes its own checks (ruff lint and format, mypy), as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT


def test_ruff_check_is_clean() -> None:
    """`ruff check` finds nothing in the package, the tests and the benchmarks."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "offloader", "tests", "bench"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    """`ruff format --check` would change nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "offloader", "tests", "bench"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_type_errors_in_the_package() -> None:
    """mypy, configured in pyproject.toml, finds nothing in the package."""
    result = subprocess.run([sys.executable, "-m", "mypy", "offloader"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr

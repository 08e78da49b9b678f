"""Query parameters as the embedded engine takes them: text escaped the way the server parses it."""

from __future__ import annotations

import pytest

from offloader.clickhouse import param_strings


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("back\\slash", "back\\\\slash"),
        ("tab\there", "tab\\there"),
        ("new\nline", "new\\nline"),
        ("carriage\rreturn", "carriage\\rreturn"),
        ("nul\0byte", "nul\\0byte"),
        ("it's", "it\\'s"),
        ("ünïcødé ✓", "ünïcødé ✓"),
        ("plain", "plain"),
    ],
)
def test_text_is_escaped(value: str, sent: str) -> None:
    assert param_strings({"v": value}) == {"v": sent}


def test_numbers_pass_as_numbers_and_everything_else_as_escaped_text() -> None:
    assert param_strings({"i": 7, "f": 1.5, "b": True, "n": None, "l": "a\tb"}) == {
        "i": 7, "f": 1.5, "b": "True", "n": "None", "l": "a\\tb",
    }  # fmt: skip
    assert param_strings(None) == {}

"""Cursor ordering and UTC time text: what windows are built from."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from offloader.cursor import Cursor, format_time, from_micros, micros, parse_time, time_key


def test_cursors_order_by_instant_then_tie_breakers() -> None:
    cursors = [
        Cursor(("2026-01-01 00:00:00.5", 3)),
        Cursor(("2026-01-01 00:00:00.000000001", 9)),
        Cursor(("2026-01-01 00:00:00.500000000", 1)),
        Cursor(("2026-01-01 00:00:00", 2)),
    ]
    ordered = sorted(cursors, key=Cursor.sort_key)
    assert [c.values for c in ordered] == [
        ("2026-01-01 00:00:00", 2),
        ("2026-01-01 00:00:00.000000001", 9),
        ("2026-01-01 00:00:00.500000000", 1),
        ("2026-01-01 00:00:00.5", 3),
    ]


def test_fractions_of_any_length_compare_as_instants() -> None:
    """Text comparison would put "…:00.5" after "…:00.499999999" only by luck; the key pads the fraction."""
    assert time_key("2026-01-01 00:00:00.5") > time_key("2026-01-01 00:00:00.499999999")
    assert time_key("2026-01-01 00:00:00") == time_key("2026-01-01 00:00:00.000000000")
    assert time_key("2026-01-01 00:00:01") > time_key("2026-01-01 00:00:00.999999999")


def test_cursor_json_round_trip_keeps_types() -> None:
    cursor = Cursor(("2026-01-01 00:00:00.123456789", 42, "BTC-USDT"))
    again = Cursor.from_json(cursor.to_json())
    assert again == cursor and again.time == "2026-01-01 00:00:00.123456789"
    assert isinstance(again.values[1], int)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01 00:00:00", 1_767_225_600_000_000),
        ("2026-01-01 00:00:00.000001", 1_767_225_600_000_001),
        ("2026-01-01 00:00:00.000001999", 1_767_225_600_000_001),  # sub-microsecond digits truncated
        ("1970-01-01 00:00:00", 0),
        ("1969-12-31 23:59:59.999999", -1),
        ("1900-01-01 00:00:00", -2_208_988_800_000_000),
    ],
)
def test_micros_and_back(text: str, expected: int) -> None:
    assert micros(text) == expected
    assert micros(from_micros(expected)) == expected


def test_parse_and_format_are_utc_and_inverse_to_the_microsecond() -> None:
    moment = parse_time("2026-03-04 05:06:07.890123456")
    assert moment == datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    assert format_time(moment) == "2026-03-04 05:06:07.890123"
    assert parse_time(format_time(moment)) == moment

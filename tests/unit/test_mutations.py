"""Reading a mutation's command (as system.mutations prints it) into the time range it can have changed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from offloader.corrections import Position
from offloader.mutations import Mutation, touched

DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("command", "lo", "hi"),
    [
        ("(DELETE WHERE ts < '2026-12-01 00:00:00')", None, "2026-12-01 00:00:00.000001"),
        ("(DELETE WHERE '2026-01-02 00:00:00' < ts)", "2026-01-02 00:00:00.000000", None),
        (
            "(UPDATE px = 0 WHERE ((ts >= '2026-12-03') AND (ts <= toDateTime64('2026-12-04 00:00:00', 6))) AND (id > 2))",
            "2026-12-03 00:00:00.000000",
            "2026-12-04 00:00:00.000001",
        ),
        ("(UPDATE _row_exists = 0 WHERE id = 3)", None, None),  # a lightweight DELETE
        ("(UPDATE px = 1 WHERE (toDate(ts) = '2026-12-05') OR (id = 7))", None, None),
        (
            "(UPDATE px = 1 WHERE (toDate(ts) = '2026-12-05') OR (ts = '2026-12-09 01:00:00'))",
            "2026-12-05 00:00:00.000000",
            "2026-12-09 01:00:00.000001",
        ),
        ("(DELETE WHERE d = '2026-01-02')", "2026-01-02 00:00:00.000000", "2026-01-03 00:00:00.000001"),
        ("(DELETE WHERE toStartOfHour(ts) = '2026-01-02 05:00:00')", "2026-01-02 05:00:00.000000", "2026-01-02 06:00:00.000001"),
        ("(DELETE WHERE (ts > 1767225600) AND (symbol = 'a AND b OR c'))", "2026-01-01 00:00:00.000000", None),
        ("(DELETE WHERE ts > toDateTime('2026-01-01 00:00:00', 'Asia/Tokyo'))", None, None),  # another zone: not read
        ("(DELETE WHERE ts != '2026-01-01 00:00:00')", None, None),
        ("(DELETE IN PARTITION tuple() WHERE id = 11)", None, None),
        ("(UPDATE ts = ts + 1 WHERE ts = '2026-01-01 00:00:00')", None, None),  # moves rows anywhere
        ("(CLEAR COLUMN px)", None, None),
        (
            "(DELETE WHERE (ts >= '2026-01-01') AND (ts < '2026-01-02')), (UPDATE px = 2 WHERE ts = '2026-02-01 00:00:00.5')",
            "2026-01-01 00:00:00.000000",
            "2026-02-01 00:00:00.500001",
        ),
        (
            "(UPDATE q = 1 WHERE (ts >= '2026-12-06 21:00:00') AND (ts < (toDateTime64('2026-12-06 21:00:00', 6) + toIntervalHour(1))))",
            "2026-12-06 21:00:00.000000",
            "2026-12-06 22:00:00.000001",
        ),
        ("(DELETE WHERE ts > ('2026-01-02 00:00:00' - toIntervalDay(2)))", "2025-12-31 00:00:00.000000", None),
        ("(DELETE WHERE ts <= '2026-01-01 00:00:00.123456789')", None, "2026-01-01 00:00:00.123457"),
    ],
)
def test_the_where_bounds_the_rows_a_correction_changed(command: str, lo: str | None, hi: str | None) -> None:
    found = touched(command, "ts", {"d": DAY})
    assert found.rows and (found.lo, found.hi) == (lo, hi), found


@pytest.mark.parametrize(
    "command", ["(MATERIALIZE TTL)", "(MATERIALIZE INDEX i)", "(DROP PROJECTION p)", "(MODIFY COLUMN px Float32)"]
)
def test_ttl_merges_and_schema_mutations_are_not_corrections(command: str) -> None:
    assert not touched(command, "ts").rows


def test_a_column_in_another_time_zone_widens_the_range() -> None:
    found = touched("(DELETE WHERE ts = '2026-01-02 00:00:00')", "ts", utc=False)
    assert (found.lo, found.hi) == ("2026-01-01 10:00:00.000000", "2026-01-02 14:00:00.000001")


def test_mutations_are_ordered_by_creation_then_number() -> None:
    """mutation_10 comes after mutation_9 (not in text order); a position is after nothing it handled."""
    a, b = (
        Mutation("mutation_9.txt", "2026-01-01 00:00:00", "", True),
        Mutation("mutation_10.txt", "2026-01-01 00:00:00", "", True),
    )
    assert sorted([b, a], key=lambda m: m.order) == [a, b]
    at = Position().at(a)
    assert not at.after(a) and at.after(b) and Position().after(a)
    assert Position.from_json(at.to_json()) == at

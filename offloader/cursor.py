"""Cursor and time: positions in a source table, windows, and UTC time text.

A table's cursor is its committed position: the last ``(time, tie-breakers…)`` tuple. Time
travels as UTC text (``YYYY-MM-DD hh:mm:ss.ffffff[fff]``), the way ClickHouse renders it and
the marker stores it; these helpers parse, order and convert it. A leaf module: it imports
nothing of offloader, so every layer can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# The far end of a reset: beyond any time a source holds.
FAR_FUTURE = "2261-12-31 23:59:59.999999999"
TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


@dataclass(frozen=True)
class Cursor:
    """A position in a table: the last (time, tie-breakers…) tuple committed.

    ``values[0]`` is the time column rendered in UTC as text (``YYYY-MM-DD hh:mm:ss[.f…]``),
    the rest are the tie-breaker values as ClickHouse returned them.
    """

    values: tuple[Any, ...]

    @property
    def time(self) -> str:
        return str(self.values[0])

    def to_json(self) -> list[Any]:
        return list(self.values)

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> Cursor:
        return cls(tuple(data))

    def sort_key(self) -> tuple[Any, ...]:
        return (time_key(self.time), *self.values[1:])


def time_key(text: str) -> str:
    """Pad the fraction to nine digits so text comparison orders instants."""
    head, _, frac = text.partition(".")
    return f"{head}.{frac.ljust(9, '0')}"


def parse_time(text: str) -> datetime:
    head, _, frac = text.partition(".")
    return datetime.strptime(f"{head}.{(frac or '0')[:6].ljust(6, '0')}", TS_FORMAT).replace(tzinfo=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(text: str) -> int:
    """A UTC time text as microseconds since the epoch (sub-microsecond digits truncated)."""
    return (parse_time(text) - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> str:
    return format_time(_EPOCH + timedelta(microseconds=value))


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TS_FORMAT)


@dataclass(frozen=True)
class Window:
    """Rows after ``lo`` (exclusive tuple, or inclusive time when ``inclusive``) up to ``hi`` (inclusive time)."""

    lo: Cursor | None
    hi: str
    inclusive: bool = False


@dataclass(frozen=True)
class WindowStats:
    rows: int
    last: Cursor | None

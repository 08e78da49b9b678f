"""The soak's checker (bench/soak.py) on tiny inputs: it counts what it must, so a soak can fail."""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from soak import compare, rss_slope, table_key  # noqa: E402

SOURCE = [(1, 10), (1, 11), (2, 12), (3, 13)]


def counts(result: dict[str, int]) -> tuple[int, int, int, int]:
    return result["lost"], result["duplicated"], result["unexpected"], result["changed"]


def test_equal_sides_count_nothing() -> None:
    """The same keys in any order: every count is 0."""
    assert counts(compare(SOURCE, list(reversed(SOURCE)), key_len=2)) == (0, 0, 0, 0)


def test_a_row_missing_from_iceberg_is_lost() -> None:
    """A key deleted from the Iceberg side is counted as lost, once."""
    assert counts(compare(SOURCE, SOURCE[1:], key_len=2)) == (1, 0, 0, 0)


def test_a_row_twice_in_iceberg_is_duplicated() -> None:
    """A key written twice counts one duplicate per extra copy; three copies count two."""
    assert counts(compare(SOURCE, [*SOURCE, SOURCE[2]], key_len=2)) == (0, 1, 0, 0)
    assert counts(compare(SOURCE, [*SOURCE, SOURCE[2], SOURCE[2]], key_len=2)) == (0, 2, 0, 0)


def test_a_row_not_in_the_source_is_unexpected() -> None:
    """A key only Iceberg holds is unexpected; together with a loss both are counted."""
    assert counts(compare(SOURCE, [*SOURCE[:-1], (3, 14)], key_len=2)) == (1, 0, 1, 0)


def test_a_bar_with_other_values_is_changed_and_equal_numbers_are_equal() -> None:
    """Values after the key are compared: another volume counts as changed; 1.50 as Decimal equals 1.5 and 7 equals Decimal 7."""
    source = [(0, "binance", "BTC", Decimal("1.5"), 7)]
    assert counts(compare(source, [(0, "binance", "BTC", Decimal("1.50000000"), Decimal(7))], key_len=3)) == (0, 0, 0, 0)
    assert counts(compare(source, [(0, "binance", "BTC", Decimal("1.6"), 7)], key_len=3)) == (0, 0, 0, 1)


def test_a_key_the_source_holds_twice_is_reported() -> None:
    """A key that is not unique in the source is counted, so a wrong key choice cannot hide duplicates."""
    assert compare([*SOURCE, SOURCE[0]], SOURCE, key_len=2)["source_duplicated"] == 1


def test_the_key_of_a_table_is_its_cursor_and_a_bar_adds_its_grouping() -> None:
    """Append tables are keyed by their cursor; replace-mode bars by the cursor, exchange and symbol, with the bar's values compared."""
    assert table_key({"cursor": ["ingestion_timestamp", "sequence_number"], "mode": "append"}) == (
        ["ingestion_timestamp", "sequence_number"],
        [],
    )
    key, values = table_key({"cursor": ["window_start"], "mode": "replace"})
    assert key == ["window_start", "exchange", "symbol"] and "volume" in values


def test_rss_slope_ignores_restarts_and_start_up() -> None:
    """Flat incarnations give slope 0 whatever their levels; a steady 1 MiB a minute gives 10 per 10 minutes."""
    mib = 2**20
    flat = [{"t": t, "age": t - t0, "incarnation": i, "rss": level * mib}
            for i, (t0, level) in enumerate([(0, 100), (300, 300)]) for t in range(t0, t0 + 300, 10)]  # fmt: skip
    assert rss_slope(flat, since=0) == 0
    growing = [{"t": t, "age": t, "incarnation": 1, "rss": (100 + t / 60) * mib} for t in range(0, 600, 10)]
    assert rss_slope(growing, since=0) == 10
    assert rss_slope(growing[:2], since=0) is None  # nothing past the start-up

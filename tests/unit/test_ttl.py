"""Reading a source table's row-deleting TTL rules from ``system.tables.engine_full``."""

from __future__ import annotations

import pytest

from offloader.ttl import delete_ttls

HEAD = "MergeTree PARTITION BY toYYYYMM(ts) ORDER BY (symbol, ts)"


@pytest.mark.parametrize(
    ("engine_full", "expected"),
    [
        (HEAD, []),
        (f"{HEAD} SETTINGS index_granularity = 8192", []),
        (f"{HEAD} TTL ts + toIntervalDay(30) SETTINGS index_granularity = 8192", ["ts + toIntervalDay(30)"]),
        (f"{HEAD} TTL ts + toIntervalDay(30)", ["ts + toIntervalDay(30)"]),
        (f"{HEAD} TTL ts + toIntervalDay(30) DELETE", ["ts + toIntervalDay(30)"]),
        (f"{HEAD} TTL ts + toIntervalDay(30) DELETE WHERE symbol = 'X'", ["ts + toIntervalDay(30)"]),
        (f"{HEAD} TTL ts + toIntervalDay(7) TO VOLUME 'cold', ts + toIntervalDay(90)", ["ts + toIntervalDay(90)"]),
        (f"{HEAD} TTL ts + toIntervalDay(1) TO DISK 's3', ts + toIntervalDay(2) RECOMPRESS CODEC(ZSTD(17))", []),
        (f"{HEAD} TTL ts + toIntervalMonth(1) GROUP BY symbol SET price = max(price)", []),
        (
            f"{HEAD} TTL toDateTime(ts) + toIntervalDay(if(symbol = 'a,b', 1, 2)), ts + toIntervalYear(1)",
            ["toDateTime(ts) + toIntervalDay(if(symbol = 'a,b', 1, 2))", "ts + toIntervalYear(1)"],
        ),
        (
            f"{HEAD} TTL ts + toIntervalDay(1) WHERE s = 'a,b', ts + toIntervalDay(7)",
            ["ts + toIntervalDay(1)", "ts + toIntervalDay(7)"],
        ),
        (
            f"{HEAD} TTL ts + toIntervalDay(1) GROUP BY k, j SET v = max(v), w = sum(w), ts + toIntervalDay(30)",
            ["ts + toIntervalDay(30)"],
        ),
        (f"{HEAD} TTL ts + toIntervalDay(1) GROUP BY k, j, ts + toIntervalDay(30)", ["ts + toIntervalDay(30)"]),
    ],
    ids=[
        "none", "settings-only", "with-settings", "plain", "explicit-delete", "delete-where", "move-then-delete",
        "moves-only", "group-by", "commas-in-quotes-and-calls", "where-as-printed", "roll-up-several-keys-and-sets",
        "roll-up-keys-without-set",
    ],
)  # fmt: skip
def test_delete_ttls(engine_full: str, expected: list[str]) -> None:
    assert delete_ttls(engine_full) == expected


def test_a_column_named_like_a_keyword_is_not_a_ttl() -> None:
    """Only the TTL clause counts: a column called ttl_days in ORDER BY is not one."""
    assert delete_ttls("MergeTree ORDER BY (ttl_days, ts) SETTINGS index_granularity = 8192") == []

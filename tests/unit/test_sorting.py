"""The sorting of data files as pure logic: the merge of sorted runs gives what one sort gives."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from offloader.errors import InternalError
from offloader.iceberg.sorting import merge_sorted, sort_rows

COLUMNS = ["symbol", "price"]


def random_rows(rng: random.Random, n: int) -> pa.Table:
    """Rows with repeated keys, nulls and NaN in both sort columns, the symbol dictionary-encoded."""
    symbols = [rng.choice(["BTC", "ETH", "SOL", None]) for _ in range(n)]
    prices = [rng.choice([float("nan"), None, float(rng.randint(0, 5))]) for _ in range(n)]
    return pa.table({"symbol": pa.array(symbols).dictionary_encode(), "price": prices, "id": list(range(n))})


def keys(rows: pa.Table) -> list[tuple[object, ...]]:
    """(symbol, price) as text, so that NaN compares equal to NaN."""
    return [(str(s), str(p)) for s, p in zip(rows["symbol"].to_pylist(), rows["price"].to_pylist(), strict=True)]


def test_sort_rows_puts_nan_after_numbers_and_nulls_last() -> None:
    """Ascending, NaN after every number, null after everything, as Iceberg orders them."""
    rows = pa.table({"symbol": ["b", None, "a", "a"], "price": [1.0, 0.0, float("nan"), None]})
    out = sort_rows(rows, COLUMNS)
    assert keys(out) == [("a", "nan"), ("a", "None"), ("b", "1.0"), ("None", "0.0")]


def test_merge_of_sorted_runs_equals_one_sort() -> None:
    """Runs of any sizes, cut into batches of any sizes, merge into the rows one sort of all of them gives."""
    rng = random.Random(7)  # noqa: S311 - test data, not secrets
    for _ in range(30):
        runs = [sort_rows(random_rows(rng, rng.randint(0, 60)), COLUMNS) for _ in range(rng.randint(1, 6))]

        def batches(rows: pa.Table) -> list[pa.Table]:
            size = rng.randint(1, 9)
            return [rows.slice(i, size) for i in range(0, rows.num_rows, size)]

        merged = list(merge_sorted([iter(batches(r)) for r in runs], COLUMNS))
        out = pa.concat_tables(merged) if merged else pa.table({})
        expected = sort_rows(pa.concat_tables(runs), COLUMNS)
        assert out.num_rows == expected.num_rows
        assert keys(out) == keys(expected)
        ids = sorted(i for r in merged for i in r["id"].to_pylist())
        assert ids == sorted(i for r in runs for i in r["id"].to_pylist()), "every row once"


def test_merge_refuses_a_run_that_is_not_sorted() -> None:
    """A run out of order stops the merge with an error instead of looping or writing it unsorted."""
    unsorted = pa.table({"symbol": ["a", "c", "b"], "price": [1.0, 1.0, 1.0]})
    runs = [iter([unsorted]), iter([pa.table({"symbol": ["d"], "price": [1.0]})])]
    with pytest.raises(InternalError, match="not sorted"):
        list(merge_sorted(runs, COLUMNS))

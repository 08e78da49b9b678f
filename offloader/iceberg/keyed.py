"""The files of a table holding rows of given keys, and what stays of each (copy-on-write).

A correction window (``corrections = "replacing"``) removes the Iceberg copies of the keys
whose newest version it brings. :func:`files_holding_keys` finds them: the scan is planned
with a filter on the key columns (an ``IN`` list, or the keys' range when there are many),
so PyIceberg prunes by partition where the spec partitions on a key column, and by each
file's column bounds otherwise; the candidate files are read and the matching rows found
exactly with an Arrow join. Only a file that holds at least one of the keys is rewritten.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

IN_LIST_LIMIT = 512  # distinct values of a key column above which the filter is the range


def key_filter(keys: pa.Table) -> Any:
    """A PyIceberg row filter that every row holding one of ``keys`` passes (a superset)."""
    from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, In, LessThanOrEqual

    terms = []
    for name in keys.column_names:
        values = _literals(keys[name])
        if values is None:
            continue  # a type the filter cannot name: the exact match below still holds
        distinct = sorted(set(values))
        if len(distinct) <= IN_LIST_LIMIT:
            terms.append(In(name, distinct))  # type: ignore[call-arg,arg-type]
        else:
            terms.append(And(GreaterThanOrEqual(name, distinct[0]), LessThanOrEqual(name, distinct[-1])))  # type: ignore[call-arg,arg-type]
    if not terms:
        return AlwaysTrue()
    return terms[0] if len(terms) == 1 else And(*terms)


def _literals(column: pa.ChunkedArray) -> list[Any] | None:
    kind = column.type
    if pa.types.is_timestamp(kind):
        return pc.cast(pc.cast(column, pa.timestamp("us", tz=kind.tz)), pa.int64()).to_pylist()
    if pa.types.is_date32(kind):
        return pc.cast(column, pa.int32()).to_pylist()
    if pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column.to_pylist()
    if pa.types.is_decimal(kind):
        scale = decimal.Decimal(1).scaleb(-kind.scale)
        return [v.quantize(scale) for v in column.to_pylist()]
    return None


def matching(rows: pa.Table, keys: pa.Table) -> pa.Array:
    """A boolean mask of ``rows``: True where the row's key is one of ``keys``."""
    names = keys.column_names
    index = pa.array(range(rows.num_rows), pa.int64())
    probe = pa.table({**{n: rows[n].cast(keys[n].type) for n in names}, "__row": index})
    hits = probe.join(keys, names, join_type="left semi")["__row"]
    return pc.is_in(index, value_set=hits.combine_chunks())


def files_holding_keys(table: Any, metadata: Any, keys: pa.Table, read: list[int]) -> Iterator[tuple[Any, pa.Table]]:
    """(data file, the rows that stay) of each live file holding a row of one of ``keys``, one
    file at a time; ``read[0]`` counts the files read to find them (those the filter let through)."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    if keys.num_rows == 0 or table.current_snapshot() is None:
        return
    keys = keys.group_by(keys.column_names).aggregate([])  # distinct
    for task in table.scan(row_filter=key_filter(keys)).plan_files():
        read[0] += 1
        rows = ArrowScan(metadata, table.io, metadata.schema(), AlwaysTrue()).to_table([task])
        if rows.num_rows == 0:
            continue
        hit = matching(rows, keys)
        if pc.any(hit).as_py():
            yield task.file, rows.filter(pc.invert(hit))

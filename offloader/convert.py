"""Arrow conversion: one batch from ClickHouse into the Arrow layout of the Iceberg table.

:func:`convert_batch` is vectorized and checks every value that could otherwise change
silently (UInt64 above 2^63-1, bigints beyond 38 digits, invalid UTF-8, NULLs in a required
column). A value that does not fit raises :class:`ValueOutOfRangeError` naming the column,
the row and the option that would take it. Library-free (pyarrow only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from offloader.chtypes import AS_STRING, BIGINTS, LONG_MAX, ChType, ColumnPlan, element_names, parse_type, unwrap
from offloader.errors import DataError, SchemaError, ValueOutOfRangeError


@dataclass(frozen=True)
class _Where:
    """Where a value sits: for error messages."""

    column: str
    ch_type: str
    path: str = ""
    top: bool = True

    def nested(self, suffix: str) -> _Where:
        return _Where(self.column, self.ch_type, self.path + suffix, top=False)

    def describe(self) -> str:
        inside = f" at {self.column}{self.path}" if self.path else ""
        return f"column {self.column!r} ({self.ch_type}){inside}"


_HINTS = {
    "UInt64": 'set uint64 = "decimal" in the table\'s config to store UInt64 as decimal(20,0)',
    **{name: 'set bigint = "string" in the table\'s config to store it as a string' for name in BIGINTS},
}
_NO_OPTION = "no option accepts it: fix the data, or offload a view that converts the column"


def _why(core: ChType, target: pa.DataType) -> str:
    """Why a value cannot be stored, in Iceberg terms."""
    if core.name == "UInt64" and pa.types.is_int64(target):
        return f"is above {LONG_MAX}, the maximum of an Iceberg long"
    if core.name in BIGINTS and pa.types.is_decimal(target):
        return f"has more than {target.precision} digits, the most an Iceberg decimal({target.precision},{target.scale}) holds"
    return f"does not fit the Iceberg column's type ({target})"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _first_failure(arr: pa.Array, op: Callable[[pa.Array], Any]) -> int:
    """The index of the first element on which ``op`` fails (bisection; error path only)."""
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            op(arr.slice(lo, mid - lo))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
        else:
            lo = mid
    return lo


def _out_of_range(arr: pa.Array, op: Callable[[pa.Array], Any], where: _Where, core: ChType, what: str) -> ValueOutOfRangeError:
    index = _first_failure(arr, op)
    row = f" at row {index}" if where.top else ""
    hint = _HINTS.get(core.name, _NO_OPTION)
    return ValueOutOfRangeError(f"{where.describe()}: value {_show(arr[index].as_py())}{row} {what}; {hint}")


def _is_stringish(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _is_binaryish(t: pa.DataType) -> bool:
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t))


def _to_string(arr: pa.Array, core: ChType, target: pa.DataType, where: _Where) -> pa.Array:
    """Strings and bytes into an Iceberg string, failing on the first value that is not UTF-8."""
    if _is_stringish(arr.type):
        try:
            arr.validate(full=True)  # ClickHouse String is bytes: its Arrow "string" may hold invalid UTF-8
        except pa.ArrowInvalid:
            arr = arr.view(pa.binary() if pa.types.is_string(arr.type) else pa.large_binary())
        else:
            return arr if arr.type.equals(target) else arr.cast(target)
    if not _is_binaryish(arr.type):
        raise SchemaError(
            f"{where.describe()}: got Arrow {arr.type} where text was expected; select it with its plan's select_sql"
        )
    try:
        return arr.cast(target)
    except pa.ArrowInvalid:
        raise _out_of_range(
            arr, lambda a: a.cast(target), where, core, "is not valid UTF-8, which an Iceberg string requires"
        ) from None


def _convert_leaf(arr: pa.Array, core: ChType, target: pa.DataType, where: _Where) -> pa.Array:
    if core.name in AS_STRING and not (_is_stringish(arr.type) or _is_binaryish(arr.type)):
        # Enum codes or IPv4 numbers cast to text would silently change the values
        raise SchemaError(f"{where.describe()}: got Arrow {arr.type}; select it with its plan's select_sql")
    if _is_stringish(target):
        return _to_string(arr, core, target, where)
    if arr.type.equals(target):
        return arr
    if pa.types.is_timestamp(arr.type) and pa.types.is_timestamp(target) and arr.type.unit == target.unit:
        return arr.view(target)  # only the zone label differs: the stored instants are UTC
    if pa.types.is_integer(arr.type) and pa.types.is_timestamp(target):
        raise SchemaError(f"{where.describe()}: got Arrow {arr.type}; select it with its plan's select_sql")
    try:
        return arr.cast(target)
    except pa.ArrowNotImplementedError as exc:
        raise SchemaError(f"{where.describe()}: cannot convert Arrow {arr.type} to {target}: {exc}") from exc
    except pa.ArrowInvalid:
        raise _out_of_range(arr, lambda a: a.cast(target), where, core, _why(core, target)) from None


def _offsets(arr: pa.Array) -> tuple[pa.Array, int, int]:
    """Offsets rebased to 0 and the [start, end) range of the child values they cover."""
    offsets = arr.offsets
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    if start:
        offsets = pc.subtract(offsets, pa.scalar(start, offsets.type))
    return offsets, start, end


def _convert_list(arr: pa.Array, core: ChType, target: pa.DataType, where: _Where) -> pa.Array:
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)) or not (
        pa.types.is_list(target) or pa.types.is_large_list(target)
    ):
        raise SchemaError(f"{where.describe()}: cannot write Arrow {arr.type} as {target}")
    offsets, start, end = _offsets(arr)
    values = _convert(arr.values.slice(start, end - start), core.args[0], target.value_field, where.nested("[]"))
    mask = arr.is_null() if arr.null_count else None
    if pa.types.is_large_list(target):
        return pa.LargeListArray.from_arrays(offsets.cast(pa.int64()), values, type=target, mask=mask)
    return pa.ListArray.from_arrays(offsets.cast(pa.int32()), values, type=target, mask=mask)


def _convert_map(arr: pa.Array, core: ChType, target: pa.DataType, where: _Where) -> pa.Array:
    if not pa.types.is_map(arr.type) or not pa.types.is_map(target):
        raise SchemaError(f"{where.describe()}: cannot write Arrow {arr.type} as {target}")
    offsets, start, end = _offsets(arr)
    entries = arr.values
    keys = _convert(entries.field(0).slice(start, end - start), core.args[0], target.key_field, where.nested(".key"))
    items = _convert(entries.field(1).slice(start, end - start), core.args[1], target.item_field, where.nested(".value"))
    mask = arr.is_null() if arr.null_count else None
    return pa.MapArray.from_arrays(offsets, keys, items, type=target, mask=mask)


def _convert_struct(arr: pa.Array, core: ChType, target: pa.DataType, where: _Where) -> pa.Array:
    names = element_names(core)
    if not pa.types.is_struct(arr.type) or not pa.types.is_struct(target) or arr.type.num_fields != len(names):
        raise SchemaError(f"{where.describe()}: cannot write Arrow {arr.type} as {target}")
    position = {name: i for i, name in enumerate(names)}
    wanted = [target.field(i) for i in range(target.num_fields)]
    dropped = set(names) - {f.name for f in wanted}
    if dropped:
        raise SchemaError(f"{where.describe()}: the Iceberg struct has no field(s) {sorted(dropped)}; they would be lost")
    children = []
    for target_field in wanted:
        i = position.get(target_field.name)
        if i is None:
            if not target_field.nullable:
                raise SchemaError(f"{where.describe()}: required struct field {target_field.name!r} is missing from the source")
            children.append(pa.nulls(len(arr), target_field.type))
        else:
            children.append(_convert(arr.field(i), core.args[i], target_field, where.nested(f".{target_field.name}")))
    mask = arr.is_null() if arr.null_count else None
    return pa.StructArray.from_arrays(children, fields=wanted, mask=mask)


def _convert(arr: pa.Array, node: ChType, target_field: pa.Field, where: _Where) -> pa.Array:
    """Convert one array of ClickHouse type ``node`` into ``target_field``'s type, checking every value."""
    core, _ = unwrap(node)
    if pa.types.is_dictionary(arr.type):  # LowCardinality as a dictionary
        arr = arr.dictionary_decode()
    target = target_field.type
    if core.name == "Array":
        out = _convert_list(arr, core, target, where)
    elif core.name == "Map":
        out = _convert_map(arr, core, target, where)
    elif core.name == "Tuple":
        out = _convert_struct(arr, core, target, where)
    else:
        out = _convert_leaf(arr, core, target, where)
    if not target_field.nullable and out.null_count:
        raise DataError(f"{where.describe()}: holds NULL but the Iceberg field is required")
    return out


def convert_batch(batch: pa.RecordBatch, plans: list[ColumnPlan], target: pa.Schema) -> pa.RecordBatch:
    """Turn a batch of ``SELECT <plan.select_sql, ...>`` from ClickHouse into a batch of exactly ``target``.

    Columns are matched by name, in the target's order; target columns absent from the batch
    are filled with NULLs when optional. Raises ValueOutOfRangeError (value does not fit),
    DataError (NULL in a required column) or SchemaError (batch and target do not match).
    """
    by_name = {p.name: p for p in plans}
    extra = [name for name in batch.schema.names if target.get_field_index(name) < 0]
    if extra:
        raise SchemaError(f"the Iceberg table has no column(s) {extra}; their values would be lost")
    arrays = []
    for target_field in target:
        index = batch.schema.get_field_index(target_field.name)
        if index < 0:
            if not target_field.nullable:
                raise SchemaError(f"column {target_field.name!r} is required in the Iceberg table but missing from the batch")
            arrays.append(pa.nulls(batch.num_rows, target_field.type))
            continue
        plan = by_name.get(target_field.name)
        if plan is None:
            raise SchemaError(f"column {target_field.name!r} is in the batch but has no plan")
        where = _Where(plan.name, plan.ch_type)
        arrays.append(_convert(batch.column(index), parse_type(plan.ch_type), target_field, where))
    return pa.RecordBatch.from_arrays(arrays, schema=target)

"""The ClickHouse → Iceberg type mapping.

:func:`plan_columns` decides, for each column, its Iceberg type and how it is fetched
(``chtypes``). Every column with no faithful mapping is reported at once in one
:class:`UnsupportedTypeError`. :func:`iceberg_schema` is the table's schema from the plans.
The mapping table, the options and what fails are documented in ``docs/types.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

from pyiceberg.schema import Schema, assign_fresh_schema_ids
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
    TimestamptzType,
    UUIDType,
)

from offloader.chtypes import (
    BIGINTS,
    DECIMAL_N,
    ENUMS,
    MAX_DECIMAL_PRECISION,
    MAX_MICROS_PRECISION,
    WRAPPERS,
    ChType,
    ColumnPlan,
    TypeOptions,
    Unsupported,
    datetime64_precision,
    element_names,
    fetch_expr,
    ints,
    parse_type,
    quote_identifier,
    render_type,
    unwrap,
)
from offloader.errors import UnsupportedTypeError

_INT = {"Int8": IntegerType, "Int16": IntegerType, "Int32": IntegerType, "UInt8": IntegerType, "UInt16": IntegerType}
_LONG = {"Int64", "UInt32"}


def _decimal(node: ChType) -> DecimalType:
    if node.name == "Decimal":
        precision, scale = ints(node, 2) if len(node.params) == 2 else (*ints(node, 1), 0)
    else:
        precision, scale = DECIMAL_N[node.name], ints(node, 1)[0]
    if precision > MAX_DECIMAL_PRECISION:
        raise Unsupported(
            f"{render_type(node)} has {precision} digits but Iceberg decimals hold at most 38; "
            "no option stores it faithfully (cast it in a view, e.g. to String, to offload it)"
        )
    return DecimalType(precision, scale)


def _leaf_type(node: ChType, options: TypeOptions) -> IcebergType:
    name = node.name
    if name in _INT:
        return _INT[name]()
    if name in _LONG:
        return LongType()
    if name == "UInt64":
        return DecimalType(20, 0) if options.uint64 == "decimal" else LongType()
    if name in BIGINTS:
        return StringType() if options.bigint == "string" else DecimalType(38, 0)
    if name == "Float32":
        return FloatType()
    if name == "Float64":
        return DoubleType()
    if name == "Decimal" or name in DECIMAL_N:
        return _decimal(node)
    if name == "Bool":
        return BooleanType()
    if name in ("String", "IPv4", "IPv6") or name in ENUMS:
        return StringType()
    if name == "FixedString":
        return FixedType(ints(node, 1)[0])
    if name == "UUID":
        return UUIDType()
    if name in ("Date", "Date32"):
        return DateType()
    if name == "DateTime" and len(node.params) <= 1:
        return TimestamptzType()
    if name == "DateTime64":
        precision = datetime64_precision(node)
        if precision > MAX_MICROS_PRECISION and not options.truncate_datetime64:
            raise Unsupported(
                f"{render_type(node)} holds sub-microsecond time but Iceberg timestamptz holds microseconds; "
                "set truncate_datetime64 = true in the table's config to store it truncated to microseconds"
            )
        return TimestamptzType()
    raise Unsupported(f"{render_type(node)} has no faithful Iceberg type")


def _iceberg_type(node: ChType, options: TypeOptions, ids: Iterator[int]) -> tuple[IcebergType, bool]:
    """The Iceberg type of ``node`` and whether it is required (placeholder nested field ids)."""
    core, nullable = unwrap(node)
    if core.name in WRAPPERS:
        raise Unsupported(f"{render_type(core)} is malformed")
    if core.name == "Array":
        if len(core.args) != 1:
            raise Unsupported(f"{render_type(core)} is malformed")
        element, element_required = _iceberg_type(core.args[0], options, ids)
        return ListType(next(ids), element, element_required=element_required), not nullable
    if core.name == "Map":
        if len(core.args) != 2:
            raise Unsupported(f"{render_type(core)} is malformed")
        key, key_required = _iceberg_type(core.args[0], options, ids)
        key_core, _ = unwrap(core.args[0])
        if not key_required:
            raise Unsupported(f"{render_type(core)} has a Nullable key; Iceberg map keys are required")
        if key_core.name == "DateTime64" and datetime64_precision(key_core) > MAX_MICROS_PRECISION:
            raise Unsupported(f"{render_type(core)}: truncating map keys could merge two keys into one")
        value, value_required = _iceberg_type(core.args[1], options, ids)
        return MapType(next(ids), key, next(ids), value, value_required=value_required), not nullable
    if core.name == "Tuple":
        if not core.args:
            raise Unsupported(f"{render_type(core)} has no elements; Iceberg structs need at least one field")
        names = element_names(core)
        if len(set(names)) != len(names):
            raise Unsupported(f"{render_type(core)} repeats an element name")
        fields = []
        for name, arg in zip(names, core.args, strict=True):
            field_type, required = _iceberg_type(arg, options, ids)
            fields.append(NestedField(next(ids), name, field_type, required=required))
        return StructType(*fields), not nullable
    return _leaf_type(core, options), not nullable


def plan_column(name: str, ch_type: str, options: TypeOptions) -> ColumnPlan:
    """The plan of one column; raises UnsupportedTypeError naming the column and its type."""
    try:
        node = parse_type(ch_type)
        iceberg_type, required = _iceberg_type(node, options, count(1))
        expr = fetch_expr(node, quote_identifier(name))
    except (Unsupported, UnsupportedTypeError) as exc:
        raise UnsupportedTypeError(f"column {name!r} ({ch_type}): {exc}") from None
    select_sql = f"{expr or quote_identifier(name)} AS {quote_identifier(name)}"
    return ColumnPlan(name=name, ch_type=ch_type, select_sql=select_sql, iceberg_type=iceberg_type, required=required)


def plan_columns(columns: list[tuple[str, str]], options: TypeOptions) -> list[ColumnPlan]:
    """Plan every ``(name, ClickHouse type)`` column, reporting ALL unsupported columns in one error."""
    plans, problems = [], []
    for name, ch_type in columns:
        try:
            plans.append(plan_column(name, ch_type, options))
        except UnsupportedTypeError as exc:
            problems.append(str(exc))
    if problems:
        raise UnsupportedTypeError(
            f"{len(problems)} column(s) have no faithful Iceberg type:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return plans


def iceberg_schema(plans: list[ColumnPlan]) -> Schema:
    """The Iceberg schema of the planned columns: top-level ids 1..n, nested ids unique after them."""
    fields = [NestedField(i, p.name, p.iceberg_type, required=p.required) for i, p in enumerate(plans, start=1)]
    return assign_fresh_schema_ids(Schema(*fields))

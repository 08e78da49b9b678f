"""The ClickHouse → Iceberg type mapping, and nothing else.

This module owns three pure steps, with no connection and no file of its own:

1. :func:`parse_type` reads a ClickHouse type string as ``DESCRIBE TABLE`` prints it
   (nested types, quoted Enum labels, time zones, named tuple elements) into a :class:`ChType`.
2. :func:`plan_columns` decides, for each column, its Iceberg type and the SELECT
   expression that makes ClickHouse return Arrow this module accepts (``toString``-like
   CASTs for Enum/IP/bigints, microsecond floors for DateTime64(7..9)). Every column with
   no faithful mapping is reported at once in one :class:`UnsupportedTypeError`.
3. :func:`convert_batch` turns one Arrow batch from ClickHouse into the Arrow layout of the
   destination Iceberg table, vectorized, checking every value that could otherwise change
   silently (UInt64 above 2^63-1, bigints beyond 38 digits, invalid UTF-8, NULLs in a
   required column). A value that does not fit raises :class:`ValueOutOfRangeError`.

The mapping table, the options and what fails are documented in ``docs/types.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import count
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
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

from offloader.errors import ConfigError, DataError, SchemaError, UnsupportedTypeError, ValueOutOfRangeError

__all__ = [
    "ChType",
    "ColumnPlan",
    "TypeOptions",
    "convert_batch",
    "iceberg_schema",
    "parse_type",
    "plan_columns",
    "quote_identifier",
]

LONG_MAX = 2**63 - 1
MAX_DECIMAL_PRECISION = 38  # Iceberg decimals hold at most 38 digits
MAX_MICROS_PRECISION = 6  # Iceberg timestamptz holds microseconds

_INT = {"Int8": IntegerType, "Int16": IntegerType, "Int32": IntegerType, "UInt8": IntegerType, "UInt16": IntegerType}
_LONG = {"Int64", "UInt32"}
_BIGINTS = {"Int128", "UInt128", "Int256", "UInt256"}
_DECIMAL_N = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}
_ENUMS = {"Enum8", "Enum16", "Enum"}
_AS_STRING = {"IPv4", "IPv6"} | _ENUMS | _BIGINTS  # fetched through CAST(... AS String)
_WRAPPERS = {"Nullable", "LowCardinality"}
_CONTAINERS = {"Array", "Map", "Tuple"}
_TYPE_ARGS = _WRAPPERS | _CONTAINERS  # types whose parameters are types
_LITERAL_ARGS = {"Decimal", "FixedString", "DateTime", "DateTime64"} | set(_DECIMAL_N)


@dataclass(frozen=True)
class TypeOptions:
    """Per-table choices for the types that have more than one faithful Iceberg mapping."""

    uint64: Literal["long", "decimal"] = "long"
    bigint: Literal["decimal", "string"] = "decimal"
    truncate_datetime64: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.uint64 not in ("long", "decimal"):
            problems.append(f'uint64 = {self.uint64!r}: expected "long" or "decimal"')
        if self.bigint not in ("decimal", "string"):
            problems.append(f'bigint = {self.bigint!r}: expected "decimal" or "string"')
        if not isinstance(self.truncate_datetime64, bool):
            problems.append(f"truncate_datetime64 = {self.truncate_datetime64!r}: expected true or false")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class ColumnPlan:
    """How one ClickHouse column is fetched and what Iceberg type it becomes."""

    name: str
    ch_type: str
    select_sql: str
    iceberg_type: IcebergType
    required: bool


@dataclass(frozen=True)
class ChType:
    """One node of a parsed ClickHouse type.

    ``args`` holds nested types (Nullable, LowCardinality, Array, Map, Tuple), ``params``
    literal parameters (precision, scale, length, time zone), ``names`` the element names of
    a named Tuple, ``enum`` the (label, code) pairs of an Enum, and ``raw`` the unparsed
    parameter text of types this module does not map (JSON, AggregateFunction, ...).
    """

    name: str
    args: tuple[ChType, ...] = ()
    params: tuple[int | str, ...] = ()
    names: tuple[str, ...] = ()
    enum: tuple[tuple[str, int], ...] = ()
    raw: str | None = None

    def __str__(self) -> str:
        return render_type(self)


# ---------------------------------------------------------------------------------------
# Parsing ClickHouse type strings

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.|'')*')
    | (?P<bq>`(?:[^`\\]|\\.|``)*`)
    | (?P<dq>"(?:[^"\\]|\\.|"")*")
    | (?P<num>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<punct>[(),=])
    | (?P<other>\S)
    )""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "a": "\a", "v": "\v", "e": "\x1b"}


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int


def _unquote(text: str) -> str:
    """The value of a quoted ClickHouse literal or identifier (backslash escapes, doubled quotes)."""
    quote, body, out, i = text[0], text[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", body[i + 2 : i + 4]):
                out.append(chr(int(body[i + 2 : i + 4], 16)))
                i += 4
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
        elif ch == quote and body[i + 1 : i + 2] == quote:
            out.append(quote)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:  # only trailing whitespace is left
            break
        kind = match.lastgroup or "other"
        tokens.append(_Token(kind, match.group(kind), match.start(kind), match.end()))
        pos = match.end()
    return tokens


class _Parser:
    """A recursive-descent parser over the tokens of one type string."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def fail(self, what: str) -> UnsupportedTypeError:
        where = self.tokens[self.i].start if self.i < len(self.tokens) else len(self.text)
        return UnsupportedTypeError(f"cannot parse ClickHouse type {self.text!r}: {what} at offset {where}")

    def peek(self, ahead: int = 0) -> _Token | None:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self, text: str | None = None) -> _Token:
        tok = self.peek()
        if tok is None or (text is not None and tok.text != text):
            raise self.fail(f"expected {text!r}" if text else "unexpected end")
        self.i += 1
        return tok

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "punct" and tok.text == text

    def parse(self) -> ChType:
        node = self.type()
        if self.peek() is not None:
            raise self.fail("unexpected text after the type")
        return node

    def type(self) -> ChType:
        tok = self.take()
        if tok.kind != "ident":
            raise self.fail("expected a type name")
        name = tok.text
        if not self.at("("):
            return ChType(name)
        open_tok = self.take("(")
        if name in _TYPE_ARGS:
            return self.type_args(name)
        if name in _ENUMS:
            return ChType(name, enum=self.enum_items())
        if name in _LITERAL_ARGS:
            return ChType(name, params=self.literals())
        return ChType(name, raw=self.raw(open_tok))

    def element_name(self) -> str | None:
        tok, nxt = self.peek(), self.peek(1)
        if tok is not None and tok.kind in ("bq", "dq"):
            self.i += 1
            return _unquote(tok.text)
        if tok is not None and tok.kind == "ident" and nxt is not None and nxt.kind == "ident":
            self.i += 1
            return tok.text
        return None

    def type_args(self, name: str) -> ChType:
        args: list[ChType] = []
        names: list[str | None] = []
        while not self.at(")"):
            names.append(self.element_name() if name == "Tuple" else None)
            args.append(self.type())
            if not self.at(")"):
                self.take(",")
        self.take(")")
        named = [n for n in names if n is not None]
        if named and len(named) != len(names):
            raise self.fail("a Tuple mixes named and unnamed elements")
        return ChType(name, args=tuple(args), names=tuple(named))

    def literal(self) -> int | str:
        tok = self.take()
        if tok.kind == "num" and re.fullmatch(r"[-+]?\d+", tok.text):
            return int(tok.text)
        if tok.kind == "str":
            return _unquote(tok.text)
        raise self.fail("expected a number or a quoted string")

    def literals(self) -> tuple[int | str, ...]:
        values: list[int | str] = []
        while not self.at(")"):
            values.append(self.literal())
            if not self.at(")"):
                self.take(",")
        self.take(")")
        return tuple(values)

    def enum_items(self) -> tuple[tuple[str, int], ...]:
        items: list[tuple[str, int]] = []
        while not self.at(")"):
            label = self.literal()
            if not isinstance(label, str):
                raise self.fail("expected a quoted Enum label")
            code = len(items) + 1
            if self.at("="):
                self.take("=")
                value = self.literal()
                if not isinstance(value, int):
                    raise self.fail("expected an Enum code")
                code = value
            items.append((label, code))
            if not self.at(")"):
                self.take(",")
        self.take(")")
        return tuple(items)

    def raw(self, open_tok: _Token) -> str:
        depth = 1
        while depth:
            tok = self.take()
            if tok.kind == "punct" and tok.text in "()":
                depth += 1 if tok.text == "(" else -1
        close = self.tokens[self.i - 1]
        return self.text[open_tok.end : close.start].strip()


@lru_cache(maxsize=1024)
def parse_type(ch_type: str) -> ChType:
    """Parse a ClickHouse type string (as DESCRIBE TABLE prints it) into a :class:`ChType` tree.

    Raises :class:`UnsupportedTypeError` if the text is not a well-formed type.
    """
    return _Parser(ch_type).parse()


def quote_identifier(name: str) -> str:
    """Quote a ClickHouse identifier with backticks, escaping backslashes and backticks."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _literal_sql(value: int | str) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render_type(node: ChType) -> str:
    """The ClickHouse text of a type tree (names and labels quoted as ClickHouse reads them)."""
    if node.raw is not None:
        return f"{node.name}({node.raw})"
    if node.enum:
        return f"{node.name}({', '.join(f'{_literal_sql(label)} = {code}' for label, code in node.enum)})"
    if node.params:
        return f"{node.name}({', '.join(_literal_sql(p) for p in node.params)})"
    if node.names:
        parts = [f"{quote_identifier(n)} {render_type(a)}" for n, a in zip(node.names, node.args, strict=True)]
        return f"{node.name}({', '.join(parts)})"
    if node.args or node.name in _TYPE_ARGS:
        return f"{node.name}({', '.join(render_type(a) for a in node.args)})"
    return node.name


def _unwrap(node: ChType) -> tuple[ChType, bool]:
    """Strip Nullable and LowCardinality: the core type, and whether it is Nullable."""
    nullable = False
    while node.name in _WRAPPERS and len(node.args) == 1:
        nullable = nullable or node.name == "Nullable"
        node = node.args[0]
    return node, nullable


def element_names(node: ChType) -> tuple[str, ...]:
    """The Iceberg field names of a Tuple: its own names, or ``_1``, ``_2``, ... when unnamed."""
    return node.names or tuple(f"_{i}" for i in range(1, len(node.args) + 1))


# ---------------------------------------------------------------------------------------
# Planning: ClickHouse type → Iceberg type and SELECT expression


class _Unsupported(Exception):
    """Internal: one type inside a column has no faithful mapping (collected by plan_columns)."""


def _ints(node: ChType, n: int) -> tuple[int, ...]:
    if len(node.params) != n or not all(isinstance(p, int) for p in node.params[:n]):
        raise _Unsupported(f"{render_type(node)} has unexpected parameters")
    return tuple(int(p) for p in node.params)


def _datetime64_precision(node: ChType) -> int:
    if not node.params or not isinstance(node.params[0], int):
        raise _Unsupported(f"{render_type(node)} has no precision")
    return node.params[0]


def _decimal(node: ChType) -> DecimalType:
    if node.name == "Decimal":
        precision, scale = _ints(node, 2) if len(node.params) == 2 else (*_ints(node, 1), 0)
    else:
        precision, scale = _DECIMAL_N[node.name], _ints(node, 1)[0]
    if precision > MAX_DECIMAL_PRECISION:
        raise _Unsupported(
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
    if name in _BIGINTS:
        return StringType() if options.bigint == "string" else DecimalType(38, 0)
    if name == "Float32":
        return FloatType()
    if name == "Float64":
        return DoubleType()
    if name == "Decimal" or name in _DECIMAL_N:
        return _decimal(node)
    if name == "Bool":
        return BooleanType()
    if name in ("String", "IPv4", "IPv6") or name in _ENUMS:
        return StringType()
    if name == "FixedString":
        return FixedType(_ints(node, 1)[0])
    if name == "UUID":
        return UUIDType()
    if name in ("Date", "Date32"):
        return DateType()
    if name == "DateTime" and len(node.params) <= 1:
        return TimestamptzType()
    if name == "DateTime64":
        precision = _datetime64_precision(node)
        if precision > MAX_MICROS_PRECISION and not options.truncate_datetime64:
            raise _Unsupported(
                f"{render_type(node)} holds sub-microsecond time but Iceberg timestamptz holds microseconds; "
                "set truncate_datetime64 = true in the table's config to store it truncated to microseconds"
            )
        return TimestamptzType()
    raise _Unsupported(f"{render_type(node)} has no faithful Iceberg type")


def _iceberg_type(node: ChType, options: TypeOptions, ids: Iterator[int]) -> tuple[IcebergType, bool]:
    """The Iceberg type of ``node`` and whether it is required (placeholder nested field ids)."""
    core, nullable = _unwrap(node)
    if core.name in _WRAPPERS:
        raise _Unsupported(f"{render_type(core)} is malformed")
    if core.name == "Array":
        if len(core.args) != 1:
            raise _Unsupported(f"{render_type(core)} is malformed")
        element, element_required = _iceberg_type(core.args[0], options, ids)
        return ListType(next(ids), element, element_required=element_required), not nullable
    if core.name == "Map":
        if len(core.args) != 2:
            raise _Unsupported(f"{render_type(core)} is malformed")
        key, key_required = _iceberg_type(core.args[0], options, ids)
        key_core, _ = _unwrap(core.args[0])
        if not key_required:
            raise _Unsupported(f"{render_type(core)} has a Nullable key; Iceberg map keys are required")
        if key_core.name == "DateTime64" and _datetime64_precision(key_core) > MAX_MICROS_PRECISION:
            raise _Unsupported(f"{render_type(core)}: truncating map keys could merge two keys into one")
        value, value_required = _iceberg_type(core.args[1], options, ids)
        return MapType(next(ids), key, next(ids), value, value_required=value_required), not nullable
    if core.name == "Tuple":
        if not core.args:
            raise _Unsupported(f"{render_type(core)} has no elements; Iceberg structs need at least one field")
        names = element_names(core)
        if len(set(names)) != len(names):
            raise _Unsupported(f"{render_type(core)} repeats an element name")
        fields = []
        for name, arg in zip(names, core.args, strict=True):
            field_type, required = _iceberg_type(arg, options, ids)
            fields.append(NestedField(next(ids), name, field_type, required=required))
        return StructType(*fields), not nullable
    return _leaf_type(core, options), not nullable


def _fetch_type(node: ChType) -> ChType:
    """The type ClickHouse should return for ``node``: what convert_batch accepts as Arrow."""
    name = node.name
    if name == "Nullable":
        return ChType(name, args=(_fetch_type(node.args[0]),))
    if name == "LowCardinality":
        inner = _fetch_type(node.args[0])
        return node if inner == node.args[0] else inner
    if name in _CONTAINERS:
        return ChType(name, args=tuple(_fetch_type(a) for a in node.args), names=node.names)
    if name in _AS_STRING:
        return ChType("String")
    if name == "DateTime":  # seconds as UInt32 in Arrow: fetch the same instant as microseconds in UTC
        return ChType("DateTime64", params=(MAX_MICROS_PRECISION, "UTC"))
    if name == "DateTime64" and _datetime64_precision(node) > MAX_MICROS_PRECISION:
        return ChType(name, params=(MAX_MICROS_PRECISION, *node.params[1:]))
    return node


def _needs_floor(node: ChType) -> bool:
    if node.name == "DateTime64":
        return _datetime64_precision(node) > MAX_MICROS_PRECISION
    return any(_needs_floor(a) for a in node.args)


def _fetch_expr(node: ChType, expr: str, depth: int = 1) -> str | None:
    """A SELECT expression giving ``expr`` (of type ``node``) as its fetch type, None if none is needed.

    Conversions are CASTs (exact: Enum labels, IP and UUID text, bigint digits, DateTime
    instants) except DateTime64(7..9), which is floored to the microsecond with
    ``toStartOfInterval`` (a CAST would truncate towards 1970, moving times before it later).
    """
    fetch = _fetch_type(node)
    if fetch == node:
        return None
    if not _needs_floor(node):
        return f"CAST({expr} AS {render_type(fetch)})"
    core, nullable = _unwrap(node)
    if core.name == "DateTime64":
        return f"toStartOfInterval({expr}, INTERVAL 1 microsecond)"
    if core.name == "Array":
        var = f"_e{depth}"
        body = _fetch_expr(core.args[0], var, depth + 1) or var
        return f"arrayMap({var} -> {body}, {expr})"
    if core.name == "Map":
        key, var = f"_k{depth}", f"_v{depth}"
        body_key = _fetch_expr(core.args[0], key, depth + 1) or key
        body_value = _fetch_expr(core.args[1], var, depth + 1) or var
        return f"mapApply(({key}, {var}) -> ({body_key}, {body_value}), {expr})"
    # Tuple: rebuild it element by element, then restore names and Nullable with one CAST
    parts = []
    for i, arg in enumerate(core.args, start=1):
        element = f"tupleElement({expr}, {i})"
        parts.append(_fetch_expr(arg, element, depth + 1) or element)
    target = _fetch_type(core)
    if nullable:
        target = ChType("Nullable", args=(target,))
    rebuilt = f"CAST(tuple({', '.join(parts)}) AS {render_type(target)})"
    return f"if(isNull({expr}), NULL, {rebuilt})" if nullable else rebuilt


def plan_column(name: str, ch_type: str, options: TypeOptions) -> ColumnPlan:
    """The plan of one column; raises UnsupportedTypeError naming the column and its type."""
    try:
        node = parse_type(ch_type)
        iceberg_type, required = _iceberg_type(node, options, count(1))
        expr = _fetch_expr(node, quote_identifier(name))
    except (_Unsupported, UnsupportedTypeError) as exc:
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


# ---------------------------------------------------------------------------------------
# Converting ClickHouse's Arrow into the destination table's Arrow


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
    **{name: 'set bigint = "string" in the table\'s config to store it as a string' for name in _BIGINTS},
}
_NO_OPTION = "no option accepts it: fix the data, or offload a view that converts the column"


def _why(core: ChType, target: pa.DataType) -> str:
    """Why a value cannot be stored, in Iceberg terms."""
    if core.name == "UInt64" and pa.types.is_int64(target):
        return f"is above {LONG_MAX}, the maximum of an Iceberg long"
    if core.name in _BIGINTS and pa.types.is_decimal(target):
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
    if core.name in _AS_STRING and not (_is_stringish(arr.type) or _is_binaryish(arr.type)):
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
    core, _ = _unwrap(node)
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

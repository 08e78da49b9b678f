"""ClickHouse types: parsing them, rendering them, and how each column is fetched.

:func:`parse_type` reads a ClickHouse type string as ``DESCRIBE TABLE`` prints it (nested
types, quoted Enum labels, time zones, named tuple elements) into a :class:`ChType`;
:func:`render_type` writes one back. :func:`fetch_expr` is the SELECT expression that makes
ClickHouse return Arrow the conversion accepts (``toString``-like CASTs for Enum/IP/bigints,
microsecond floors for DateTime64(7..9)). :class:`TypeOptions` are a table's choices among
faithful mappings; :class:`ColumnPlan` is one column's plan (``iceberg.mapping`` makes it).
Library-free; the mapping is documented in ``docs/types.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from offloader.errors import ConfigError, UnsupportedTypeError

LONG_MAX = 2**63 - 1
MAX_DECIMAL_PRECISION = 38  # Iceberg decimals hold at most 38 digits
MAX_MICROS_PRECISION = 6  # Iceberg timestamptz holds microseconds

BIGINTS = {"Int128", "UInt128", "Int256", "UInt256"}
DECIMAL_N = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}
ENUMS = {"Enum8", "Enum16", "Enum"}
AS_STRING = {"IPv4", "IPv6"} | ENUMS | BIGINTS  # fetched through CAST(... AS String)
WRAPPERS = {"Nullable", "LowCardinality"}
CONTAINERS = {"Array", "Map", "Tuple"}
_TYPE_ARGS = WRAPPERS | CONTAINERS  # types whose parameters are types
_LITERAL_ARGS = {"Decimal", "FixedString", "DateTime", "DateTime64"} | set(DECIMAL_N)


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
    iceberg_type: Any  # the Iceberg type, opaque outside the Iceberg adapter
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
        if name in ENUMS:
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


def unwrap(node: ChType) -> tuple[ChType, bool]:
    """Strip Nullable and LowCardinality: the core type, and whether it is Nullable."""
    nullable = False
    while node.name in WRAPPERS and len(node.args) == 1:
        nullable = nullable or node.name == "Nullable"
        node = node.args[0]
    return node, nullable


def element_names(node: ChType) -> tuple[str, ...]:
    """The Iceberg field names of a Tuple: its own names, or ``_1``, ``_2``, ... when unnamed."""
    return node.names or tuple(f"_{i}" for i in range(1, len(node.args) + 1))


class Unsupported(Exception):
    """Internal: one type inside a column has no faithful mapping (collected by plan_columns)."""


def ints(node: ChType, n: int) -> tuple[int, ...]:
    if len(node.params) != n or not all(isinstance(p, int) for p in node.params[:n]):
        raise Unsupported(f"{render_type(node)} has unexpected parameters")
    return tuple(int(p) for p in node.params)


def datetime64_precision(node: ChType) -> int:
    if not node.params or not isinstance(node.params[0], int):
        raise Unsupported(f"{render_type(node)} has no precision")
    return node.params[0]


def fetch_type(node: ChType) -> ChType:
    """The type ClickHouse should return for ``node``: what convert_batch accepts as Arrow."""
    name = node.name
    if name == "Nullable":
        return ChType(name, args=(fetch_type(node.args[0]),))
    if name == "LowCardinality":
        inner = fetch_type(node.args[0])
        return node if inner == node.args[0] else inner
    if name in CONTAINERS:
        return ChType(name, args=tuple(fetch_type(a) for a in node.args), names=node.names)
    if name in AS_STRING:
        return ChType("String")
    if name == "DateTime":  # seconds as UInt32 in Arrow: fetch the same instant as microseconds in UTC
        return ChType("DateTime64", params=(MAX_MICROS_PRECISION, "UTC"))
    if name == "DateTime64" and datetime64_precision(node) > MAX_MICROS_PRECISION:
        return ChType(name, params=(MAX_MICROS_PRECISION, *node.params[1:]))
    return node


def needs_floor(node: ChType) -> bool:
    if node.name == "DateTime64":
        return datetime64_precision(node) > MAX_MICROS_PRECISION
    return any(needs_floor(a) for a in node.args)


def fetch_expr(node: ChType, expr: str, depth: int = 1) -> str | None:
    """A SELECT expression giving ``expr`` (of type ``node``) as its fetch type, None if none is needed.

    Conversions are CASTs (exact: Enum labels, IP and UUID text, bigint digits, DateTime
    instants) except DateTime64(7..9), which is floored to the microsecond with
    ``toStartOfInterval`` (a CAST would truncate towards 1970, moving times before it later).
    """
    fetch = fetch_type(node)
    if fetch == node:
        return None
    if not needs_floor(node):
        return f"CAST({expr} AS {render_type(fetch)})"
    core, nullable = unwrap(node)
    if core.name == "DateTime64":
        return f"toStartOfInterval({expr}, INTERVAL 1 microsecond)"
    if core.name == "Array":
        var = f"_e{depth}"
        body = fetch_expr(core.args[0], var, depth + 1) or var
        return f"arrayMap({var} -> {body}, {expr})"
    if core.name == "Map":
        key, var = f"_k{depth}", f"_v{depth}"
        body_key = fetch_expr(core.args[0], key, depth + 1) or key
        body_value = fetch_expr(core.args[1], var, depth + 1) or var
        return f"mapApply(({key}, {var}) -> ({body_key}, {body_value}), {expr})"
    # Tuple: rebuild it element by element, then restore names and Nullable with one CAST
    parts = []
    for i, arg in enumerate(core.args, start=1):
        element = f"tupleElement({expr}, {i})"
        parts.append(fetch_expr(arg, element, depth + 1) or element)
    target = fetch_type(core)
    if nullable:
        target = ChType("Nullable", args=(target,))
    rebuilt = f"CAST(tuple({', '.join(parts)}) AS {render_type(target)})"
    return f"if(isNull({expr}), NULL, {rebuilt})" if nullable else rebuilt

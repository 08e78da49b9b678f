"""The edge values of every mapped ClickHouse type, and how to compare what a reader gives back.

Shared by the type mapping's round trips (tests/test_types.py) and the whole offload cycle's
(tests/test_offload.py): each edge is a column, its ClickHouse type, the SQL literals of three
rows and the value every reader must give back for each.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

UTC = dt.UTC


def norm(value: Any) -> Any:
    """Values made comparable: NaN equals NaN, map entries as lists, aware datetimes in UTC."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC)
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    return value


def create(conn: Any, table: str, columns: list[tuple[str, str, list[str], list[Any]]]) -> None:
    """A MergeTree table with an ``id`` column and one row per literal of each column."""
    ddl = ", ".join(f"`{name}` {ch_type}" for name, ch_type, _, _ in columns)
    conn.query(f"DROP TABLE IF EXISTS {table}")
    conn.query(f"CREATE TABLE {table} (id UInt32, {ddl}) ENGINE = MergeTree ORDER BY id")
    n_rows = len(columns[0][2])
    rows = [f"({i}, {', '.join(lits[i] for _, _, lits, _ in columns)})" for i in range(n_rows)]
    conn.query(f"INSERT INTO {table} VALUES {', '.join(rows)}")


def expected_rows(columns: list[tuple[str, str, list[str], list[Any]]]) -> list[dict[str, Any]]:
    n_rows = len(columns[0][2])
    return [norm({"id": i, **{name: values[i] for name, _, _, values in columns}}) for i in range(n_rows)]


def as_icebergLocal_reads(rows: list[dict[str, Any]], null_structs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as ClickHouse's icebergLocal (26.9) gives them: a NULL struct comes back as its default values.

    A known limit of that reader (ClickHouse has no Nullable(Tuple) there), not of the data:
    PyIceberg reads the same files back as NULL.
    """
    return [{k: norm(null_structs[k]) if k in null_structs and v is None else v for k, v in row.items()} for row in rows]


NY, TOKYO = ZoneInfo("America/New_York"), ZoneInfo("Asia/Tokyo")
D38 = "9" * 38

# name, ClickHouse type, SQL literal of rows 0..2, value each reader must give back
EDGES: list[tuple[str, str, list[str], list[Any]]] = [
    ("i8", "Int8", ["-128", "127", "0"], [-128, 127, 0]),
    ("i16", "Int16", ["-32768", "32767", "0"], [-32768, 32767, 0]),
    ("i32", "Int32", ["-2147483648", "2147483647", "0"], [-(2**31), 2**31 - 1, 0]),
    ("i64", "Int64", ["-9223372036854775808", "9223372036854775807", "0"], [-(2**63), 2**63 - 1, 0]),
    ("u8", "UInt8", ["0", "255", "1"], [0, 255, 1]),
    ("u16", "UInt16", ["0", "65535", "1"], [0, 65535, 1]),
    ("u32", "UInt32", ["0", "4294967295", "1"], [0, 2**32 - 1, 1]),
    ("u64", "UInt64", ["0", "9223372036854775807", "1"], [0, 2**63 - 1, 1]),
    ("i128", "Int128", [f"-{D38}", D38, "0"], [Decimal(f"-{D38}"), Decimal(D38), Decimal(0)]),
    ("u128", "UInt128", ["0", D38, "1"], [Decimal(0), Decimal(D38), Decimal(1)]),
    ("i256", "Int256", [f"-{D38}", D38, "-1"], [Decimal(f"-{D38}"), Decimal(D38), Decimal(-1)]),
    ("u256", "UInt256", ["0", D38, "1"], [Decimal(0), Decimal(D38), Decimal(1)]),
    ("f32", "Float32", ["-3.4028234663852886e38", "inf", "nan"], [-3.4028234663852886e38, math.inf, math.nan]),
    ("f64", "Float64", ["-1.7976931348623157e308", "5e-324", "-inf"], [-1.7976931348623157e308, 5e-324, -math.inf]),
    (
        "d9",
        "Decimal(9, 2)",
        ["-9999999.99", "9999999.99", "0.01"],
        [Decimal("-9999999.99"), Decimal("9999999.99"), Decimal("0.01")],
    ),
    (
        "d38",
        "Decimal(38, 10)",
        ["-9999999999999999999999999999.9999999999", "9999999999999999999999999999.9999999999", "0"],
        [Decimal("-9999999999999999999999999999.9999999999"), Decimal("9999999999999999999999999999.9999999999"), Decimal(0)],
    ),
    (
        "dec64",
        "Decimal64(4)",
        ["-1.0001", "99999999999999.9999", "0"],
        [Decimal("-1.0001"), Decimal("99999999999999.9999"), Decimal(0)],
    ),
    ("b", "Bool", ["false", "true", "true"], [False, True, True]),
    ("s", "String", ["''", "'héllo wörld ✓ 😀 日本'", "'a\\'b\\\\c\\nd\\0e'"], ["", "héllo wörld ✓ 😀 日本", "a'b\\c\nd\0e"]),
    ("fs", "FixedString(4)", ["'ab'", "'\\xFF\\x00\\xFE\\x01'", "''"], [b"ab\0\0", b"\xff\0\xfe\x01", b"\0\0\0\0"]),
    ("lc", "LowCardinality(String)", ["''", "'ü'", "'ü'"], ["", "ü", "ü"]),
    ("lcn", "LowCardinality(Nullable(String))", ["NULL", "''", "'x'"], [None, "", "x"]),
    ("e8", "Enum8('a\\'q' = -128, 'b' = 127, '' = 0)", ["'a\\'q'", "'b'", "''"], ["a'q", "b", ""]),
    ("e16", "Enum16('lo' = -32768, 'hi' = 32767)", ["'lo'", "'hi'", "'hi'"], ["lo", "hi", "hi"]),
    ("ne", "Nullable(Enum8('x' = 1))", ["NULL", "'x'", "'x'"], [None, "x", "x"]),
    (
        "u",
        "UUID",
        [
            "'00000000-0000-0000-0000-000000000000'",
            "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
            "'12345678-90ab-cdef-1234-567890abcdef'",
        ],
        [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.UUID("12345678-90ab-cdef-1234-567890abcdef")],
    ),
    (
        "nu",
        "Nullable(UUID)",
        ["NULL", "'12345678-90ab-cdef-1234-567890abcdef'", "NULL"],
        [None, uuid.UUID("12345678-90ab-cdef-1234-567890abcdef"), None],
    ),
    ("ip4", "IPv4", ["'0.0.0.0'", "'255.255.255.255'", "'192.168.1.1'"], ["0.0.0.0", "255.255.255.255", "192.168.1.1"]),  # noqa: S104
    ("ip6", "IPv6", ["'::'", "'2001:db8::1'", "'::ffff:1.2.3.4'"], ["::", "2001:db8::1", "::ffff:1.2.3.4"]),
    (
        "d",
        "Date",
        ["'1970-01-01'", "'2149-06-06'", "'2024-02-29'"],
        [dt.date(1970, 1, 1), dt.date(2149, 6, 6), dt.date(2024, 2, 29)],
    ),
    (
        "d32",
        "Date32",
        ["'1900-01-01'", "'2299-12-31'", "'1969-12-31'"],
        [dt.date(1900, 1, 1), dt.date(2299, 12, 31), dt.date(1969, 12, 31)],
    ),
    (
        "dt",
        "DateTime('UTC')",
        ["'1970-01-01 00:00:00'", "'2106-02-07 06:28:15'", "'2024-01-01 12:00:00'"],
        [
            dt.datetime(1970, 1, 1, tzinfo=UTC),
            dt.datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC),
            dt.datetime(2024, 1, 1, 12, tzinfo=UTC),
        ],
    ),
    (
        "dtz",
        "DateTime('Asia/Tokyo')",
        ["'1970-01-01 09:00:00'", "'2020-01-01 09:00:00'", "'2024-07-01 00:00:00'"],
        [dt.datetime(1970, 1, 1, tzinfo=UTC), dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2024, 7, 1, tzinfo=TOKYO)],
    ),
    (
        "dt3",
        "DateTime64(3)",
        ["'1900-01-01 00:00:00.001'", "'2299-12-31 23:59:59.999'", "'1969-12-31 23:59:59.999'"],
        [
            dt.datetime(1900, 1, 1, 0, 0, 0, 1000, tzinfo=UTC),
            dt.datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
            dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
        ],
    ),
    (
        "dt6",
        "DateTime64(6, 'UTC')",
        ["'1900-01-01 00:00:00.000001'", "'2299-12-31 23:59:59.999999'", "'1969-12-31 23:59:59.999999'"],
        [
            dt.datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            dt.datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ],
    ),
    (
        "dt6ny",
        "DateTime64(6, 'America/New_York')",
        ["'1950-06-01 12:00:00.123456'", "'2024-03-10 03:30:00.5'", "'2024-11-03 12:00:00'"],
        [
            dt.datetime(1950, 6, 1, 12, 0, 0, 123456, tzinfo=NY),
            dt.datetime(2024, 3, 10, 3, 30, 0, 500000, tzinfo=NY),
            dt.datetime(2024, 11, 3, 12, 0, tzinfo=NY),
        ],
    ),
    ("n", "Nullable(Int32)", ["NULL", "2147483647", "-1"], [None, 2**31 - 1, -1]),
    ("ns", "Nullable(String)", ["NULL", "''", "'x'"], [None, "", "x"]),
    (
        "arr",
        "Array(Nullable(Decimal(18, 8)))",
        ["[]", "[NULL, 1.12345678, -9999999999.99999999]", "[0]"],
        [[], [None, Decimal("1.12345678"), Decimal("-9999999999.99999999")], [Decimal(0)]],
    ),
    ("arr_e", "Array(Enum8('a' = 1, 'b' = 2))", ["[]", "['b', 'a']", "['a']"], [[], ["b", "a"], ["a"]]),
    ("arr_lc", "Array(LowCardinality(String))", ["['']", "['x', 'y', 'x']", "[]"], [[""], ["x", "y", "x"], []]),
    (
        "m",
        "Map(String, Array(UInt32))",
        ["{}", "{'k': [4294967295, 0], '': []}", "{'ü': []}"],
        [[], [("k", [2**32 - 1, 0]), ("", [])], [("ü", [])]],
    ),
    (
        "m_lc",
        "Map(LowCardinality(String), Nullable(UInt64))",
        ["{}", "{'a': NULL}", "{'b': 9223372036854775807}"],
        [[], [("a", None)], [("b", 2**63 - 1)]],
    ),
    (
        "t",
        "Tuple(a Int32, b Array(String))",
        ["(-2147483648, [])", "(2147483647, ['x', ''])", "(0, ['ü'])"],
        [{"a": -(2**31), "b": []}, {"a": 2**31 - 1, "b": ["x", ""]}, {"a": 0, "b": ["ü"]}],
    ),
    (
        "tu",
        "Tuple(Int32, Nullable(String), IPv4)",
        ["(1, NULL, '1.2.3.4')", "(2, '', '0.0.0.0')", "(3, 'z', '255.255.255.255')"],
        [
            {"_1": 1, "_2": None, "_3": "1.2.3.4"},
            {"_1": 2, "_2": "", "_3": "0.0.0.0"},  # noqa: S104
            {"_1": 3, "_2": "z", "_3": "255.255.255.255"},
        ],
    ),
    (
        "nt",
        "Nullable(Tuple(x Int64, y Date32, e Enum8('p' = 1, 'q' = 2)))",
        ["NULL", "(1, '1900-01-01', 'p')", "(-1, '2299-12-31', 'q')"],
        [None, {"x": 1, "y": dt.date(1900, 1, 1), "e": "p"}, {"x": -1, "y": dt.date(2299, 12, 31), "e": "q"}],
    ),
]

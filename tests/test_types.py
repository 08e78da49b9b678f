"""The ClickHouse → Iceberg type mapping: parser and planner units, then real round trips.

The round trips run the real engines: a chDB table holds edge values, the plans' SELECT
fetches them as ArrowStream, convert_batch shapes them, PyIceberg writes a real Iceberg table
(SQLite catalog), and both PyIceberg and ClickHouse's own Iceberg reader (icebergLocal) read
it back for a row-by-row comparison with the source values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import chdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import index_by_id
from pyiceberg.types import IcebergType, ListType, MapType, StructType
from typecases import EDGES, TOKYO, UTC, as_icebergLocal_reads, create, expected_rows, norm

from offloader.chtypes import ChType, ColumnPlan, TypeOptions, parse_type, render_type
from offloader.convert import convert_batch
from offloader.errors import ConfigError, DataError, SchemaError, UnsupportedTypeError, ValueOutOfRangeError
from offloader.iceberg.mapping import iceberg_schema, plan_columns

DEFAULT = TypeOptions()


# ---------------------------------------------------------------------------------------
# helpers


def shape(t: IcebergType) -> str:
    """An Iceberg type as text with the requiredness of every nested field, ids left out."""
    if isinstance(t, ListType):
        return f"list<{'' if t.element_required else 'optional '}{shape(t.element_type)}>"
    if isinstance(t, MapType):
        return f"map<{shape(t.key_type)}, {'' if t.value_required else 'optional '}{shape(t.value_type)}>"
    if isinstance(t, StructType):
        inner = ", ".join(f"{f.name}: {'' if f.required else 'optional '}{shape(f.field_type)}" for f in t.fields)
        return f"struct<{inner}>"
    return str(t)


def plan(ch_type: str, options: TypeOptions = DEFAULT, name: str = "c") -> ColumnPlan:
    return plan_columns([(name, ch_type)], options)[0]


def arrow_of(conn: Any, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
    """The result of a query through chDB's streaming ArrowStream API, as the core reads it."""
    batches: list[pa.RecordBatch] = []
    schema = None
    for chunk in conn.send_query(sql, "ArrowStream", params=params):
        data = chunk.bytes()
        if data:
            reader = pa.ipc.open_stream(pa.py_buffer(data))
            schema = reader.schema
            batches.extend(reader)
    return pa.Table.from_batches(batches, schema=schema)


def describe(conn: Any, table: str) -> list[tuple[str, str]]:
    """(name, type) of each column, exactly as DESCRIBE TABLE prints them."""
    result = conn.query(f"DESCRIBE TABLE {table}", "ArrowStream")
    rows = pa.ipc.open_stream(pa.py_buffer(result.bytes())).read_all().select(["name", "type"]).to_pylist()
    return [(r["name"], r["type"]) for r in rows]


def fetch(conn: Any, table: str, plans: list[ColumnPlan], settings: str = "") -> list[pa.RecordBatch]:
    sql = f"SELECT {', '.join(p.select_sql for p in plans)} FROM {table} ORDER BY id {settings}"
    return arrow_of(conn, sql).to_batches()


class RoundTrip:
    """One table offloaded through the plans into Iceberg, and read back by both readers."""

    def __init__(self, conn: Any, catalog: SqlCatalog, table: str, options: TypeOptions) -> None:
        self.plans = plan_columns(describe(conn, table), options)
        self.schema = iceberg_schema(self.plans)
        target = schema_to_pyarrow(self.schema)
        self.batches = [convert_batch(b, self.plans, target) for b in fetch(conn, table, self.plans)]
        assert all(b.schema == target for b in self.batches)
        self.iceberg = catalog.create_table(f"ns.{table}", schema=self.schema)
        assert self.iceberg.schema().as_struct() == self.schema.as_struct()  # the ids the batches carry
        self.iceberg.append(pa.Table.from_batches(self.batches, schema=target))
        self.pyiceberg_rows = norm(self.iceberg.scan().to_arrow().sort_by("id").to_pylist())
        location = self.iceberg.location().removeprefix("file://")
        self.clickhouse = arrow_of(conn, "SELECT * FROM icebergLocal({path:String}) ORDER BY id", {"path": location})
        self.clickhouse_rows = norm(self.clickhouse.to_pylist())


@pytest.fixture(scope="module")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The data directory of the module's chDB session."""
    return str(tmp_path_factory.mktemp("chdb"))


@pytest.fixture(scope="module")
def conn(chdb_path: str) -> Iterator[Any]:
    """One chDB session for the module (chDB holds one data path per process), closed at the end."""
    connection = chdb.connect(chdb_path)
    yield connection
    connection.close()


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SqlCatalog:
    """A SQLite-backed Iceberg catalog in tmp_path, which is also the working directory.

    ClickHouse's file table functions (icebergLocal) only read below the working directory.
    """
    monkeypatch.chdir(tmp_path)
    cat = SqlCatalog("test", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse")
    cat.create_namespace("ns")
    return cat


# ---------------------------------------------------------------------------------------
# parse_type


def test_parse_named_tuple_as_describe_prints_it() -> None:
    """A multi-line named Tuple from DESCRIBE parses into its element names and types."""
    node = parse_type("Tuple(\n    a Int32,\n    b Array(String))")
    assert node == ChType("Tuple", args=(ChType("Int32"), ChType("Array", args=(ChType("String"),))), names=("a", "b"))


def test_parse_enum_labels_with_quotes_commas_and_parentheses() -> None:
    """Enum labels keep escaped quotes, commas, parentheses and '=' and negative codes."""
    node = parse_type(r"Enum8('a\'b' = -128, 'c,)(' = 1, 'x = y' = 127, '' = 0)")
    assert node.enum == (("a'b", -128), ("c,)(", 1), ("x = y", 127), ("", 0))


def test_parse_backquoted_tuple_names() -> None:
    """Backquoted tuple element names may hold spaces, backticks and type names."""
    node = parse_type("Tuple(`a b` Int32, `c``d` String, `Date` Date, `e\\`f` UInt8)")
    assert node.names == ("a b", "c`d", "Date", "e`f")


def test_parse_datetime_parameters_and_spaces() -> None:
    """Time zones and precisions are parameters, whatever the spacing."""
    assert parse_type("DateTime64( 9 ,'Asia/Tokyo' )").params == (9, "Asia/Tokyo")
    assert parse_type("DateTime('Europe/Berlin')").params == ("Europe/Berlin",)
    assert parse_type("Nullable( Decimal(18, 8) )").args[0].params == (18, 8)


def test_parse_keeps_unmapped_parameters_raw() -> None:
    """Types this module does not map keep their parameter text raw instead of failing to parse."""
    assert parse_type("JSON(max_dynamic_paths = 10, a.b UInt32, SKIP REGEXP 'x(')").raw == (
        "max_dynamic_paths = 10, a.b UInt32, SKIP REGEXP 'x('"
    )
    assert parse_type("AggregateFunction(quantiles(0.5, 0.9), UInt64)").raw == "quantiles(0.5, 0.9), UInt64"


@pytest.mark.parametrize(
    "text",
    [
        "Map(LowCardinality(String), Array(Nullable(Decimal(18, 8))))",
        "Tuple(`a b` Int32, `b` Array(Tuple(`x` Enum16('q\\'' = -1), `y` FixedString(3))))",
        "Tuple(Int32, Nullable(String))",
        "DateTime64(6, 'America/New_York')",
    ],
)
def test_render_then_parse_is_the_same_tree(text: str) -> None:
    """Rendering a parsed type gives text that parses back to the same tree."""
    node = parse_type(text)
    assert parse_type(render_type(node)) == node


@pytest.mark.parametrize("text", ["", "Array(", "Array(Int32", "Int32)", "Enum8('a' = x)", "Tuple(a Int32, String)"])
def test_parse_rejects_malformed_text(text: str) -> None:
    """Malformed type text raises UnsupportedTypeError instead of a half-parsed tree."""
    with pytest.raises(UnsupportedTypeError):
        parse_type(text)


# ---------------------------------------------------------------------------------------
# plan_columns: the mapping table

MAPPING = [
    ("Int8", "int"),
    ("Int16", "int"),
    ("Int32", "int"),
    ("Int64", "long"),
    ("UInt8", "int"),
    ("UInt16", "int"),
    ("UInt32", "long"),
    ("UInt64", "long"),
    ("Int128", "decimal(38, 0)"),
    ("UInt128", "decimal(38, 0)"),
    ("Int256", "decimal(38, 0)"),
    ("UInt256", "decimal(38, 0)"),
    ("Float32", "float"),
    ("Float64", "double"),
    ("Decimal(9, 2)", "decimal(9, 2)"),
    ("Decimal(38, 38)", "decimal(38, 38)"),
    ("Decimal32(3)", "decimal(9, 3)"),
    ("Decimal64(4)", "decimal(18, 4)"),
    ("Decimal128(5)", "decimal(38, 5)"),
    ("Bool", "boolean"),
    ("String", "string"),
    ("FixedString(16)", "fixed[16]"),
    ("LowCardinality(String)", "string"),
    ("Enum8('a' = 1, 'b' = 2)", "string"),
    ("Enum16('x' = -300)", "string"),
    ("UUID", "uuid"),
    ("IPv4", "string"),
    ("IPv6", "string"),
    ("Date", "date"),
    ("Date32", "date"),
    ("DateTime", "timestamptz"),
    ("DateTime('Asia/Tokyo')", "timestamptz"),
    ("DateTime64(0)", "timestamptz"),
    ("DateTime64(3, 'UTC')", "timestamptz"),
    ("DateTime64(6, 'America/New_York')", "timestamptz"),
    ("Array(Nullable(Decimal(18, 8)))", "list<optional decimal(18, 8)>"),
    ("Map(String, Array(UInt32))", "map<string, list<long>>"),
    ("Map(LowCardinality(String), Nullable(UInt64))", "map<string, optional long>"),
    ("Tuple(a Int32, b Array(String))", "struct<a: int, b: list<string>>"),
    ("Tuple(Int32, Nullable(String))", "struct<_1: int, _2: optional string>"),
    ("Array(Array(Enum8('a' = 1)))", "list<list<string>>"),
    ("Tuple(`x y` Map(String, Tuple(UUID, IPv6)))", "struct<x y: map<string, struct<_1: uuid, _2: string>>>"),
]


@pytest.mark.parametrize(("ch_type", "iceberg"), MAPPING)
def test_mapping_of_each_type(ch_type: str, iceberg: str) -> None:
    """Each ClickHouse type maps to its documented Iceberg type, required unless Nullable."""
    p = plan(ch_type)
    assert shape(p.iceberg_type) == iceberg
    assert p.required is True


@pytest.mark.parametrize("ch_type", ["Nullable(Int32)", "LowCardinality(Nullable(String))", "Nullable(Tuple(a Int8))"])
def test_nullable_is_optional(ch_type: str) -> None:
    """Nullable (also inside LowCardinality) maps to an optional field."""
    assert plan(ch_type).required is False


def test_options_change_uint64_and_bigint_mappings() -> None:
    """uint64="decimal" gives decimal(20,0); bigint="string" gives string."""
    assert shape(plan("UInt64", TypeOptions(uint64="decimal")).iceberg_type) == "decimal(20, 0)"
    assert shape(plan("Array(UInt256)", TypeOptions(bigint="string")).iceberg_type) == "list<string>"


def test_datetime64_sub_micro_needs_the_truncate_option() -> None:
    """DateTime64(7..9) is rejected by default, naming the option, and accepted with it."""
    with pytest.raises(UnsupportedTypeError, match="truncate_datetime64 = true"):
        plan("DateTime64(9)")
    p = plan("DateTime64(9, 'UTC')", TypeOptions(truncate_datetime64=True))
    assert shape(p.iceberg_type) == "timestamptz"
    assert p.select_sql == "toStartOfInterval(`c`, INTERVAL 1 microsecond) AS `c`"


def test_unsupported_columns_are_all_reported_at_once() -> None:
    """One UnsupportedTypeError names every unsupported column and its type."""
    columns = [
        ("ok", "Int32"),
        ("big", "Decimal(76, 2)"),
        ("d256", "Decimal256(2)"),
        ("js", "JSON"),
        ("obj", "Object('json')"),
        ("var", "Variant(String, UInt64)"),
        ("dyn", "Dynamic"),
        ("agg", "AggregateFunction(sum, UInt64)"),
        ("nothing", "Nullable(Nothing)"),
        ("iv", "IntervalSecond"),
        ("pt", "Point"),
        ("poly", "MultiPolygon"),
        ("ns", "Array(DateTime64(9))"),
        ("nk", "Map(DateTime64(9), String)"),
    ]
    with pytest.raises(UnsupportedTypeError) as info:
        plan_columns(columns, DEFAULT)
    message = str(info.value)
    assert "13 column(s)" in message
    for name, ch_type in columns[1:]:
        assert f"column {name!r} ({ch_type})" in message
    assert "'ok'" not in message
    assert "at most 38" in message and "truncate_datetime64 = true" in message


def test_datetime64_map_keys_are_never_truncated() -> None:
    """Even with truncate_datetime64, DateTime64(9) map keys are rejected: truncation could merge keys."""
    with pytest.raises(UnsupportedTypeError, match="merge two keys"):
        plan("Map(DateTime64(9), String)", TypeOptions(truncate_datetime64=True))


@pytest.mark.parametrize(
    ("ch_type", "select_sql"),
    [
        ("Int64", "`c` AS `c`"),
        ("LowCardinality(Nullable(String))", "`c` AS `c`"),
        ("UUID", "`c` AS `c`"),
        ("Nullable(Enum8('a' = 1))", "CAST(`c` AS Nullable(String)) AS `c`"),
        ("IPv4", "CAST(`c` AS String) AS `c`"),
        ("Int256", "CAST(`c` AS String) AS `c`"),
        ("DateTime('Asia/Tokyo')", "CAST(`c` AS DateTime64(6, 'UTC')) AS `c`"),
        ("Map(String, Enum8('a' = 1))", "CAST(`c` AS Map(String, String)) AS `c`"),
        ("Array(Nullable(DateTime64(9)))", "arrayMap(_e1 -> toStartOfInterval(_e1, INTERVAL 1 microsecond), `c`) AS `c`"),
    ],
)
def test_select_sql_converts_inside_clickhouse(ch_type: str, select_sql: str) -> None:
    """The SELECT expression converts Enum/IP/bigint/DateTime in ClickHouse and leaves the rest untouched."""
    assert plan(ch_type, TypeOptions(truncate_datetime64=True)).select_sql == select_sql


def test_select_sql_quotes_identifiers() -> None:
    """Column names are backquoted with backticks and backslashes escaped."""
    p = plan("Enum8('a' = 1)", name="we`ird\\name")
    assert p.select_sql == "CAST(`we\\`ird\\\\name` AS String) AS `we\\`ird\\\\name`"


def test_iceberg_schema_assigns_top_level_ids_first() -> None:
    """Top-level fields get ids 1..n and every nested field a unique id after them."""
    plans = plan_columns([("a", "Int32"), ("b", "Map(String, Array(UInt32))"), ("c", "Tuple(x Int8, y String)")], DEFAULT)
    schema = iceberg_schema(plans)
    assert [f.field_id for f in schema.fields] == [1, 2, 3]
    ids = list(index_by_id(schema))
    assert len(ids) == len(set(ids)) == 8
    assert min(set(ids) - {1, 2, 3}) == 4


def test_type_options_validate_themselves() -> None:
    """TypeOptions with an unknown value raises ConfigError naming the option and what is accepted."""
    with pytest.raises(ConfigError, match='uint64 = .*expected "long" or "decimal"'):
        TypeOptions(uint64="unsigned")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bigint"):
        TypeOptions(bigint="int")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# convert_batch on its own


def test_convert_fills_missing_optional_columns_and_follows_target_order() -> None:
    """Target columns absent from the batch become NULLs, and columns come in the target's order."""
    plans = plan_columns([("a", "Int32"), ("b", "String")], DEFAULT)
    batch = pa.record_batch({"b": pa.array(["x", "y"]), "a": pa.array([1, 2], pa.int32())})
    target = pa.schema([pa.field("a", pa.int32(), False), pa.field("new", pa.float64()), pa.field("b", pa.large_string(), False)])
    out = convert_batch(batch, plans, target)
    assert out.schema == target
    assert out.to_pylist() == [{"a": 1, "new": None, "b": "x"}, {"a": 2, "new": None, "b": "y"}]


def test_convert_widens_into_an_evolved_target() -> None:
    """int into long, float into double and decimal(18,8) into decimal(20,8) are widened exactly."""
    plans = plan_columns([("i", "Int32"), ("f", "Float32"), ("d", "Decimal(18, 8)")], DEFAULT)
    batch = pa.record_batch(
        {
            "i": pa.array([-(2**31), 2**31 - 1], pa.int32()),
            "f": pa.array([1.5, -0.25], pa.float32()),
            "d": pa.array([Decimal("1.00000001"), Decimal("-9999999999.99999999")], pa.decimal128(18, 8)),
        }
    )
    target = pa.schema([("i", pa.int64()), ("f", pa.float64()), ("d", pa.decimal128(20, 8))])
    assert convert_batch(batch, plans, target).to_pylist() == [
        {"i": -(2**31), "f": 1.5, "d": Decimal("1.00000001")},
        {"i": 2**31 - 1, "f": -0.25, "d": Decimal("-9999999999.99999999")},
    ]


def test_convert_refuses_to_drop_or_invent_columns() -> None:
    """A batch column the target lacks, or a required target column the batch lacks, is a SchemaError."""
    plans = plan_columns([("a", "Int32"), ("b", "Int32")], DEFAULT)
    batch = pa.record_batch({"a": pa.array([1], pa.int32()), "b": pa.array([2], pa.int32())})
    with pytest.raises(SchemaError, match=r"no column\(s\) \['b'\]"):
        convert_batch(batch, plans, pa.schema([("a", pa.int32())]))
    with pytest.raises(SchemaError, match="'z' is required"):
        convert_batch(batch, plans, pa.schema([("a", pa.int32()), ("b", pa.int32()), pa.field("z", pa.int32(), False)]))


def test_convert_rejects_nulls_in_required_fields() -> None:
    """NULLs in a column the Iceberg table requires raise DataError naming the column."""
    plans = plan_columns([("a", "Nullable(Int32)")], DEFAULT)
    batch = pa.record_batch({"a": pa.array([1, None], pa.int32())})
    with pytest.raises(DataError, match="'a'.*required"):
        convert_batch(batch, plans, pa.schema([pa.field("a", pa.int32(), False)]))


def test_convert_refuses_enum_codes_not_selected_through_the_plan() -> None:
    """Enum codes (a SELECT that skipped the plan's CAST) are refused rather than written as '1', '2'."""
    plans = plan_columns([("e", "Enum8('a' = 1)")], DEFAULT)
    batch = pa.record_batch({"e": pa.array([1], pa.int8())})
    with pytest.raises(SchemaError, match="select_sql"):
        convert_batch(batch, plans, schema_to_pyarrow(iceberg_schema(plans)))


def test_convert_handles_sliced_nested_arrays() -> None:
    """Slices of list, map and struct arrays convert to exactly the sliced rows."""
    plans = plan_columns([("l", "Array(UInt32)"), ("m", "Map(String, Array(UInt8))"), ("t", "Tuple(Int8, String)")], DEFAULT)
    batch = pa.record_batch(
        {
            "l": pa.array([[1], [2, 3], [], [4]], pa.list_(pa.field("item", pa.uint32(), False))),
            "m": pa.array([[("a", [1])], [("b", [2]), ("c", [])], [], [("d", [3])]], pa.map_(pa.string(), pa.list_(pa.uint8()))),
            "t": pa.array(
                [{"1": i, "2": str(i)} for i in range(4)],
                pa.struct([pa.field("1", pa.int8(), False), pa.field("2", pa.string(), False)]),
            ),
        }
    ).slice(1, 2)
    out = convert_batch(batch, plans, schema_to_pyarrow(iceberg_schema(plans)))
    assert out.to_pylist() == [
        {"l": [2, 3], "m": [("b", [2]), ("c", [])], "t": {"_1": 1, "_2": "1"}},
        {"l": [], "m": [], "t": {"_1": 2, "_2": "2"}},
    ]


# ---------------------------------------------------------------------------------------
# Real round trips: chDB → plans → Arrow → PyIceberg → (PyIceberg, icebergLocal)


def test_round_trip_of_every_type_through_both_readers(conn: Any, catalog: SqlCatalog) -> None:
    """Edge values of every mapped type come back unchanged from PyIceberg and from ClickHouse's icebergLocal."""
    create(conn, "edges", EDGES)
    trip = RoundTrip(conn, catalog, "edges", DEFAULT)
    expected = expected_rows(EDGES)
    assert trip.pyiceberg_rows == expected
    assert trip.clickhouse_rows == as_icebergLocal_reads(expected, {"nt": {"x": 0, "y": dt.date(1970, 1, 1), "e": ""}})


def test_round_trip_keeps_iceberg_types_that_clickhouse_reads_natively(conn: Any, catalog: SqlCatalog) -> None:
    """icebergLocal sees uuid as UUID, fixed[N] as FixedString(N), timestamptz as DateTime64(6, 'UTC') and date as Date32."""
    columns = [e for e in EDGES if e[0] in ("u", "fs", "dt6ny", "d")]
    create(conn, "native", columns)
    trip = RoundTrip(conn, catalog, "native", DEFAULT)
    location = trip.iceberg.location().removeprefix("file://")
    described = dict(describe(conn, f"icebergLocal('{location}')"))
    assert described == {"id": "Int64", "u": "UUID", "fs": "FixedString(4)", "dt6ny": "DateTime64(6, 'UTC')", "d": "Date32"}


def test_round_trip_with_other_arrow_output_settings(conn: Any) -> None:
    """Strings as binary, LowCardinality as dictionaries and FixedString as binary convert to the same batch."""
    create(conn, "settings", EDGES)
    plans = plan_columns(describe(conn, "settings"), DEFAULT)
    target = schema_to_pyarrow(iceberg_schema(plans))
    plain = [convert_batch(b, plans, target) for b in fetch(conn, "settings", plans)]
    other = fetch(
        conn,
        "settings",
        plans,
        "SETTINGS output_format_arrow_string_as_string = 0, output_format_arrow_low_cardinality_as_dictionary = 1, "
        "output_format_arrow_fixed_string_as_fixed_byte_array = 0",
    )
    assert pa.types.is_binary(other[0].schema.field("s").type)
    assert pa.types.is_dictionary(other[0].schema.field("lc").type)
    converted = [convert_batch(b, plans, target) for b in other]
    assert converted[0].schema == plain[0].schema == target
    assert norm(pa.Table.from_batches(converted).to_pylist()) == norm(pa.Table.from_batches(plain).to_pylist())


def test_clickhouse_connect_gives_the_same_arrow_as_chdb_streaming(conn: Any, chdb_path: str) -> None:
    """The plans' SELECT through clickhouse-connect's query_arrow_stream gives the same Arrow types and rows as chDB's stream."""
    import clickhouse_connect

    create(conn, "via_client", EDGES)
    plans = plan_columns(describe(conn, "via_client"), DEFAULT)
    sql = f"SELECT {', '.join(p.select_sql for p in plans)} FROM via_client ORDER BY id"
    streamed = arrow_of(conn, sql)
    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_path}")  # the same data path, as the core opens it
    try:
        with client.query_arrow_stream(sql) as stream:
            through_client = pa.Table.from_batches(list(stream))
    finally:
        client.close()
    assert through_client.schema == streamed.schema
    target = schema_to_pyarrow(iceberg_schema(plans))
    a = [convert_batch(b, plans, target) for b in through_client.to_batches()]
    b = [convert_batch(b, plans, target) for b in streamed.to_batches()]
    assert norm(pa.Table.from_batches(a).to_pylist()) == norm(pa.Table.from_batches(b).to_pylist()) == expected_rows(EDGES)


def test_uint64_above_long_max_fails_naming_column_and_value(conn: Any) -> None:
    """A UInt64 of 2^63 fails convert_batch with ValueOutOfRangeError naming the column, the value and uint64="decimal"."""
    create(conn, "u64_over", [("trade_id", "UInt64", ["1", "9223372036854775808"], [1, 2**63])])
    plans = plan_columns(describe(conn, "u64_over"), DEFAULT)
    with pytest.raises(ValueOutOfRangeError) as info:
        for batch in fetch(conn, "u64_over", plans):
            convert_batch(batch, plans, schema_to_pyarrow(iceberg_schema(plans)))
    message = str(info.value)
    assert "'trade_id' (UInt64)" in message and "9223372036854775808" in message and "row 1" in message
    assert 'uint64 = "decimal"' in message


def test_uint64_as_decimal_stores_the_maximum_exactly(conn: Any, catalog: SqlCatalog) -> None:
    """With uint64="decimal", 18446744073709551615 is stored as decimal(20,0) and read back exactly by both readers."""
    columns = [
        ("u64", "UInt64", ["18446744073709551615", "0"], [Decimal(2**64 - 1), Decimal(0)]),
        ("au64", "Array(Nullable(UInt64))", ["[18446744073709551615, NULL]", "[]"], [[Decimal(2**64 - 1), None], []]),
    ]
    create(conn, "u64_dec", columns)
    trip = RoundTrip(conn, catalog, "u64_dec", TypeOptions(uint64="decimal"))
    assert shape(trip.plans[1].iceberg_type) == "decimal(20, 0)"
    assert trip.pyiceberg_rows == trip.clickhouse_rows == expected_rows(columns)


def test_nested_uint64_overflow_names_the_path(conn: Any) -> None:
    """A UInt64 above 2^63-1 inside a Map value fails with the column, the path and the value."""
    create(conn, "u64_nested", [("m", "Map(String, Array(UInt64))", ["{'k': [1, 18446744073709551615]}"], [None])])
    plans = plan_columns(describe(conn, "u64_nested"), DEFAULT)
    with pytest.raises(ValueOutOfRangeError, match=r"'m' .* at m\.value\[\]: value 18446744073709551615"):
        convert_batch(fetch(conn, "u64_nested", plans)[0], plans, schema_to_pyarrow(iceberg_schema(plans)))


def test_int256_beyond_38_digits_fails_as_decimal(conn: Any) -> None:
    """An Int256 of 39 digits fails under bigint="decimal" with the value and the bigint="string" hint."""
    big = "1" + "0" * 38
    create(conn, "i256_over", [("x", "Int256", ["1", big], [None, None])])
    plans = plan_columns(describe(conn, "i256_over"), DEFAULT)
    with pytest.raises(ValueOutOfRangeError) as info:
        convert_batch(fetch(conn, "i256_over", plans)[0], plans, schema_to_pyarrow(iceberg_schema(plans)))
    assert "'x' (Int256)" in str(info.value) and big in str(info.value) and 'bigint = "string"' in str(info.value)


def test_bigints_round_trip_as_strings(conn: Any, catalog: SqlCatalog) -> None:
    """Under bigint="string", the minimum and maximum of every 128/256-bit integer round-trip exactly as text."""
    limits = {
        "Int128": (-(2**127), 2**127 - 1),
        "UInt128": (0, 2**128 - 1),
        "Int256": (-(2**255), 2**255 - 1),
        "UInt256": (0, 2**256 - 1),
    }
    columns = [(name.lower(), name, [str(lo), str(hi)], [str(lo), str(hi)]) for name, (lo, hi) in limits.items()]
    create(conn, "bigstr", columns)
    trip = RoundTrip(conn, catalog, "bigstr", TypeOptions(bigint="string"))
    assert trip.pyiceberg_rows == trip.clickhouse_rows == expected_rows(columns)


def test_datetime64_9_is_rejected_by_default(conn: Any) -> None:
    """Planning a real DateTime64(9) column without the option raises UnsupportedTypeError naming it."""
    create(conn, "ns_default", [("ts", "DateTime64(9, 'UTC')", ["'2020-01-01 00:00:00.123456789'"], [None])])
    with pytest.raises(UnsupportedTypeError, match=r"'ts' \(DateTime64\(9, 'UTC'\)\).*truncate_datetime64 = true"):
        plan_columns(describe(conn, "ns_default"), DEFAULT)


def test_datetime64_9_truncates_not_rounds(conn: Any, catalog: SqlCatalog) -> None:
    """With truncate_datetime64, sub-microsecond digits are dropped (floored, also before 1970), never rounded."""
    columns = [
        (
            "ts",
            "DateTime64(9, 'UTC')",
            ["'2020-01-01 00:00:00.123456999'", "'1969-12-31 23:59:59.999999999'", "'1900-01-01 00:00:00.000001999'"],
            [
                dt.datetime(2020, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
                dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                dt.datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            ],
        ),
        (
            "nts",
            "Nullable(DateTime64(7, 'Asia/Tokyo'))",
            ["NULL", "'1970-01-01 08:59:59.9999999'", "'2299-12-31 23:59:59.9999999'"],
            [
                None,
                dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                dt.datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=TOKYO),
            ],
        ),
        (
            "ats",
            "Array(DateTime64(8))",
            ["[]", "['1969-12-31 23:59:59.99999999']", "['2000-01-01 00:00:00.00000099', '2000-01-01 00:00:00']"],
            [[], [dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)], [dt.datetime(2000, 1, 1, tzinfo=UTC)] * 2],
        ),
        (
            "tts",
            "Nullable(Tuple(at DateTime64(9), tag Enum8('a' = 1)))",
            ["NULL", "('1969-12-31 23:59:59.999999999', 'a')", "('2000-01-01 00:00:00.000000500', 'a')"],
            [
                None,
                {"at": dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "tag": "a"},
                {"at": dt.datetime(2000, 1, 1, tzinfo=UTC), "tag": "a"},
            ],
        ),
        (
            "mts",
            "Map(String, DateTime64(9))",
            ["{}", "{'k': '1969-12-31 23:59:59.999999999'}", "{'a': '2000-01-01 00:00:00.000000999'}"],
            [
                [],
                [("k", dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))],
                [("a", dt.datetime(2000, 1, 1, tzinfo=UTC))],
            ],
        ),
    ]
    create(conn, "ns_trunc", columns)
    trip = RoundTrip(conn, catalog, "ns_trunc", TypeOptions(truncate_datetime64=True))
    expected = expected_rows(columns)
    assert trip.pyiceberg_rows == expected
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    assert trip.clickhouse_rows == as_icebergLocal_reads(expected, {"tts": {"at": epoch, "tag": ""}})


def test_invalid_utf8_in_string_fails_naming_column_and_value(conn: Any) -> None:
    """A ClickHouse String holding invalid UTF-8 fails with ValueOutOfRangeError naming the column, row and bytes."""
    conn.query("DROP TABLE IF EXISTS bad_utf8")
    conn.query("CREATE TABLE bad_utf8 (id UInt32, s String, a Array(String)) ENGINE = MergeTree ORDER BY id")
    conn.query("INSERT INTO bad_utf8 SELECT number, if(number = 7, unhex('61FF62'), 'ok'), ['x'] FROM numbers(10)")
    plans = plan_columns(describe(conn, "bad_utf8"), DEFAULT)
    target = schema_to_pyarrow(iceberg_schema(plans))
    for settings in ("", "SETTINGS output_format_arrow_string_as_string = 0"):
        with pytest.raises(ValueOutOfRangeError, match=r"'s' \(String\): value b'a\\xffb' at row 7 is not valid UTF-8"):
            convert_batch(fetch(conn, "bad_utf8", plans, settings)[0], plans, target)


# ---------------------------------------------------------------------------------------
# Speed

TRADES = [
    ("ts", "DateTime64(6, 'UTC')", "toDateTime64('2024-01-01 00:00:00', 6, 'UTC') + toIntervalMicrosecond(number)"),
    ("symbol", "LowCardinality(String)", "concat('SYM', toString(number % 500))"),
    ("side", "Enum8('buy' = 1, 'sell' = 2)", "if(number % 2 = 0, 'buy', 'sell')"),
    ("price", "Decimal(18, 8)", "toDecimal64(number % 100000, 8) / 7"),
    ("qty", "Float64", "number / 3"),
    ("trade_id", "UInt64", "number"),
    ("venue", "LowCardinality(String)", "concat('V', toString(number % 7))"),
    ("account", "UInt32", "number % 10000"),
    ("is_taker", "Bool", "number % 3 = 0"),
]


def test_convert_batch_on_a_million_trade_rows_relabels_timestamps_without_copying(conn: Any) -> None:
    """1M trade rows convert to the Iceberg schema, and timestamps are relabelled in place, not copied.

    (How fast it is, is measured by bench/, never asserted in a test.)
    """
    conn.query("DROP TABLE IF EXISTS trades")
    conn.query(f"CREATE TABLE trades ({', '.join(f'`{n}` {t}' for n, t, _ in TRADES)}) ENGINE = MergeTree ORDER BY ts")
    conn.query(f"INSERT INTO trades SELECT {', '.join(e for _, _, e in TRADES)} FROM numbers(1000000)")
    plans = plan_columns(describe(conn, "trades"), DEFAULT)
    target = schema_to_pyarrow(iceberg_schema(plans))
    batches = arrow_of(conn, f"SELECT {', '.join(p.select_sql for p in plans)} FROM trades").to_batches()
    assert sum(b.num_rows for b in batches) == 1_000_000
    out = [convert_batch(b, plans, target) for b in batches]
    assert sum(b.num_rows for b in out) == 1_000_000
    assert all(b.schema == target for b in out)
    ts_in, ts_out = batches[0].column("ts"), out[0].column("ts")
    assert ts_out.buffers()[1].address == ts_in.buffers()[1].address, "the timestamps were copied"
    assert sum(pc.sum(b.column("trade_id")).as_py() for b in out) == 999_999 * 1_000_000 // 2

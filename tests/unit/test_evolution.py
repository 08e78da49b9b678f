"""The schema-evolution plan: what a new source schema changes in an existing Iceberg table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import DecimalType, DoubleType, FloatType, IntegerType, LongType, NestedField, StringType

from offloader.errors import SchemaError
from offloader.iceberg import plan_evolution


class Recorder:
    """The updates a plan applies, as (operation, column, what)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def add_column(self, name: str, field_type: Any, doc: str | None = None) -> None:
        self.calls.append(("add", name, field_type))

    def update_column(self, name: str, field_type: Any = None, required: bool | None = None) -> None:
        self.calls.append(("update", name, field_type if field_type is not None else ("required", required)))


def planned(current: Schema, source: Schema) -> list[tuple[str, str, Any]]:
    recorder = Recorder()
    for change in plan_evolution(current, source, "trades"):
        change(recorder)
    return recorder.calls


def schema(*fields: tuple[str, Any, bool]) -> Schema:
    return Schema(*(NestedField(i, name, t, required=req) for i, (name, t, req) in enumerate(fields, start=1)))


BASE = schema(("seq", LongType(), True), ("price", DecimalType(18, 8), False), ("qty", FloatType(), False))


def test_same_schema_changes_nothing() -> None:
    assert planned(BASE, BASE) == []


def test_a_new_column_is_added_optional() -> None:
    source = schema(*((f.name, f.field_type, f.required) for f in BASE.fields), ("venue", StringType(), False))
    assert planned(BASE, source) == [("add", "venue", StringType())]


@pytest.mark.parametrize(
    ("old", "new"),
    [(IntegerType(), LongType()), (FloatType(), DoubleType()), (DecimalType(18, 8), DecimalType(38, 8))],
    ids=["int-long", "float-double", "decimal-wider"],
)
def test_widening_promotions_are_applied(old: Any, new: Any) -> None:
    assert planned(schema(("v", old, False)), schema(("v", new, False))) == [("update", "v", new)]


@pytest.mark.parametrize(
    ("old", "new"),
    [(LongType(), IntegerType()), (DoubleType(), FloatType()), (DecimalType(38, 8), DecimalType(18, 8))],
    ids=["long-int", "double-float", "decimal-narrower"],
)
def test_a_narrower_source_is_written_widened_without_a_change(old: Any, new: Any) -> None:
    assert planned(schema(("v", old, False)), schema(("v", new, False))) == []


def test_a_required_column_that_became_nullable_is_relaxed() -> None:
    assert planned(schema(("v", LongType(), True)), schema(("v", LongType(), False))) == [("update", "v", ("required", False))]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (LongType(), StringType()),
        (StringType(), LongType()),
        (DecimalType(18, 8), DecimalType(18, 2)),
        (IntegerType(), DoubleType()),
    ],
    ids=["long-string", "string-long", "decimal-scale", "int-double"],
)
def test_any_other_type_change_is_refused_naming_the_column(old: Any, new: Any) -> None:
    with pytest.raises(SchemaError, match=re.escape(f"table trades: column 'v' changed type from {old} to {new}")):
        plan_evolution(schema(("v", old, False)), schema(("v", new, False)), "trades")


def test_a_required_column_dropped_from_the_source_is_refused() -> None:
    with pytest.raises(
        SchemaError, match=r"required column 'seq' \(long\) was dropped from the source; the cursor was not moved"
    ):
        plan_evolution(BASE, schema(("price", DecimalType(18, 8), False), ("qty", FloatType(), False)), "trades")


def test_an_optional_column_dropped_from_the_source_is_kept() -> None:
    assert planned(BASE, schema(("seq", LongType(), True), ("price", DecimalType(18, 8), False))) == []


def test_every_problem_is_reported_at_once() -> None:
    source = schema(("price", StringType(), False), ("qty", FloatType(), False))
    with pytest.raises(SchemaError) as caught:
        plan_evolution(BASE, source, "trades")
    assert "'seq'" in str(caught.value) and "'price' changed type" in str(caught.value)


def test_the_plan_applies_to_a_real_table(tmp_path: Path) -> None:
    """The planned updates are ones PyIceberg accepts: the table then holds the source's schema."""
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path / 'c.db'}", warehouse=f"file://{tmp_path}")
    catalog.create_namespace("n")
    table = catalog.create_table("n.t", schema=schema(("seq", IntegerType(), True), ("qty", FloatType(), False)))
    source = schema(("seq", LongType(), False), ("qty", DoubleType(), False), ("venue", StringType(), False))
    with table.update_schema() as update:
        for change in plan_evolution(table.schema(), source, "t"):
            change(update)
    evolved = {f.name: (f.field_type, f.required) for f in catalog.load_table("n.t").schema().fields}
    assert evolved == {"seq": (LongType(), False), "qty": (DoubleType(), False), "venue": (StringType(), False)}

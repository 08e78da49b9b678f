"""Schema evolution: what a new source schema changes in an existing Iceberg table.

:func:`plan_evolution` allows what Iceberg allows without rewriting data (a new optional
column, int to long, float to double, a wider decimal) and refuses the rest with a
:class:`SchemaError` naming the column.
"""

from __future__ import annotations

from typing import Any

from offloader.errors import (
    SchemaError,
)

_PROMOTIONS = {("int", "long"), ("float", "double")}


def _type_key(t: Any) -> str:
    return str(t).split("(")[0]


def plan_evolution(current: Any, source: Any, table_name: str) -> list[Any]:
    """The schema updates that make ``current`` accept rows of ``source``; SchemaError if none can.

    Columns new in the source are added (optional); int→long, float→double and decimal
    precision widening are promoted; a source type narrower than the table's is written
    widened. A type changed otherwise, or a required column gone from the source, stops
    the table: no silent change.
    """
    from pyiceberg.types import DecimalType

    changes: list[Any] = []
    problems: list[str] = []
    source_fields = {f.name: f for f in source.fields}
    current_fields = {f.name: f for f in current.fields}
    for name, field in current_fields.items():
        if name not in source_fields and field.required:
            problems.append(f"required column {name!r} ({field.field_type}) was dropped from the source")
    for name, field in source_fields.items():
        have = current_fields.get(name)
        if have is None:
            changes.append(lambda u, f=field: u.add_column(f.name, f.field_type, doc=f.doc))
            continue
        if field.required is False and have.required:  # the source column became Nullable
            changes.append(lambda u, n=name: u.update_column(n, required=False))
        old, new = have.field_type, field.field_type
        if old == new:
            continue
        if (_type_key(old), _type_key(new)) in _PROMOTIONS:
            changes.append(lambda u, n=name, t=new: u.update_column(n, field_type=t))
        elif (_type_key(new), _type_key(old)) in _PROMOTIONS:
            continue  # the source narrowed within what the table holds: written widened
        elif isinstance(old, DecimalType) and isinstance(new, DecimalType) and old.scale == new.scale:
            if new.precision > old.precision:
                changes.append(lambda u, n=name, t=new: u.update_column(n, field_type=t))
        else:
            problems.append(f"column {name!r} changed type from {old} to {new}, which Iceberg cannot evolve")
    if problems:
        raise SchemaError(f"table {table_name}: " + "; ".join(problems) + "; the cursor was not moved")
    return changes

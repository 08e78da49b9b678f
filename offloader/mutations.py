"""The corrections a source table records: ``system.mutations``, and what each one touched.

ClickHouse records every ``ALTER TABLE … DELETE/UPDATE`` and every lightweight ``DELETE FROM``
(which it runs as ``UPDATE _row_exists = 0 WHERE …``) in ``system.mutations``, with
``is_done = 1`` once every part holds its result. :func:`listed` reads them in the order
ClickHouse applies them (creation time, then the number in the mutation id). :func:`touched`
reads a command's ``WHERE`` into the time range of the rows it can have changed: bounds on the
cursor's time column, on a function of it (``toDate``, ``toStartOfHour`` …) or on a column
defined as one (:func:`derived`); what it cannot bound is unbounded, and the caller takes the
whole retained range. ``MATERIALIZE TTL`` and the mutations that change no copied value
(indexes, projections, statistics, column type changes) are not corrections.

Lightweight ``UPDATE`` (patch parts) never appears in ``system.mutations``: its one trace is a
``patch-…`` part in ``system.parts`` until merges apply it and drop it.
:func:`newest_patch` reads the greatest block number among them, so that a patch seen is
corrected; one applied and dropped between two cycles leaves no trace
(docs/corrections.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from offloader.cursor import format_time, parse_time
from offloader.ports import Engine
from offloader.ttl import split_top


@dataclass(frozen=True)
class Mutation:
    """One row of ``system.mutations``."""

    mutation_id: str
    created: str  # create_time, UTC text
    command: str
    done: bool
    fail_reason: str = ""

    @property
    def order(self) -> tuple[str, int]:
        """The order ClickHouse applies mutations in: creation time, then the id's number."""
        digits = re.sub(r"\D", "", self.mutation_id)
        return self.created, int(digits or 0)


@dataclass(frozen=True)
class Touched:
    """What one mutation can have changed: nothing (``rows`` False), or the rows with
    ``lo <= time <= hi`` (None: unbounded on that side); ``how`` says why, for the log."""

    rows: bool
    lo: str | None = None
    hi: str | None = None
    how: str = ""


def listed(engine: Engine, database: str, table: str) -> list[Mutation]:
    """The table's mutations that ClickHouse still lists (the last ``finished_mutations_to_keep``
    finished ones, and those under way), in the order it applies them."""
    rows = engine.rows(
        "SELECT mutation_id, toString(create_time, 'UTC'), command, is_done, latest_fail_reason FROM system.mutations"
        " WHERE database = {db:String} AND table = {tbl:String}",
        {"db": database, "tbl": table},
    )
    found = [Mutation(str(i), str(c), str(cmd), bool(d), str(f or "")) for i, c, cmd, d, f in rows]
    return sorted(found, key=lambda m: m.order)


def newest_patch(engine: Engine, database: str, table: str) -> int:
    """The greatest block number among the table's active patch parts (lightweight UPDATE), 0 if none."""
    ((count, newest),) = engine.rows(
        "SELECT count(), max(max_block_number) FROM system.parts WHERE database = {db:String} AND table = {tbl:String}"
        " AND active AND startsWith(name, 'patch-')",
        {"db": database, "tbl": table},
    )
    return int(newest) if count else 0


# A function of the time column whose value bounds it: the width of one step of its value.
_STEPS = {
    "todate": timedelta(days=1),
    "tostartofday": timedelta(days=1),
    "tostartofhour": timedelta(hours=1),
    "tostartofminute": timedelta(minutes=1),
    "tostartofsecond": timedelta(seconds=1),
    "todatetime": timedelta(seconds=1),
    "todatetime64": timedelta(0),
}
_FUNCTION = re.compile(r"^(\w+)\(\s*`?(\w+)`?\s*(,[^()]*)?\)$")


def derived(engine: Engine, database: str, table: str, time_column: str) -> tuple[dict[str, timedelta], bool]:
    """Columns defined as a step function of the time column (``d Date MATERIALIZED toDate(ts)``)
    with their step, and whether the time column is in UTC (literals are read in its zone)."""
    rows = engine.rows(
        "SELECT name, type, default_kind, default_expression FROM system.columns WHERE database = {db:String}"
        " AND table = {tbl:String}",
        {"db": database, "tbl": table},
    )
    steps, utc = {}, True
    for name, ch_type, kind, expression in rows:
        if name == time_column:
            utc = "'UTC'" in str(ch_type)
        match = _FUNCTION.match(str(expression).strip())
        if kind in ("DEFAULT", "MATERIALIZED", "ALIAS") and match and match.group(2) == time_column:
            if match.group(1).lower() in _STEPS:
                steps[str(name)] = _STEPS[match.group(1).lower()]
    return steps, utc


def unwrap(text: str) -> str:
    """``((x))`` → ``x``: the parentheses that enclose the whole text."""
    text = text.strip()
    while text.startswith("(") and text.endswith(")") and len(split_top(text[1:-1], ",")) == 1:
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(text) - 1:
                return text  # ``(a) AND (b)``: the first parenthesis closes early
        text = text[1:-1].strip()
    return text


# Commands that change no value offloader copies: indexes, projections, statistics, schema changes.
_NOT_ROWS = re.compile(r"^(MATERIALIZE|DROP|CLEAR)\s+(INDEX|PROJECTION|STATISTICS?)\b|^(MODIFY|DROP|RENAME)\s+COLUMN\b", re.I)


def touched(command: str, time_column: str, steps: dict[str, timedelta] | None = None, *, utc: bool = True) -> Touched:
    """The time range one mutation's command can have changed (several commands: their span)."""
    found = [_one(unwrap(c), time_column, steps or {}, utc) for c in split_top(unwrap(command), ",")]
    changing = [t for t in found if t.rows]
    if not changing:
        return Touched(False, how="; ".join(t.how for t in found))
    lo = None if any(t.lo is None for t in changing) else min(t.lo for t in changing if t.lo is not None)
    hi = None if any(t.hi is None for t in changing) else max(t.hi for t in changing if t.hi is not None)
    return Touched(True, lo, hi, "; ".join(t.how for t in changing))


def _one(command: str, time_column: str, steps: dict[str, timedelta], utc: bool) -> Touched:
    upper = re.sub(r"\s+", " ", command.upper())
    if upper.startswith("MATERIALIZE TTL"):
        return Touched(False, how="MATERIALIZE TTL: a TTL merge, not a correction")
    if _NOT_ROWS.match(upper):
        return Touched(False, how=f"{command.split(' ', 2)[0]} …: changes no copied value")
    head, *where = split_top(command, "WHERE")
    if not upper.startswith(("DELETE", "UPDATE")) or len(where) != 1:
        return Touched(True, how=f"{command[:40]}: cannot be bounded, the whole retained range")
    if upper.startswith("UPDATE"):
        assigned = {unwrap(a.split("=", 1)[0]).strip("` ") for a in split_top(head[len("UPDATE") :], ",")}
        if time_column in assigned:
            return Touched(True, how=f"UPDATE of {time_column} moves rows: the whole retained range")
    lo, hi = _bounds(where[0], time_column, steps)
    hi = None if hi is None else hi + timedelta(microseconds=1)  # a literal finer than Iceberg's microseconds
    if not utc:  # a literal read in the column's own time zone: widened by the widest offset
        lo = None if lo is None else lo - timedelta(hours=14)
        hi = None if hi is None else hi + timedelta(hours=14)
    how = "the WHERE bounds the time column" if lo is not None or hi is not None else "the WHERE does not bound the time"
    return Touched(True, _text(lo), _text(hi), how)


Bounds = tuple[datetime | None, datetime | None]


def _bounds(expr: str, column: str, steps: dict[str, timedelta]) -> Bounds:
    expr = unwrap(expr)
    alternatives = split_top(expr, "OR")
    if len(alternatives) > 1:  # the span of the alternatives
        spans = [_bounds(a, column, steps) for a in alternatives]
        los, his = [s[0] for s in spans], [s[1] for s in spans]
        return (None if None in los else min(x for x in los if x)), (None if None in his else max(x for x in his if x))
    conjuncts = split_top(expr, "AND")
    if len(conjuncts) > 1:  # the intersection of the conditions
        spans = [_bounds(c, column, steps) for c in conjuncts]
        los_, his_ = [s[0] for s in spans if s[0]], [s[1] for s in spans if s[1]]
        return (max(los_) if los_ else None), (min(his_) if his_ else None)
    return _leaf(expr, column, steps)


_COMPARE = re.compile(r"^(.+?)\s*(>=|<=|==|!=|<>|=|>|<)\s*(.+)$", re.DOTALL)
_FLIP = {">=": "<=", "<=": ">=", ">": "<", "<": ">", "=": "=", "==": "="}


def _leaf(expr: str, column: str, steps: dict[str, timedelta]) -> Bounds:
    match = _COMPARE.match(expr)
    if not match:
        return None, None
    left, op, right = match.group(1).strip(), match.group(2), match.group(3).strip()
    step = _step(left, column, steps)
    if step is None:
        step, left, right, op = _step(right, column, steps), right, left, _FLIP.get(op, op)
    value = _literal(right)
    if step is None or value is None or op in ("!=", "<>"):
        return None, None
    if op in ("=", "=="):
        return value, value + step
    if op in (">", ">="):
        return value, None
    return None, value + step


def _step(side: str, column: str, steps: dict[str, timedelta]) -> timedelta | None:
    """How far the time can be from the value of ``side``: 0 for the column, a step for a function of it."""
    name = unwrap(side).strip("`")
    if name == column:
        return timedelta(0)
    if name in steps:
        return steps[name]
    match = _FUNCTION.match(unwrap(side))
    if match and match.group(2) == column and match.group(1).lower() in _STEPS:
        return _STEPS[match.group(1).lower()]
    return None


_SHIFT = re.compile(r"^(.+?)\s*([+-])\s*toInterval(Second|Minute|Hour|Day|Week)\(\s*(\d+)\s*\)$", re.I)
_UNITS = {"second": "seconds", "minute": "minutes", "hour": "hours", "day": "days", "week": "weeks"}
_QUOTED = re.compile(r"^'(\d{4}-\d\d-\d\d(?:[ T]\d\d:\d\d:\d\d(?:\.\d+)?)?)'$")


def _literal(text: str) -> datetime | None:
    """A time literal as ClickHouse prints it: ``'2026-01-02 03:04:05'``, ``toDateTime64('…', 6)``, a Unix time."""
    text = unwrap(text)
    shifted = _SHIFT.match(text)
    if shifted:  # ``literal ± toIntervalHour(n)``, as ClickHouse prints ``literal + INTERVAL n HOUR``
        base = _literal(shifted.group(1))
        amount = timedelta(**{_UNITS[shifted.group(3).lower()]: int(shifted.group(4))})
        return None if base is None else base + amount if shifted.group(2) == "+" else base - amount
    call = re.match(r"^(toDateTime64|toDateTime|toDate)\(\s*('[^']*')\s*(?:,\s*\d+\s*)?(?:,\s*'([^']*)'\s*)?\)$", text, re.I)
    if call:  # a literal in another time zone is not read: unbounded
        return _literal(call.group(2)) if call.group(3) in (None, "UTC") else None
    if re.fullmatch(r"\d{1,10}", text):
        return datetime.fromtimestamp(int(text), UTC)
    quoted = _QUOTED.match(text)
    if not quoted:
        return None
    value = quoted.group(1).replace("T", " ")
    return parse_time(value if " " in value else f"{value} 00:00:00")


def _text(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)

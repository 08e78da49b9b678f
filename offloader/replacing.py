"""Corrections through a ReplacingMergeTree (``corrections = "replacing"``): Iceberg holds ``FINAL``.

A correction is a new source row with the same sorting key, a higher version and a new
ingestion time past the cursor (``is_deleted = 1`` for a delete). Each window then:

1. finds the **winners** of the keys it touches: for every key with a row in the window,
   the newest row (greatest version, then greatest cursor tuple) among the rows up to the
   window's end; a key whose winner lies in the window changes, the others do not (an older
   version arriving late loses to the newer one already offloaded);
2. writes the winners that are not deleted, and counts them in ClickHouse with the same
   query (the window's verification);
3. rewrites, copy-on-write, the Iceberg files holding an older copy of a changed key
   without it (``WindowWrite.replaced_keys``), and commits the new files, the rewritten
   files and the marker in ONE snapshot: a crash leaves the old state or the new, never
   both copies, never neither.

By induction Iceberg equals ``SELECT … FROM t FINAL`` over the rows up to the cursor, so a
settled table equals the source's ``FINAL`` (deleted rows excluded). The key, version and
is_deleted columns are checked against ``system.tables`` when the table is first opened.
See docs/corrections-replacing.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from offloader.config import TableConfig
from offloader.cursor import Window
from offloader.errors import ConfigError, SchemaError
from offloader.ports import Engine, KeyedRewrite, WindowWrite
from offloader.results import WindowResult
from offloader.source import TS_PARAM, Source, quote
from offloader.ttl import split_top

REPLACING_ENGINE = re.compile(r"^(Replicated|Shared)?ReplacingMergeTree$")
PLAIN_COLUMN = re.compile(r"^`?([A-Za-z_][A-Za-z0-9_]*)`?$")
REWRITTEN_KEY = "offloader.rewritten-rows"  # rows carried over from rewritten files (the cost)
REMOVED_KEY = "offloader.removed-rows"  # superseded or deleted rows removed from Iceberg
SCANNED_KEY = "offloader.scanned-files"  # files read to find the older copies


class Steps(Protocol):
    """What a correction window needs of :class:`offloader.window.Windows`."""

    source: Source
    plans: list[Any]

    def write(
        self, window: Window, batches: Iterator[pa.RecordBatch] | None = None,
        sift: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
    ) -> WindowWrite: ...  # fmt: skip
    def verify(self, tx: WindowWrite, expected: int, window: Window) -> None: ...
    def marker(self, cursor: list[Any], rows: int, hi: str, **extra: str) -> dict[str, str]: ...
    def commit(self, tx: WindowWrite, marker: dict[str, str], replaced: Iterable[Any] = ()) -> int: ...
    def settle(self, tx: WindowWrite, snapshot_id: int, cursor: list[Any], window_hi: str) -> WindowResult: ...


def unchecked(table: TableConfig, what: str = "the consistency check (and its repair)") -> str:
    """Why an operation that compares or copies raw source rows does not run on this table."""
    return (
        f'tables.{table.name}.corrections = "replacing": {what} compares or copies raw source rows, not FINAL ones, '
        "so it does not run on this table; `offloader once` keeps it equal to FINAL"
    )


def refuse(table: TableConfig, what: str) -> None:
    """Refuse an operation that would copy raw rows of a ``corrections = "replacing"`` table."""
    if table.corrections == "replacing":
        raise ConfigError(unchecked(table, what))


def engine_columns(engine_full: str) -> list[str]:
    """The column parameters of ``ReplacingMergeTree(ver[, is_deleted])`` (a Replicated engine's
    path and replica strings left out), from ``system.tables.engine_full``."""
    match = re.match(r"^\s*\w+\s*\(", engine_full)
    if not match:
        return []
    depth, end = 1, match.end()
    while end < len(engine_full) and depth:
        depth += {"(": 1, ")": -1}.get(engine_full[end], 0)
        end += 1
    args = split_top(engine_full[match.end() : end - 1])
    return [m.group(1) for a in args if (m := PLAIN_COLUMN.match(a))]


@dataclass(frozen=True)
class ReplacingKey:
    """The ReplacingMergeTree's key (its sorting key), version and is_deleted columns."""

    key: tuple[str, ...]
    version: str
    deleted: str | None

    @classmethod
    def discover(cls, engine: Engine, table: TableConfig, types: dict[str, str]) -> ReplacingKey:
        """Read ``system.tables`` and check the table's config against it: a SchemaError names the key."""
        label = f"tables.{table.name}"
        rows = engine.rows(
            "SELECT engine, engine_full, sorting_key FROM system.tables WHERE database = {db:String} AND name = {tbl:String}",
            {"db": table.source_database, "tbl": table.source_table},
        )
        if not rows:
            raise SchemaError(f"{label}.source: {table.source} does not exist")
        name, full, sorting = (str(v) for v in rows[0])
        if not REPLACING_ENGINE.match(name):
            raise SchemaError(
                f'{label}.corrections = "replacing": {table.source} is a {name}, not a ReplacingMergeTree '
                "(a Distributed table is not read: point source at the ReplacingMergeTree itself)"
            )
        params = engine_columns(full)
        version, deleted = (params + [None, None])[:2]
        if version != table.version_column:
            declared = f"declares version column {version}" if version else "declares no version column"
            raise SchemaError(
                f"{label}.version_column = {table.version_column!r}: {table.source} {declared} "
                f"(engine {full.split(' ORDER BY')[0]}); the version must be the engine's"
            )
        if deleted != table.deleted_column:
            declared = f"declares is_deleted column {deleted}" if deleted else "declares no is_deleted column"
            raise SchemaError(
                f"{label}.deleted_column = {table.deleted_column!r}: {table.source} {declared} "
                f"(engine {full.split(' ORDER BY')[0]}); FINAL drops the rows it marks, so it must be the engine's"
            )
        key = []
        for item in split_top(sorting):
            match = PLAIN_COLUMN.match(item)
            if not match or match.group(1) not in types:
                raise SchemaError(
                    f'{label}.corrections = "replacing": the sorting key of {table.source} is ({sorting}); '
                    f"{item!r} is not a column, and the key must be plain columns"
                )
            if types[match.group(1)].startswith(("Nullable(", "LowCardinality(Nullable(")):
                raise SchemaError(f'{label}.corrections = "replacing": key column {match.group(1)} is Nullable')
            key.append(match.group(1))
        if not key:
            raise SchemaError(f'{label}.corrections = "replacing": {table.source} has an empty sorting key')
        return cls(tuple(key), str(version), deleted)


class Replacing:
    """The correction windows of one ``corrections = "replacing"`` table."""

    def __init__(self, table: TableConfig, source: Source, columns: list[tuple[str, str]]) -> None:
        self.table = table
        self.source = source
        self.spec = ReplacingKey.discover(source.engine, table, dict(columns))
        keys = ", ".join(quote(k) for k in self.spec.key)
        order = ", ".join([keys, f"{quote(self.spec.version)} DESC", *(f"{quote(c)} DESC" for c in source.cursor)])
        every = ", ".join(quote(name) for name, _ in columns)
        self._keys, self._order, self._every = keys, order, every

    def winners_sql(self, select: str, window: Window) -> tuple[str, dict[str, Any]]:
        """``select`` over the winners of the window's keys that lie in the window."""
        where, params = self.source._where(window)
        rel, keys, time_col = self.source.relation, self._keys, quote(self.source.cursor[0])
        winners = (
            f"SELECT {self._every} FROM {rel} WHERE {time_col} <= {{hi:{TS_PARAM}}}"
            f" AND ({keys}) IN (SELECT {keys} FROM {rel} WHERE {where})"
            f" ORDER BY {self._order} LIMIT 1 BY {keys}"
        )
        return f"SELECT {select} FROM ({winners}) WHERE {where}", params

    def expected(self, window: Window) -> int:
        """The rows the window must write: its winners that are not deleted, counted in ClickHouse."""
        gone = f"countIf({quote(self.spec.deleted)} != 0)" if self.spec.deleted else "0"
        sql, params = self.winners_sql(f"count(), {gone}", window)
        ((count, deleted),) = self.source.engine.rows(sql, params)
        return int(count) - int(deleted)

    def append(self, steps: Steps, window: Window) -> WindowResult | None:
        """One correction window in one commit; None when the window holds no row."""
        stats = self.source.stats(window)  # every row of the window moves the cursor, winner or not
        if stats.rows == 0 or stats.last is None:
            return None
        expected = self.expected(window)
        keys: list[pa.RecordBatch] = []

        def sift(batch: pa.RecordBatch) -> pa.RecordBatch:
            keys.append(batch.select(list(self.spec.key)))
            if self.spec.deleted is None:
                return batch
            return batch.filter(pc.equal(batch.column(self.spec.deleted), 0))

        sql, params = self.winners_sql(", ".join(p.select_sql for p in steps.plans), window)
        tx = steps.write(window, self.source.engine.stream(sql, params), sift)
        steps.verify(tx, expected, window)
        try:
            done = tx.replaced_keys(pa.Table.from_batches(keys)) if keys else KeyedRewrite(replaced=[])
        except BaseException:
            tx.discard()
            raise
        cursor = stats.last.to_json()
        cost = {REWRITTEN_KEY: str(done.kept), REMOVED_KEY: str(done.removed), SCANNED_KEY: str(done.scanned)}
        snapshot_id = steps.commit(tx, steps.marker(cursor, expected, window.hi, **cost), done.replaced)
        return steps.settle(tx, snapshot_id, cursor, window.hi)

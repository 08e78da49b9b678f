"""The offload queries against one source table, as reviewable SQL text.

:class:`Source` sends them through an :class:`~offloader.ports.Engine` (``clickhouse``).
Identifiers come from validated config and are quoted; every value travels as a server-side query parameter (``{name:Type}``).

Windows are defined on the table's cursor: its first column is a DateTime/DateTime64 (the
time axis), the others break ties. A window takes the rows strictly after the committed
cursor tuple and at or before an inclusive upper bound on the time column, so rows that
share one timestamp always fall into the same window.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from offloader.cursor import Cursor, Window, WindowStats, format_time, parse_time, time_key
from offloader.errors import SchemaError
from offloader.ports import Engine
from offloader.ttl import delete_ttls

TS_PARAM = "DateTime64(9, 'UTC')"
_TIME_TYPE = re.compile(r"^(DateTime64\(\s*(\d)\s*(,.*)?\)|DateTime(\(.*\))?)$")


def quote(identifier: str) -> str:
    """Quote a ClickHouse identifier with backticks, escaping what needs escaping."""
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"


def strip_wrappers(ch_type: str) -> str:
    """``LowCardinality(X)`` → ``X``; used for the types of query parameters."""
    match = re.match(r"^LowCardinality\((.*)\)$", ch_type)
    return match.group(1) if match else ch_type


def read_ahead(batches: Iterator[pa.RecordBatch], depth: int = 8) -> Iterator[pa.RecordBatch]:
    """Pull ``batches`` in a thread of its own, ``depth`` batches ahead of the consumer.

    Reading from ClickHouse and writing Parquet then overlap on two cores. Memory stays
    bounded by ``depth`` batches; an error in the reader is raised in the consumer, and a
    consumer that stops early stops the reader.
    """
    import queue

    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def pump() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        buffer.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer
            buffer.put(exc)
            return
        finally:
            close = getattr(batches, "close", None)
            if close is not None and stop.is_set():
                close()
        buffer.put(done)

    thread = threading.Thread(target=pump, name="offloader-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.05)


class Source:
    """The offload queries against one source table."""

    def __init__(self, engine: Engine, database: str, table: str, cursor: Sequence[str]) -> None:
        self.engine = engine
        self.database = database
        self.table = table
        self.cursor = tuple(cursor)
        self.relation = f"{quote(database)}.{quote(table)}"
        self._types: dict[str, str] = {}

    # -- schema --------------------------------------------------------------------------

    def columns(self) -> list[tuple[str, str]]:
        """(name, type) of the table's stored columns, in order; validates the cursor columns."""
        rows = self.engine.rows(
            "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {tbl:String}"
            " AND default_kind NOT IN ('ALIAS', 'EPHEMERAL') ORDER BY position",
            {"db": self.database, "tbl": self.table},
        )
        if not rows:
            raise SchemaError(f"source table {self.database}.{self.table} does not exist or has no columns")
        columns = [(str(name), str(ch_type)) for name, ch_type in rows]
        self._types = dict(columns)
        self._check_cursor()
        return columns

    def _check_cursor(self) -> None:
        missing = [c for c in self.cursor if c not in self._types]
        if missing:
            raise SchemaError(
                f"cursor column(s) {', '.join(missing)} not found in {self.database}.{self.table}; "
                f"columns: {', '.join(self._types)}"
            )
        time_type = strip_wrappers(self._types[self.cursor[0]])
        if not _TIME_TYPE.match(time_type):
            raise SchemaError(
                f"cursor column {self.cursor[0]} of {self.database}.{self.table} is {time_type}; "
                "the first cursor column must be DateTime or DateTime64"
            )
        for name in self.cursor:
            if self._types[name].startswith(("Nullable(", "LowCardinality(Nullable(")):
                raise SchemaError(f"cursor column {name} of {self.database}.{self.table} is Nullable; cursor columns must not be")

    def _param_type(self, name: str) -> str:
        if not self._types:
            self.columns()
        return TS_PARAM if name == self.cursor[0] else strip_wrappers(self._types[name])

    # -- clock and bounds ----------------------------------------------------------------

    def server_now(self) -> datetime:
        """The ClickHouse server's clock (never the host's)."""
        return server_now(self.engine)

    def _where(self, window: Window) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"hi": window.hi}
        time_col = quote(self.cursor[0])
        clauses = [f"{time_col} <= {{hi:{TS_PARAM}}}"]
        if window.lo is not None:
            params["c0"] = window.lo.time
            if window.inclusive:
                clauses.append(f"{time_col} >= {{c0:{TS_PARAM}}}")
            else:
                clauses.append(f"{time_col} >= {{c0:{TS_PARAM}}}")
                cols = ", ".join(quote(c) for c in self.cursor)
                for i, value in enumerate(window.lo.values[1 : len(self.cursor)], start=1):
                    params[f"c{i}"] = value
                vals = ", ".join(f"{{c{i}:{self._param_type(c)}}}" for i, c in enumerate(self.cursor))
                whole = len(self.cursor) > 1 and len(window.lo.values) == len(self.cursor)
                # a cursor of the time alone (after a reset) is exclusive on the time column
                clauses.append(f"({cols}) > ({vals})" if whole else f"{time_col} > {{c0:{TS_PARAM}}}")
        return " AND ".join(clauses), params

    def backlog(self, lo: Cursor | None, hi: str, inclusive: bool = False) -> tuple[int, str | None]:
        """Rows waiting between ``lo`` and ``hi``, and the earliest time among them."""
        where, params = self._where(Window(lo, hi, inclusive))
        time_col = quote(self.cursor[0])
        ((count, first),) = self.engine.rows(
            f"SELECT count(), toString(min({time_col}), 'UTC') FROM {self.relation} WHERE {where}", params
        )
        return int(count), (str(first) if count else None)

    def first_pending(self, lo: Cursor | None, hi: str, inclusive: bool = False) -> str | None:
        """The earliest time among the rows waiting between ``lo`` and ``hi``, if any.

        Read in key order with LIMIT 1, so that on a table sorted by its time column the
        next window is found without scanning the rest of the backlog.
        """
        return self._time_at(Window(lo, hi, inclusive), 0)

    def _time_at(self, window: Window, offset: int) -> str | None:
        """The time of the window's row ``offset`` (from 0) in time order, if it has that many."""
        where, params = self._where(window)
        time_col = quote(self.cursor[0])
        rows = self.engine.rows(
            f"SELECT toString({time_col}, 'UTC') FROM {self.relation} WHERE {where} "
            f"ORDER BY {time_col} LIMIT 1 OFFSET {int(offset)}",
            params,
        )
        return str(rows[0][0]) if rows else None

    def newest_time(self, since: str | None = None) -> str | None:
        """The newest time-column value in the source (for the lag metric).

        ``since`` (the committed cursor time) bounds the scan, so that the primary key
        index keeps it cheap on a big table; with no row after it, the answer is ``since``.
        """
        time_col = quote(self.cursor[0])
        where, params = (f" WHERE {time_col} >= {{since:{TS_PARAM}}}", {"since": since}) if since else ("", {})
        ((count, newest),) = self.engine.rows(
            f"SELECT count(), toString(max({time_col}), 'UTC') FROM {self.relation}{where}", params
        )
        return str(newest) if count else since

    def window_end(self, first: str, max_window: float, hi: str, *, max_rows: int | None = None, lo: Cursor | None = None) -> str:
        """The inclusive end of a window starting at ``first``: no longer than ``max_window``
        and, with ``max_rows``, ending at the time of the ``max_rows``-th row after ``lo``
        (``first`` itself when ``lo`` is None) in time order.

        The end is a time and the window takes every row at it, so rows that share a cursor
        time are never split: a window exceeds ``max_rows`` only by the ties of its last time.
        """
        end = min(format_time(parse_time(first) + timedelta(seconds=max_window)), hi, key=time_key)
        if max_rows is None:
            return end
        bounded = Window(lo, end) if lo is not None else Window(Cursor((first,)), end, inclusive=True)
        return self._time_at(bounded, max_rows - 1) or end

    def last_at_or_before(self, moment: str) -> Cursor | None:
        """The greatest cursor tuple whose time is at or before ``moment`` (read in key order)."""
        order = ", ".join(f"{quote(c)} DESC" for c in self.cursor)
        parts = ", ".join(f"toString({quote(c)}, 'UTC')" if i == 0 else quote(c) for i, c in enumerate(self.cursor))
        rows = self.engine.rows(
            f"SELECT {parts} FROM {self.relation} WHERE {quote(self.cursor[0])} <= {{t:{TS_PARAM}}} ORDER BY {order} LIMIT 1",
            {"t": moment},
        )
        return Cursor(tuple(rows[0])) if rows else None

    # -- TTL ---------------------------------------------------------------------------

    def ttl_deadline(self) -> str | None:
        """The expression of when a row's TTL deletes it (the earliest of the table's row-deleting
        ``TTL`` rules), or None when the table has none."""
        rows = self.engine.rows(
            "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {tbl:String}",
            {"db": self.database, "tbl": self.table},
        )
        ttls = delete_ttls(str(rows[0][0])) if rows else []
        if not ttls:
            return None
        return ttls[0] if len(ttls) == 1 else f"least({', '.join(ttls)})"

    def ttl_headroom(self, lo: Cursor | None) -> float | None:
        """Seconds before the TTL deletes the oldest row after ``lo``; inf when none waits, None without a TTL."""
        expr = self.ttl_deadline()
        if expr is None:
            return None
        where, params = self._where(Window(lo, "2261-12-31 23:59:59.999999"))
        ((count, seconds),) = self.engine.rows(
            f"SELECT count(), min(toUnixTimestamp(toDateTime({expr}))) - toUnixTimestamp(now()) FROM {self.relation}"
            f" WHERE {where}",
            params,
        )
        return float("inf") if not count else float(seconds)

    def oldest_kept(self, grace: float) -> tuple[str | None, bool]:
        """The oldest time whose rows the TTL keeps for at least ``grace`` seconds more (all rows
        without a TTL), and whether the table has a TTL."""
        expr = self.ttl_deadline()
        time_col = quote(self.cursor[0])
        where = "" if expr is None else f" WHERE toDateTime({expr}) > now() + toIntervalSecond({int(grace)})"
        ((count, oldest),) = self.engine.rows(f"SELECT count(), toString(min({time_col}), 'UTC') FROM {self.relation}{where}")
        return (str(oldest) if count else None), expr is not None

    def bucket_sums(self, select: str, lo: str, hi: str) -> list[tuple[Any, ...]]:
        """``select`` (bucket, count, checksum …) over the rows with ``lo <= time <= hi``, grouped by bucket."""
        time_col = quote(self.cursor[0])
        return self.engine.rows(
            f"SELECT {select} FROM {self.relation} WHERE {time_col} >= {{lo:{TS_PARAM}}} AND {time_col} <= {{hi:{TS_PARAM}}}"
            " GROUP BY bucket ORDER BY bucket",
            {"lo": lo, "hi": hi},
        )

    # -- one window ----------------------------------------------------------------------

    def stats(self, window: Window) -> WindowStats:
        """count() of the window and the greatest cursor tuple in it, in one scan."""
        where, params = self._where(window)
        cols = ", ".join(quote(c) for c in self.cursor)
        parts = ", ".join(
            f"toString(tupleElement(m, {i + 1}), 'UTC')" if i == 0 else f"tupleElement(m, {i + 1})"
            for i in range(len(self.cursor))
        )
        sql = f"SELECT n, {parts} FROM (SELECT count() AS n, max(tuple({cols})) AS m FROM {self.relation} WHERE {where})"
        ((count, *last),) = self.engine.rows(sql, params)
        return WindowStats(rows=int(count), last=Cursor(tuple(last)) if count else None)

    def read(self, window: Window, select: Sequence[str]) -> Iterator[pa.RecordBatch]:
        """Stream the window's rows as Arrow record batches."""
        where, params = self._where(window)
        sql = f"SELECT {', '.join(select)} FROM {self.relation} WHERE {where}"
        return self.engine.stream(sql, params)


def server_now(engine: Engine) -> datetime:
    """The ClickHouse server's clock (never the host's)."""
    (row,) = engine.rows("SELECT toString(now64(6, 'UTC'))")
    return parse_time(row[0])

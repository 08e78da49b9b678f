"""The ClickHouse adapter: every query offloader sends to the warm tier lives here.

Two engines serve the same interface: a remote server over HTTP through clickhouse-connect
(``http(s)://``), and the ClickHouse engine embedded in-process through chDB (``chdb://``),
whose own ArrowStream API streams with flat memory. Above the engines, :class:`Source` holds
the offload queries as reviewable SQL text: identifiers come from validated config and are
quoted; every value travels as a server-side query parameter (``{name:Type}``).

Windows are defined on the table's cursor: its first column is a DateTime/DateTime64 (the
time axis), the others break ties. A window takes the rows strictly after the committed
cursor tuple and at or before an inclusive upper bound on the time column, so rows that
share one timestamp always fall into the same window.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from offloader.config import SourceConfig
from offloader.errors import AuthenticationError, ConfigError, OffloaderError, SchemaError, SourceError, first_line
from offloader.faults import fail
from offloader.ports import Engine

# ClickHouse error codes of a refused login: UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD,
# AUTHENTICATION_FAILED. Trying again with the same credentials cannot help. (ACCESS_DENIED, 497,
# is a missing grant of a user that did log in: a SourceError like any other failed query.)
AUTH_FAILED_CODES = frozenset({192, 193, 194, 516})
TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
TS_PARAM = "DateTime64(9, 'UTC')"
_TIME_TYPE = re.compile(r"^(DateTime64\(\s*(\d)\s*(,.*)?\)|DateTime(\(.*\))?)$")


def quote(identifier: str) -> str:
    """Quote a ClickHouse identifier with backticks, escaping what needs escaping."""
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"


def strip_wrappers(ch_type: str) -> str:
    """``LowCardinality(X)`` → ``X``; used for the types of query parameters."""
    match = re.match(r"^LowCardinality\((.*)\)$", ch_type)
    return match.group(1) if match else ch_type


# Why something that needs chDB cannot run, after "... needs the embedded ClickHouse engine: ".
NO_EMBEDDED_ENGINE = "chDB is not installed here (the slim image leaves it out); use the full image or `pip install chdb`"


def embedded_engine_available() -> bool:
    """Whether chDB, the embedded ClickHouse engine, is installed (the slim image has none)."""
    return importlib.util.find_spec("chdb") is not None


class ChdbEngine:
    """The ClickHouse engine embedded in this process (chDB) on a data directory."""

    def __init__(self, path: str) -> None:
        if not embedded_engine_available():
            raise ConfigError(f"source.dsn = 'chdb://{path}' needs the embedded ClickHouse engine: {NO_EMBEDDED_ENGINE}")
        import chdb

        self.path = path
        self._lock = threading.RLock()
        try:
            self._conn = chdb.connect(path)
            _EMBEDDED_PATH.append(path)
        except Exception as exc:  # chDB raises plain RuntimeErrors
            raise SourceError(f"cannot open the embedded ClickHouse data directory {path!r}: {exc}") from exc

    def _query(self, sql: str, fmt: str, params: dict[str, Any] | None) -> Any:
        try:
            with self._lock:
                return self._conn.query(sql, fmt, params=_param_strings(params))
        except Exception as exc:
            raise SourceError(f"ClickHouse query failed: {first_line(exc)}") from exc

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return _arrow_file_rows(self._query(sql, "Arrow", params).bytes())

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._query(sql, "CSV", params)

    def stream(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream on a handle of its own: chDB runs one streaming query per handle at a time."""
        import chdb

        try:
            conn = chdb.connect(self.path)
            result = conn.send_query(sql, "ArrowStream", params=_param_strings(params))
        except Exception as exc:
            raise SourceError(f"ClickHouse query failed: {first_line(exc)}") from exc
        try:
            for chunk in result:
                data = chunk.bytes()
                if data:
                    yield from pa.ipc.open_stream(pa.py_buffer(data))
        except Exception as exc:
            raise SourceError(f"ClickHouse stream failed: {first_line(exc)}") from exc
        finally:
            try:
                result.cancel()
            except Exception:  # noqa: S110 - the stream is already finished or broken
                pass
            conn.close()

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:  # noqa: S110 - closing twice is harmless
            pass


_EMBEDDED_PATH: list[str] = []  # the data directory chDB was started on in this process


def local_arrow_rows(sql: str, arrow_input: pa.Table) -> list[tuple[Any, ...]]:
    """Run ``sql`` on the embedded ClickHouse engine over ``arrow_input`` (``Python(arrow_input)``).

    Used to compute on the Iceberg side exactly what the source computes (checksums). chDB
    runs one embedded server per process, on the data directory it was first opened with.
    """
    if not embedded_engine_available():
        raise SourceError(
            f"the consistency check needs the embedded ClickHouse engine for Iceberg's checksums: {NO_EMBEDDED_ENGINE}"
        )
    import chdb

    paths = _EMBEDDED_PATH[-1:] or [":memory:"]
    try:
        try:
            conn = chdb.connect(paths[0])
        except Exception as exc:
            match = re.search(r"initialized with path '([^']*)'", str(exc))
            if match is None:
                raise
            conn = chdb.connect(match.group(1))
        try:
            data = conn.query(sql, "Arrow").bytes()
        finally:
            conn.close()
    except Exception as exc:
        raise SourceError(f"the embedded ClickHouse engine failed on Iceberg rows: {first_line(exc)}") from exc
    return _arrow_file_rows(data)


def _arrow_file_rows(data: bytes) -> list[tuple[Any, ...]]:
    """The rows of a result in the Arrow file format, as tuples."""
    if not data:
        return []
    return _table_rows(pa.ipc.open_file(pa.py_buffer(data)).read_all())


def _table_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return list(zip(*(col.to_pylist() for col in table.columns), strict=True)) if table.num_columns else []


class HttpEngine:
    """A remote ClickHouse server over HTTP, through clickhouse-connect."""

    def __init__(self, config: SourceConfig) -> None:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import ClickHouseError

        self._errors = (ClickHouseError, OSError)
        parts = urlsplit(config.dsn)
        kwargs: dict[str, Any] = {
            "dsn": config.dsn,
            "send_receive_timeout": int(config.query_timeout),
            "connect_timeout": 10,
            "query_retries": 0,
            "compress": "lz4" if parts.hostname not in {"127.0.0.1", "localhost"} else False,
            "autogenerate_session_id": False,
            "settings": dict(config.settings),
        }
        if config.user:
            kwargs["username"] = config.user
        if config.password is not None:
            kwargs["password"] = config.password.reveal()
        self.display = config.display_dsn
        fail("source_connect")
        try:
            self._client = clickhouse_connect.get_client(**kwargs)
        except Exception as exc:
            raise self._failure(f"cannot connect to ClickHouse at {self.display}", exc) from exc

    def _failure(self, what: str, exc: Exception) -> OffloaderError:
        """The error to raise for a clickhouse-connect failure: a refused login is never retried."""
        if getattr(exc, "code", None) in AUTH_FAILED_CODES:
            return AuthenticationError(f"authentication failed at {self.display}: {first_line(exc)}")
        return SourceError(f"{what}: {first_line(exc)}")

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            table = self._client.query_arrow(sql, parameters=params or {})
        except Exception as exc:
            raise self._failure(f"ClickHouse query failed ({self.display})", exc) from exc
        return _table_rows(table)

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        try:
            self._client.command(sql, parameters=params or {})
        except Exception as exc:
            raise self._failure(f"ClickHouse command failed ({self.display})", exc) from exc

    def stream(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[pa.RecordBatch]:
        try:
            with self._client.query_arrow_stream(sql, parameters=params or {}) as stream:
                for table in stream:
                    yield from (table.to_batches() if isinstance(table, pa.Table) else [table])
        except Exception as exc:
            raise self._failure(f"ClickHouse stream failed ({self.display})", exc) from exc

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: S110
            pass


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


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0", "'": "\\'"})


def _param_strings(params: dict[str, Any] | None) -> dict[str, Any]:
    """Query parameters as chDB takes them: text escaped the way the server parses it.

    Over HTTP clickhouse-connect does this; chDB takes the text as is, so a backslash, tab
    or newline in a value would otherwise be read differently by the two engines.
    """
    out: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            value = str(value).translate(_ESCAPES)
        out[key] = value
    return out


_TTL_MOVES = re.compile(r"\b(TO\s+(DISK|VOLUME)|RECOMPRESS|GROUP\s+BY)\b", re.IGNORECASE)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside parentheses and quotes."""
    parts, depth, quote_char, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote_char:
            if ch == quote_char and text[i - 1] != "\\":
                quote_char = ""
        elif ch in "'`\"":
            quote_char = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def delete_ttls(engine_full: str) -> list[str]:
    """The expressions of a table's row-deleting TTL rules, from ``system.tables.engine_full``."""
    match = re.search(r"\sTTL\s(.*?)(\sSETTINGS\s.*)?$", engine_full, re.DOTALL)
    if not match:
        return []
    out = []
    for rule in _split_top(match.group(1)):
        if _TTL_MOVES.search(rule):
            continue
        rule = re.split(r"\s+DELETE\b", rule, maxsplit=1, flags=re.IGNORECASE)[0].strip()
        if rule:
            out.append(rule)
    return out


def connect(config: SourceConfig) -> Engine:
    """Open the engine the DSN names: chDB for ``chdb://``, HTTP otherwise."""
    if config.embedded:
        path = config.dsn[len("chdb://") :] or ":memory:"
        return ChdbEngine(path)
    return HttpEngine(config)


# ---------------------------------------------------------------------------------------
# Windows and the offload queries


@dataclass(frozen=True)
class Cursor:
    """A position in a table: the last (time, tie-breakers…) tuple committed.

    ``values[0]`` is the time column rendered in UTC as text (``YYYY-MM-DD hh:mm:ss[.f…]``),
    the rest are the tie-breaker values as ClickHouse returned them.
    """

    values: tuple[Any, ...]

    @property
    def time(self) -> str:
        return str(self.values[0])

    def to_json(self) -> list[Any]:
        return list(self.values)

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> Cursor:
        return cls(tuple(data))

    def sort_key(self) -> tuple[Any, ...]:
        return (_normalise_time(self.time), *self.values[1:])


def _normalise_time(text: str) -> str:
    """Pad the fraction to nine digits so text comparison orders instants."""
    head, _, frac = text.partition(".")
    return f"{head}.{frac.ljust(9, '0')}"


def parse_time(text: str) -> datetime:
    head, _, frac = text.partition(".")
    return datetime.strptime(f"{head}.{(frac or '0')[:6].ljust(6, '0')}", TS_FORMAT).replace(tzinfo=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(text: str) -> int:
    """A UTC time text as microseconds since the epoch (sub-microsecond digits truncated)."""
    return (parse_time(text) - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> str:
    return format_time(_EPOCH + timedelta(microseconds=value))


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TS_FORMAT)


@dataclass(frozen=True)
class Window:
    """Rows after ``lo`` (exclusive tuple, or inclusive time when ``inclusive``) up to ``hi`` (inclusive time)."""

    lo: Cursor | None
    hi: str
    inclusive: bool = False


@dataclass(frozen=True)
class WindowStats:
    rows: int
    last: Cursor | None


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
        (row,) = self.engine.rows("SELECT toString(now64(6, 'UTC'))")
        return parse_time(row[0])

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
        where, params = self._where(Window(lo, hi, inclusive))
        time_col = quote(self.cursor[0])
        rows = self.engine.rows(
            f"SELECT toString({time_col}, 'UTC') FROM {self.relation} WHERE {where} ORDER BY {time_col} LIMIT 1", params
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

    def window_end(self, first: str, max_window: float, hi: str) -> str:
        """The inclusive end of a window starting at ``first``: no longer than ``max_window``."""
        end = parse_time(first) + timedelta(seconds=max_window)
        return min(format_time(end), hi, key=_normalise_time)

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

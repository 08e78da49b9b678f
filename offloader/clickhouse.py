"""The ClickHouse adapter: the engines every query to the warm tier goes through.

Two engines serve the :class:`~offloader.ports.Engine` port: a remote server over HTTP
through clickhouse-connect (``http(s)://``), and the ClickHouse engine embedded in-process
through chDB (``chdb://``), whose own ArrowStream API streams with flat memory. This is the
only module that imports either library; their errors become :class:`SourceError`, or
:class:`AuthenticationError` for a refused login. :func:`arrow_engine` runs queries of the
embedded engine over Arrow tables (the consistency checksums): in this process when the source
is the embedded engine, and otherwise in a helper process that ends with the check, so that a
long-running service with a remote source never holds the embedded engine's memory.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from offloader import stops
from offloader.config import SourceConfig
from offloader.errors import AuthenticationError, ConfigError, OffloaderError, SourceError, first_line, network_reason
from offloader.faults import fail
from offloader.ports import ArrowQuery, Engine

# ClickHouse error codes of a refused login: UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD,
# AUTHENTICATION_FAILED. Trying again with the same credentials cannot help. (ACCESS_DENIED, 497,
# is a missing grant of a user that did log in: a SourceError like any other failed query.)
AUTH_FAILED_CODES = frozenset({192, 193, 194, 516})
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
                return self._conn.query(sql, fmt, params=param_strings(params))
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
            result = conn.send_query(sql, "ArrowStream", params=param_strings(params))
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


@contextmanager
def arrow_engine() -> Iterator[ArrowQuery]:
    """The embedded engine over Arrow tables, for one check: ``query(sql, arrow_input)``.

    With the embedded engine already in this process (the source is ``chdb://``), queries run
    here. Otherwise they run in a helper process started now and ended on leaving: the engine
    takes hundreds of MiB it never gives back, which a daemon must not keep between checks.
    """
    if not embedded_engine_available():
        raise SourceError(
            f"the consistency check needs the embedded ClickHouse engine for Iceberg's checksums: {NO_EMBEDDED_ENGINE}"
        )
    if _EMBEDDED_PATH:
        yield local_arrow_rows
        return
    helper = _ArrowHelper()
    try:
        yield helper.query
    finally:
        helper.close()


class _ArrowHelper:
    """A helper process running :func:`local_arrow_rows` for its parent, over a socket pair.

    A plain interpreter (no ``multiprocessing`` start method, so no resource tracker stays
    behind); it exits when asked, when the socket closes, or with its parent (the socket's
    end of file).
    """

    def __init__(self) -> None:
        mine, theirs = socket.socketpair()
        code = f"from offloader.clickhouse import serve_arrow; serve_arrow({theirs.fileno()})"
        try:
            self._process = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        except OSError as exc:
            mine.close()
            raise SourceError(f"cannot start the checksum process: {first_line(exc)}") from exc
        finally:
            theirs.close()
        self._conn = Connection(mine.detach())

    def query(self, sql: str, arrow_input: pa.Table) -> list[tuple[Any, ...]]:
        try:
            self._conn.send((sql, arrow_input))
            ok, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._process.poll()
            raise SourceError(f"the checksum process ended (exit code {code}) before answering") from exc
        if not ok:
            raise SourceError(value)
        return value

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._conn.close()
        try:
            self._process.wait(5.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5.0)


def serve_arrow(fd: int) -> None:
    """In the helper process: answer each ``(sql, table)`` on ``fd`` until ``None`` or the end;
    killed with its parent, even in the middle of a query."""
    stops.die_with_parent(os.getppid())
    conn = Connection(fd)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            return
        try:
            answer: tuple[bool, Any] = (True, local_arrow_rows(*request))
        except OffloaderError as exc:
            answer = (False, str(exc))
        except Exception as exc:  # noqa: BLE001 - anything else is reported to the parent, not lost
            answer = (False, f"the checksum process failed: {type(exc).__name__}: {first_line(exc)}")
        conn.send(answer)


def local_arrow_rows(sql: str, arrow_input: pa.Table) -> list[tuple[Any, ...]]:
    """Run ``sql`` on the embedded ClickHouse engine of this process over ``arrow_input``
    (``Python(arrow_input)``). chDB runs one embedded server per process, on the data
    directory it was first opened with.
    """
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
        if getattr(exc, "code", None) is None and (reason := network_reason(exc)):
            return SourceError(f"{what}: {reason}")
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


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0", "'": "\\'"})


def param_strings(params: dict[str, Any] | None) -> dict[str, Any]:
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


def connect(config: SourceConfig) -> Engine:
    """Open the engine the DSN names: chDB for ``chdb://``, HTTP otherwise."""
    if config.embedded:
        path = config.dsn[len("chdb://") :] or ":memory:"
        return ChdbEngine(path)
    return HttpEngine(config)

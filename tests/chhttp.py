"""A ClickHouse HTTP endpoint served from chDB, for tests.

There is no ClickHouse server on the development and CI machines, but offloader talks to
one over HTTP in production (clickhouse-connect, ``http://user@host:8123/database``). This
module serves the part of ClickHouse's HTTP protocol that clickhouse-connect uses, backed
by the ClickHouse engine embedded in chDB, so that the real HTTP path runs on loopback::

    python tests/chhttp.py --path /chdb/dir --port 0 [--host 127.0.0.1] [--fault SPEC] [--user NAME:PASSWORD]

prints ``LISTENING <port>`` on stdout once it accepts connections and exits 0 on SIGTERM
(or SIGINT). Only one process can open a chDB directory: while the endpoint runs, every
other process (the test included) reaches that data over HTTP. In-process::

    server, thread = serve(path, "127.0.0.1", 0)   # server.port, server.url
    ...
    server.close()

What is served
    ``GET /`` and ``/ping`` answer ``Ok.``. A query arrives as the ``query`` URL parameter
    and/or the POST body (the two are joined, as ClickHouse does), or as multipart form
    fields. URL parameters: ``database`` (also the ``X-ClickHouse-Database`` header),
    ``default_format``, ``param_<name>`` (server-side query parameters ``{name:Type}``,
    passed to chDB unchanged: the same TSV-escaped text ClickHouse parses); every other
    parameter that is not an HTTP transport parameter is a setting, applied with ``SET`` on
    the request's own session. A trailing ``FORMAT <name>`` picks the output format
    (default TabSeparated). ``INSERT ... FORMAT <fmt>`` followed by data (in the body,
    plain or chunked) is streamed into chDB's ``send_insert``. Responses are never compressed.

Authentication
    Not checked unless users are given (``--user NAME:PASSWORD``, repeatable; in-process
    ``serve(..., users={name: password})``). Then every query must carry one of them, the
    ways ClickHouse takes credentials: HTTP Basic auth (what clickhouse-connect sends), the
    ``X-ClickHouse-User``/``X-ClickHouse-Key`` headers or the ``user``/``password`` URL
    parameters; none at all means user ``default`` with no password. Anything else is
    refused as ClickHouse refuses it: HTTP 403, ``X-ClickHouse-Exception-Code: 516`` and
    ``Code: 516. DB::Exception: <user>: Authentication failed: password is incorrect, or
    there is no user with such name. (AUTHENTICATION_FAILED)``. ``/ping`` needs no credentials.

    Every request runs on a fresh ``chdb.connect(path)`` handle (handles on one path share
    the engine, but each keeps its own session and runs one streaming query at a time).
    Read queries with a streamable format (Native, ArrowStream, TSV/CSV/JSONEachRow/RowBinary
    variants) are streamed with chunked transfer encoding as chDB yields chunks, so memory
    stays flat; ``wait_end_of_query=1`` (sent by clickhouse-connect for ``query``,
    ``query_arrow`` and ``command``) buffers the whole result first, as the server does.
    chDB yields each ArrowStream chunk as a complete IPC stream (schema ... end-of-stream);
    those are re-framed into one stream (concatenating them would silently end the client's
    reader after the first chunk).

Errors
    Before the first byte of a result: HTTP 500, header ``X-ClickHouse-Exception-Code: N``
    and a ``Code: N. DB::Exception: ... (version ...)`` body, which clickhouse-connect
    raises as ``DatabaseError`` carrying the message. During a streamed result: the
    exception block of ClickHouse 25.11+ (``__exception__\\r\\n<tag>\\r\\n<message>\\n<length>
    <tag>\\r\\n__exception__``, the tag announced in ``X-ClickHouse-Exception-Tag``).

Fault injection (for network-failure tests)
    A fault is a spec ``KIND:BYTES[:SECONDS]``; it applies to every query result body
    (payload bytes, not counting chunk framing) that reaches BYTES bytes, so small answers
    (the handshake, counts) pass and big result streams break:

    - ``cut:N``        close the connection (FIN) after N bytes, mid-body
    - ``reset:N``      abort the connection with a TCP RST after N bytes
    - ``stall:N:S``    stop sending for S seconds after N bytes, then go on
    - ``die:N``        the whole endpoint process exits (code 17) after N bytes:
                       a server that dies mid-stream. Only for a subprocess endpoint.

    Set it with ``--fault SPEC`` or the ``CHHTTP_FAULT`` environment variable (read when
    the server starts), in-process with ``server.fault = Fault.parse(SPEC)`` (``None``
    clears it), or at run time over HTTP: ``POST /_chhttp/fault`` with the spec as body
    (an empty body clears it); ``GET /_chhttp/fault`` returns ``<spec> <times fired>``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb

FAULT_ENV = "CHHTTP_FAULT"
DISPLAY_NAME = "chhttp"

# URL parameters that are part of the HTTP interface, not settings for SET.
TRANSPORT_PARAMS = {
    "query", "database", "default_format", "user", "password", "query_id", "session_id",
    "session_timeout", "session_check", "compress", "decompress", "buffer_size",
    "wait_end_of_query", "client_protocol_version", "quota_key", "role", "enable_http_compression",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms",
    "cancel_http_readonly_queries_on_client_close", "http_response_buffer_size",
    "http_wait_end_of_query", "http_zlib_compression_level", "add_http_cors_header",
    "http_native_compression_disable_checksumming_on_decompress", "output_format_decimal_trailing_zeros_http",
}  # fmt: skip
STREAMABLE = {
    "Native", "ArrowStream", "TabSeparated", "TSV", "TabSeparatedRaw", "TSVRaw", "TabSeparatedWithNames",
    "TSVWithNames", "TabSeparatedWithNamesAndTypes", "TSVWithNamesAndTypes", "CSV", "CSVWithNames",
    "CSVWithNamesAndTypes", "JSONEachRow", "JSONCompactEachRow", "JSONStringsEachRow", "RowBinary",
    "RowBinaryWithNames", "RowBinaryWithNamesAndTypes",
}  # fmt: skip
BINARY = {
    "Native",
    "ArrowStream",
    "Arrow",
    "Parquet",
    "ORC",
    "Avro",
    "RowBinary",
    "RowBinaryWithNames",
    "RowBinaryWithNamesAndTypes",
}
READ_KEYWORDS = {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS", "VALUES"}

_FORMAT_AT_END = re.compile(r"^(?P<sql>.*?)\s+FORMAT\s+(?P<fmt>[A-Za-z][A-Za-z0-9_]*)\s*;?\s*$", re.S | re.I)
_INSERT_WITH_DATA = re.compile(rb"^\s*(?P<sql>INSERT\b.*?)\s+FORMAT\s+(?P<fmt>[A-Za-z][A-Za-z0-9_]*)[ \t]*(\r?\n|$)", re.S | re.I)
_COMMENTS = re.compile(r"^(\s+|--[^\n]*\n?|/\*.*?\*/|\()*", re.S)
_CODE = re.compile(r"Code: (\d+)\. ")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ARROW_CONTINUATION = b"\xff\xff\xff\xff"
_ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


class ClickHouseError(Exception):
    """An error to answer the way ClickHouse does: a code and a ``Code: N. DB::Exception`` text."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def wrap(cls, exc: BaseException) -> ClickHouseError:
        if isinstance(exc, ClickHouseError):
            return exc
        text = str(exc).strip()
        at = text.find("Code: ")
        if at >= 0:
            text = text[at:]
            match = _CODE.match(text)
            if match:
                return cls(int(match.group(1)), text)
        return cls(1001, f"Code: 1001. DB::Exception: {text or type(exc).__name__}. (STD_EXCEPTION)")


class _Aborted(Exception):
    """The response was cut on purpose (a fault) or the server is stopping."""


@dataclass
class Fault:
    """A network fault to inject into query result bodies; see the module docstring."""

    kind: str
    after: int
    seconds: float = 0.0
    fired: int = 0

    KINDS = ("cut", "reset", "stall", "die")

    @classmethod
    def parse(cls, spec: str | None) -> Fault | None:
        spec = (spec or "").strip()
        if not spec:
            return None
        parts = spec.split(":")
        if parts[0] not in cls.KINDS or len(parts) not in (2, 3) or (parts[0] == "stall") != (len(parts) == 3):
            raise ValueError(f"bad fault spec {spec!r}: expected cut:N, reset:N, die:N or stall:N:SECONDS")
        return cls(parts[0], int(parts[1]), float(parts[2]) if len(parts) == 3 else 0.0)

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.after}" + (f":{self.seconds:g}" if self.kind == "stall" else "")


class ChHttpServer(ThreadingHTTPServer):
    """The endpoint: one primary chDB handle keeps the engine open; each request opens its own."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self, path: str, host: str, port: int, fault: Fault | None = None, verbose: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.chdb_path = path
        self.users = users  # None: authentication is not checked
        self.conn = chdb.connect(path)
        self.version, self.timezone = self.conn.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split()
        self.fault = fault
        self.verbose = verbose
        self.stopping = threading.Event()
        self._active = 0
        self._active_lock = threading.Condition()
        try:
            super().__init__((host, port), _Handler)
        except BaseException:
            self.conn.close()
            raise

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.port}"

    def connect(self) -> Any:
        return chdb.connect(self.chdb_path)

    def enter(self) -> None:
        with self._active_lock:
            self._active += 1

    def leave(self) -> None:
        with self._active_lock:
            self._active -= 1
            self._active_lock.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, abort result streams in flight, wait for them, release chDB."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        deadline = time.monotonic() + timeout
        with self._active_lock:
            while self._active and time.monotonic() < deadline:
                self._active_lock.wait(0.05)
        try:
            self.conn.close()
        except Exception:  # noqa: S110 - closing twice is harmless
            pass


class _Body:
    """Writes one response body (chunked or not), counting bytes and injecting the fault."""

    def __init__(self, handler: _Handler, chunked: bool, fault: Fault | None) -> None:
        self.handler = handler
        self.chunked = chunked
        self.fault = fault
        self.sent = 0

    def write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        if self.handler.server.stopping.is_set():
            raise _Aborted("server stopping")
        fault = self.fault
        if fault is not None and self.sent <= fault.after <= self.sent + len(data) - 1:
            head = fault.after - self.sent
            self._raw(memoryview(data)[:head])
            self.fault = None
            self._fire(fault)
            data = memoryview(data)[head:]
        self._raw(data)

    def _raw(self, data: bytes | memoryview) -> None:
        if not len(data):
            return
        out = self.handler.wfile
        if self.chunked:
            out.write(b"%x\r\n" % len(data))
            out.write(data)
            out.write(b"\r\n")
        else:
            out.write(data)
        self.sent += len(data)

    def finish(self) -> None:
        if self.chunked:
            self.handler.wfile.write(b"0\r\n\r\n")

    def _fire(self, fault: Fault) -> None:
        fault.fired += 1
        sock = self.handler.connection
        self.handler.log(f"fault {fault.spec} fired after {self.sent} bytes")
        if fault.kind == "stall":
            if self.handler.server.stopping.wait(fault.seconds):
                raise _Aborted("server stopping")
            return
        if fault.kind == "die":
            os._exit(17)
        if fault.kind == "reset":
            # Linger 0 and an immediate close of the descriptor: the kernel sends RST, no FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(sock.detach())
        else:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise _Aborted(f"fault {fault.spec}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chhttp"
    server: ChHttpServer

    def log(self, text: str) -> None:
        if self.server.verbose:
            sys.stderr.write(f"chhttp: {text}\n")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        self.log(format % args)

    # -- dispatch --------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._handle()

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self._handle()

    def _handle(self) -> None:
        self.server.enter()
        try:
            url = urlsplit(self.path)
            if url.path.rstrip("/") == "/_chhttp/fault":
                self._fault_control()
            elif url.path in ("/ping", "/") and "query" not in url.query and self.command == "GET":
                self._send_small(200, b"Ok.\n", "text/html; charset=UTF-8")
            elif url.path in ("/", ""):
                params = dict(parse_qsl(url.query, keep_blank_values=True))
                refused = self._refused(params)
                if refused is not None:
                    self._drain_body()
                    self._send_error(refused, status=403)
                else:
                    self._query(params)
            else:
                self._drain_body()
                self._send_error(ClickHouseError(0, f"There is no handle {url.path}"), status=404)
        except _Aborted:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):  # the client went away
            self.close_connection = True
        finally:
            self.server.leave()

    def _fault_control(self) -> None:
        body = self._read_body().decode().strip()
        if self.command == "POST":
            try:
                self.server.fault = Fault.parse(body)
            except ValueError as exc:
                self._send_small(400, f"{exc}\n".encode(), "text/plain; charset=UTF-8")
                return
        fault = self.server.fault
        text = f"{fault.spec} {fault.fired}\n" if fault else "none 0\n"
        self._send_small(200, text.encode(), "text/plain; charset=UTF-8")

    def _refused(self, params: dict[str, str]) -> ClickHouseError | None:
        """The AUTHENTICATION_FAILED error when users are checked and the request's credentials are not one of them."""
        users = self.server.users
        if users is None:
            return None
        user, password = params.get("user"), params.get("password")
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", None
        user = user or self.headers.get("X-ClickHouse-User") or "default"
        password = password if password is not None else self.headers.get("X-ClickHouse-Key", "")
        if user in users and secrets.compare_digest(users[user].encode(), password.encode()):
            return None
        return ClickHouseError(
            516,
            f"Code: 516. DB::Exception: {user}: Authentication failed: password is incorrect, "
            "or there is no user with such name. (AUTHENTICATION_FAILED)",
        )

    # -- the request -----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _drain_body(self) -> None:
        for _ in self._body_chunks():
            pass

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body as it arrives, plain (Content-Length) or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline(3)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                data = self.rfile.read(min(left, 1 << 20))
                if not data:
                    return
                left -= len(data)
                yield data

    def _query(self, params: dict[str, str]) -> None:
        content_type = self.headers.get("Content-Type", "")
        chunks = self._body_chunks()
        if content_type.startswith("multipart/form-data"):
            body = b"".join(chunks)
            try:
                params.update(_form_fields(content_type, body))
            except ClickHouseError as exc:
                self._send_error(exc)
                return
            chunks = iter(())
        database = params.get("database") or self.headers.get("X-ClickHouse-Database")
        query_params = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
        query = params.get("query", "")
        # The body follows the query parameter; an INSERT ... FORMAT in either is followed by data.
        head = b""
        if not query or not _INSERT_WITH_DATA.match(query.encode()):
            for chunk in chunks:
                head += chunk
                if len(head) > 1 << 16 or _INSERT_WITH_DATA.match(query.encode() + b" " + head):
                    break
        text = (query + ("\n" if query and head else "")).encode() + head
        insert = _INSERT_WITH_DATA.match(text)
        conn = None
        try:
            conn = self.server.connect()
            _prepare_session(conn, database, settings)
            if insert is not None:
                data = text[insert.end() :]
                rest = _chain([data] if data else [], chunks)
                self._insert(conn, insert.group("sql").decode(), insert.group("fmt").decode(), rest, query_params)
                return
            sql = b"".join([text, *chunks]).decode()
            if not sql.strip():
                raise ClickHouseError(62, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
            match = _FORMAT_AT_END.match(sql)
            fmt = match.group("fmt") if match else params.get("default_format") or "TabSeparated"
            sql = match.group("sql") if match else sql
            wait = params.get("wait_end_of_query", "0") == "1"
            if fmt in STREAMABLE and _is_read(sql) and not wait:
                self._stream(conn, sql, fmt, query_params, params.get("query_id"))
            else:
                self._buffered(conn, sql, fmt, query_params, params.get("query_id"))
        except (_Aborted, BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:
            for _ in chunks:  # read the rest of the body: the connection is kept alive
                pass
            self._send_error(ClickHouseError.wrap(exc))
        finally:
            if conn is not None:
                conn.close()

    def _insert(self, conn: Any, sql: str, fmt: str, data: Iterator[bytes], query_params: dict[str, str]) -> None:
        if query_params:
            raise ClickHouseError(
                48, "Code: 48. DB::Exception: chhttp: query parameters in INSERT ... FORMAT are not supported. (NOT_IMPLEMENTED)"
            )
        if self.headers.get("Content-Encoding", "identity") != "identity":
            raise ClickHouseError(
                48, "Code: 48. DB::Exception: chhttp: compressed request bodies are not supported. (NOT_IMPLEMENTED)"
            )
        started = time.monotonic()
        try:
            inserter = conn.send_insert(sql, fmt)
        except Exception as exc:
            for _ in data:  # the body must be read before answering on a kept-alive connection
                pass
            raise ClickHouseError.wrap(exc) from exc
        try:
            for chunk in data:
                if chunk:
                    inserter.append(chunk)
            result = inserter.finish()
        except Exception as exc:
            inserter.cancel()
            for _ in data:
                pass
            raise ClickHouseError.wrap(exc) from exc
        summary = {"written_rows": str(result.rows_written), "written_bytes": str(result.bytes_written),
                   "elapsed_ns": str(int((time.monotonic() - started) * 1e9))}  # fmt: skip
        self._send_small(200, b"", "text/plain; charset=UTF-8", summary=summary)

    def _buffered(self, conn: Any, sql: str, fmt: str, query_params: dict[str, str], query_id: str | None) -> None:
        result = conn.query(sql, fmt, params=query_params)
        data = result.bytes() or b""
        summary = _summary(result)
        self.send_response(200)
        self._result_headers(fmt, query_id, summary)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        body = _Body(self, chunked=False, fault=self.server.fault)
        view = memoryview(data)
        for at in range(0, len(view), 1 << 20):
            body.write(view[at : at + (1 << 20)])

    def _stream(self, conn: Any, sql: str, fmt: str, query_params: dict[str, str], query_id: str | None) -> None:
        result = conn.send_query(sql, fmt, params=query_params)
        try:
            first = result.fetch()  # errors before the first byte become a plain HTTP 500
            if first is None:
                result.cancel()
                self._buffered(conn, sql, fmt, query_params, query_id)  # an empty result still has a header
                return
            tag = secrets.token_hex(8)
            self.send_response(200)
            self._result_headers(fmt, query_id, None)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-ClickHouse-Exception-Tag", tag)
            self.end_headers()
            body = _Body(self, chunked=True, fault=self.server.fault)
            framer = _ArrowReframer() if fmt == "ArrowStream" else None
            chunk = first
            try:
                while chunk is not None:
                    data = chunk.bytes()
                    body.write(framer.feed(data) if framer else data)
                    chunk = result.fetch()
                if framer:
                    body.write(_ARROW_EOS)
            except (_Aborted, BrokenPipeError, ConnectionResetError):
                raise
            except Exception as exc:
                error = ClickHouseError.wrap(exc)
                message = f"{error.message} (version {self.server.version})".encode()
                body.write(
                    b"__exception__\r\n"
                    + tag.encode()
                    + b"\r\n"
                    + message
                    + b"\n"
                    + str(len(message)).encode()
                    + b" "
                    + tag.encode()
                    + b"\r\n__exception__\r\n"
                )
            body.finish()
        finally:
            try:
                result.cancel()
            except Exception:  # noqa: S110 - already finished or broken
                pass

    # -- responses -------------------------------------------------------------------------

    def _result_headers(self, fmt: str, query_id: str | None, summary: dict[str, str] | None) -> None:
        if fmt in BINARY:
            content_type = "application/octet-stream"
        elif fmt.startswith(("TabSeparated", "TSV")):
            content_type = "text/tab-separated-values; charset=UTF-8"
        elif fmt.startswith("JSON"):
            content_type = "application/json; charset=UTF-8"
        else:
            content_type = "text/plain; charset=UTF-8"
        self.send_header("Content-Type", content_type)
        self.send_header("X-ClickHouse-Format", fmt)
        self.send_header("X-ClickHouse-Timezone", self.server.timezone)
        self.send_header("X-ClickHouse-Query-Id", query_id or str(uuid.uuid4()))
        self.send_header("X-ClickHouse-Server-Display-Name", DISPLAY_NAME)
        self.send_header("X-ClickHouse-Summary", json.dumps(summary or {}))
        self.send_header("Keep-Alive", "timeout=10")

    def _send_small(self, status: int, data: bytes, content_type: str, summary: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if summary is not None:
            self.send_header("X-ClickHouse-Summary", json.dumps(summary))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: ClickHouseError, status: int = 500) -> None:
        body = f"{error.message} (version {self.server.version} (chhttp))\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-ClickHouse-Exception-Code", str(error.code))
        self.send_header("X-ClickHouse-Server-Display-Name", DISPLAY_NAME)
        self.end_headers()
        self.wfile.write(body)


class _ArrowReframer:
    """Joins chDB's ArrowStream chunks (each a whole IPC stream) into one stream.

    The first chunk goes out without its end-of-stream marker; later ones without their
    schema message (which must equal the first one's) and end-of-stream marker. The caller
    writes the one end-of-stream marker at the end.
    """

    def __init__(self) -> None:
        self.schema: bytes | None = None

    def feed(self, data: bytes) -> memoryview:
        if not data.startswith(_ARROW_CONTINUATION) or not data.endswith(_ARROW_EOS):
            raise ClickHouseError(
                1001, "Code: 1001. DB::Exception: chhttp: unexpected ArrowStream chunk from chDB. (STD_EXCEPTION)"
            )
        schema_end = 8 + int.from_bytes(data[4:8], "little")
        view = memoryview(data)
        if self.schema is None:
            self.schema = bytes(view[:schema_end])
            return view[:-8]
        if view[:schema_end] != self.schema:
            raise ClickHouseError(
                1001, "Code: 1001. DB::Exception: chhttp: ArrowStream chunks with different schemas. (STD_EXCEPTION)"
            )
        return view[schema_end:-8]


def _chain(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


def _summary(result: Any) -> dict[str, str]:
    try:
        return {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
                "elapsed_ns": str(int(result.elapsed() * 1e9))}  # fmt: skip
    except Exception:
        return {}


def _is_read(sql: str) -> bool:
    rest = sql[_COMMENTS.match(sql).end() :]  # type: ignore[union-attr]
    word = re.match(r"[A-Za-z]+", rest)
    return bool(word) and word.group(0).upper() in READ_KEYWORDS  # type: ignore[union-attr]


def _quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _prepare_session(conn: Any, database: str | None, settings: dict[str, str]) -> None:
    """``USE`` the request's database and ``SET`` its settings on its own handle."""
    if database:
        conn.query("USE `" + database.replace("\\", "\\\\").replace("`", "\\`") + "`", "TabSeparated")
    if settings:
        bad = [k for k in settings if not _SETTING_NAME.match(k)]
        if bad:
            raise ClickHouseError(115, f"Code: 115. DB::Exception: Unknown setting '{bad[0]}'. (UNKNOWN_SETTING)")
        conn.query("SET " + ", ".join(f"{k} = {_quote_string(v)}" for k, v in settings.items()), "TabSeparated")


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Text fields of a multipart/form-data body (query and param_*); files are refused."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_param("filename", header="content-disposition") is not None:
            raise ClickHouseError(48, "Code: 48. DB::Exception: chhttp: external data is not supported. (NOT_IMPLEMENTED)")
        if name:
            fields[str(name)] = part.get_payload(decode=True).decode()
    return fields


def serve(path: str, host: str = "127.0.0.1", port: int = 0, fault: Fault | str | None = None,
          verbose: bool = False, users: dict[str, str] | None = None) -> tuple[ChHttpServer, threading.Thread]:  # fmt: skip
    """Start the endpoint on ``path`` in this process; ``server.close()`` stops it.

    ``fault`` defaults to the ``CHHTTP_FAULT`` environment variable; ``users`` (name to
    password) turns authentication on.
    """
    if fault is None:
        fault = os.environ.get(FAULT_ENV)
    if isinstance(fault, str):
        fault = Fault.parse(fault)
    server = ChHttpServer(path, host, port, fault=fault, verbose=verbose, users=users)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="chhttp", daemon=True)
    thread.start()
    return server, thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A ClickHouse HTTP endpoint served from chDB (for tests).")
    parser.add_argument("--path", required=True, help="the chDB data directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123, help="0 picks a free port")
    parser.add_argument("--fault", default=None, help="KIND:BYTES[:SECONDS], see the module docstring")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    parser.add_argument(
        "--user", action="append", default=None, metavar="NAME:PASSWORD", help="accept only these users (repeatable)"
    )
    args = parser.parse_args(argv)
    users = None if args.user is None else dict(u.partition(":")[::2] for u in args.user)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server, thread = serve(args.path, args.host, args.port, fault=args.fault, verbose=args.verbose, users=users)
    except ValueError as exc:
        print(f"chhttp: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"chhttp: cannot serve {args.path} on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"LISTENING {server.port}", flush=True)
    while not stop.wait(0.2):
        pass
    server.close()
    thread.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

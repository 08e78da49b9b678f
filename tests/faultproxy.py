"""A fault-injecting HTTP reverse proxy for the storage path: S3 and the Iceberg REST catalog.

offloader reaches SeaweedFS's S3 port (or its REST catalog port) through the proxy, which
forwards every request unchanged (headers byte for byte, so S3 signatures stay valid) until
a test arms a rule; a request that matches an armed rule gets the rule's fault instead::

    proxy = FaultProxy(seaweed.endpoint).start()       # proxy.url is where offloader goes
    rule = proxy.arm(method="PUT", path_re=r"/data/.*\\.parquet$", fault="reset_mid_body", times=1)
    ...
    assert rule.hits == 1
    proxy.close()

Faults (``times=None`` fires on every matching request, ``times=n`` on the first n):

- ``reset_mid_body``: half of the request body is forwarded, then the client's connection is
  reset (SO_LINGER 0, then close: a TCP RST) and the upstream one closed mid-body;
- ``slow_down``: S3's ``503 SlowDown`` error, answered without forwarding;
- ``stall``: the request is read, never forwarded nor answered, and held until the client
  gives up (its timeout) or ``seconds`` pass;
- ``error_before``: ``status`` (default 503) answered without forwarding: the request did
  not reach the server (an S3 error XML, ``AccessDenied`` for 403, or an Iceberg REST error
  JSON for paths under ``/v1/``);
- ``error_after``: forwarded and answered by the server, whose reply is replaced by
  ``status``: the request took effect but its reply is lost;
- ``reset_after``: forwarded and answered by the server, then the client's connection is
  reset instead of the reply.

``path_re`` is searched in the request path (percent-decoded, without the query string),
``query_re`` in the query string (as sent); ``after=<rule>`` arms a rule only once another one has fired (a fault on the
request that follows a fault). Every request is recorded in ``proxy.seen`` (method, path,
query, the fault it got); ``proxy.requests(method, path_re)`` filters them. A request that
announces ``Expect: 100-continue`` gets its ``100 Continue`` from the proxy and goes upstream
without that header. Each request goes upstream on a connection of its own. Standard library only.
"""

from __future__ import annotations

import json
import re
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

FAULTS = ("reset_mid_body", "slow_down", "stall", "error_before", "error_after", "reset_after")
SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
_REASONS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 409: "Conflict", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}  # fmt: skip
# The error codes S3 and the Iceberg REST catalog answer with, by status.
_S3_CODES = {403: "AccessDenied", 500: "InternalError", 503: "ServiceUnavailable"}
_REST_TYPES = {401: "NotAuthorizedException", 403: "ForbiddenException", 409: "CommitFailedException"}


@dataclass
class Rule:
    """An armed fault: which requests it matches, what it does, how often it fired."""

    fault: str
    method: str | None = None
    path_re: str | None = None
    query_re: str | None = None
    times: int | None = None
    status: int = 503
    seconds: float = 30.0
    after: Rule | None = None  # armed only once this other rule has fired
    hits: int = 0

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.after is not None and not self.after.hits:
            return False
        if self.method is not None and self.method != method:
            return False
        if self.path_re is not None and not re.search(self.path_re, path):
            return False
        return self.query_re is None or bool(re.search(self.query_re, query))


@dataclass(frozen=True)
class Seen:
    """One request that reached the proxy."""

    method: str
    path: str
    query: str
    fault: str | None
    at: float  # time.monotonic() when it arrived, for reading a failure's story


class _Reader:
    """Buffered reads from a socket: up to a delimiter, or an exact number of bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def until(self, delimiter: bytes, limit: int = 1 << 20) -> bytes | None:
        """Bytes up to and including ``delimiter``; None on a clean end of stream before any byte."""
        while delimiter not in self.buffer:
            if len(self.buffer) > limit:
                raise ConnectionError("HTTP head too long")
            if not self._fill():
                if self.buffer:
                    raise ConnectionError("connection closed mid-message")
                return None
        end = self.buffer.index(delimiter) + len(delimiter)
        out, self.buffer = self.buffer[:end], self.buffer[end:]
        return out

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise ConnectionError("connection closed mid-body")
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def rest(self) -> bytes:
        """Everything until the peer closes (a body framed by the end of the connection)."""
        while self._fill():
            pass
        out, self.buffer = self.buffer, b""
        return out


def _headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = []
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            fields.append((name.strip().lower(), value.strip()))
    return lines[0], fields


def _header(fields: list[tuple[str, str]], name: str) -> str | None:
    for key, value in fields:
        if key == name:
            return value
    return None


def _chunked(reader: _Reader) -> bytes:
    """A chunked body, raw (sizes, chunks and trailers as sent)."""
    out = b""
    while True:
        line = reader.until(b"\r\n")
        if line is None:
            raise ConnectionError("connection closed mid-body")
        out += line
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers, up to an empty line
                trailer = reader.until(b"\r\n")
                if trailer is None:
                    raise ConnectionError("connection closed mid-trailer")
                out += trailer
                if trailer == b"\r\n":
                    return out
        out += reader.exactly(size + 2)


def _reset(sock: socket.socket) -> None:
    """Abort the connection with a TCP RST: SO_LINGER on with a zero timeout, then close."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _response(status: int, body: bytes, content_type: str) -> bytes:
    reason = "Slow Down" if body == SLOW_DOWN else _REASONS.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "x-amz-request-id: faultproxy\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _error_body(status: int, path: str) -> tuple[bytes, str]:
    """An error reply as the server behind would word it: Iceberg REST's JSON, or S3's XML."""
    reason = _REASONS.get(status, "Error")
    if path.startswith("/v1/"):
        kind = _REST_TYPES.get(status, "ServerError")
        body = {"error": {"message": f"{reason} (injected by faultproxy)", "type": kind, "code": status}}
        return json.dumps(body).encode(), "application/json"
    code = _S3_CODES.get(status, "InternalError")
    return f"<Error><Code>{code}</Code><Message>{reason} (injected by faultproxy)</Message></Error>".encode(), "application/xml"


class FaultProxy:
    """A threaded reverse proxy to ``upstream`` (``http://host:port``) that injects armed faults."""

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)  # the accept loop looks at _closed this often
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._accept, name="faultproxy", daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                try:
                    sock.close()
                except OSError:
                    pass
            self._sockets.clear()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rules -----------------------------------------------------------------------------

    def arm(
        self, *, fault: str, method: str | None = None, path_re: str | None = None, query_re: str | None = None,
        times: int | None = None, status: int = 503, seconds: float = 30.0, after: Rule | None = None,
    ) -> Rule:  # fmt: skip
        """Add a rule; the first armed rule that matches a request decides its fault."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        rule = Rule(fault, method, path_re, query_re, times, status, seconds, after)
        with self._lock:
            self.rules.append(rule)
        return rule

    def disarm(self) -> None:
        with self._lock:
            self.rules.clear()

    def requests(self, method: str | None = None, path_re: str | None = None) -> list[Seen]:
        """The requests seen so far, optionally only those of a method and a path pattern."""
        with self._lock:
            seen = list(self.seen)
        return [s for s in seen if (method is None or s.method == method) and (path_re is None or re.search(path_re, s.path))]

    def _choose(self, method: str, path: str, query: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, query):
                    rule.hits += 1
                    self.seen.append(Seen(method, path, query, rule.fault, time.monotonic()))
                    return rule
            self.seen.append(Seen(method, path, query, None, time.monotonic()))
        return None

    # -- serving ---------------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed.is_set():
                return False
            self._sockets.add(sock)
            return True

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        try:
            sock.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._track(client):
                client.close()
                return
            threading.Thread(target=self._serve, args=(client,), name="faultproxy-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        reader = _Reader(client)
        try:
            while not self._closed.is_set() and self._exchange(client, reader):
                pass
        except (OSError, ConnectionError, ValueError, IndexError):
            return
        finally:
            self._untrack(client)

    def _exchange(self, client: socket.socket, reader: _Reader) -> bool:
        """One request and its reply (or its fault); whether the client connection stays open.

        Each request goes upstream on a connection of its own, so an idle upstream connection
        closed by the server can never look like a fault."""
        head = reader.until(b"\r\n\r\n")
        if head is None:
            return False
        request_line, fields = _headers(head)
        method, target = request_line.split(" ")[0], request_line.split(" ")[1]
        raw_path, _, query = target.partition("?")
        path = unquote(raw_path)
        if (_header(fields, "expect") or "").lower() == "100-continue":  # answered here
            head = re.sub(rb"(?im)^expect:[^\r\n]*\r\n", b"", head)
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        rule = self._choose(method, path, query)
        fault = rule.fault if rule is not None else None
        length = int(_header(fields, "content-length") or 0)
        chunked = "chunked" in (_header(fields, "transfer-encoding") or "").lower()
        if rule is not None and fault == "reset_mid_body":
            if length:
                part = reader.exactly(max(1, length // 2))
            else:  # chunked: the first chunk's size line; no body: nothing
                part = (reader.until(b"\r\n") or b"") if chunked else b""
            upstream = self._connect()
            try:
                upstream.sendall(head + part)
            finally:
                _reset(client)
                self._untrack(upstream)
            return False
        body = _chunked(reader) if chunked else reader.exactly(length)
        if rule is not None and fault in ("slow_down", "error_before"):
            status = 503 if fault == "slow_down" else rule.status
            error = (SLOW_DOWN, "application/xml") if fault == "slow_down" else _error_body(status, path)
            client.sendall(_response(status, *error))
            return True
        if rule is not None and fault == "stall":
            self._hold(client, rule.seconds)
            return False
        upstream = self._connect()
        try:
            upstream.sendall(head + body)
            reply, close = self._reply(_Reader(upstream), method)
        finally:
            self._untrack(upstream)
        if rule is not None and fault == "reset_after":
            _reset(client)
            return False
        if rule is not None and fault == "error_after":
            client.sendall(_response(rule.status, *_error_body(rule.status, path)))
        else:
            client.sendall(reply)
        return not (close or reply.startswith(b"HTTP/1.0") or (_header(fields, "connection") or "").lower() == "close")

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.upstream, timeout=60)
        if not self._track(sock):
            sock.close()
            raise ConnectionError("the proxy is closed")
        return sock

    def _reply(self, reader: _Reader, method: str) -> tuple[bytes, bool]:
        """The upstream's whole reply (head and body, raw) and whether the connection ends with it."""
        while True:
            head = reader.until(b"\r\n\r\n")
            if head is None:
                raise ConnectionError("the upstream closed without a reply")
            status_line, fields = _headers(head)
            status = int(status_line.split(" ")[1])
            if 100 <= status < 200:  # an interim reply: the real one follows
                continue
            break
        close = (_header(fields, "connection") or "").lower() == "close"
        if method == "HEAD" or status in (204, 304):
            return head, close
        if "chunked" in (_header(fields, "transfer-encoding") or "").lower():
            return head + _chunked(reader), close
        length = _header(fields, "content-length")
        if length is not None:
            return head + reader.exactly(int(length)), close
        return head + reader.rest(), True

    def _hold(self, client: socket.socket, seconds: float) -> None:
        """Keep the request unanswered until the client gives up, the time is over or the proxy closes."""
        deadline = time.monotonic() + seconds
        while not self._closed.is_set() and time.monotonic() < deadline:
            poller = select.poll()  # not select(): it refuses descriptors above 1024
            poller.register(client, select.POLLIN)
            if poller.poll(200) and not client.recv(65536):
                return

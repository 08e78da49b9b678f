"""The HTTP endpoints of the service: the page at /, /metrics, /healthz, /readyz, /status.

Bound to ``[server] host:port`` (127.0.0.1:9108 by default). ``/healthz`` is for liveness:
200 while the scheduler runs and ticks, 503 otherwise, with no config, secret or exception
text. ``/readyz`` asks the source, the catalog and the state store, and names the part that
does not answer. ``/status`` is the JSON of ``offloader status`` plus each table's next run,
this process's replica id and the live replicas. ``/`` is the page a person looks at
(``page.py``): the same status, the run history (``?table=&outcome=&limit=``), the audit
log, the last checks and the replicas.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from offloader import __version__, page
from offloader.errors import OffloaderError
from offloader.service import Service


def status_payload(service: Service) -> dict[str, Any]:
    """What /status answers (the state store failing raises OffloaderError)."""
    statuses = service.app.status()
    next_runs = service.next_runs()
    body = [dict(s.as_dict(), next_run=next_runs.get(s.table)) for s in statuses]
    live = [dict(r.__dict__) for r in service.app.live_replicas()]
    return {"tables": body, "replica": service.replica.id, "replicas": live}


def page_data(service: Service, query: str) -> dict[str, Any]:
    """What the page at / shows; ``query`` filters the run history. A bad filter raises ValueError."""
    args = {k: v[-1] for k, v in parse_qs(query).items() if v and v[-1]}
    names = [t.name for t in service.app.config.ordered_tables()]
    table, outcome = args.get("table"), args.get("outcome")
    if table is not None and table not in names:
        raise ValueError(f"table={table!r}: not a configured table")
    if outcome is not None and outcome not in page.OUTCOMES:
        raise ValueError(f"outcome={outcome!r}: expected one of {', '.join(page.OUTCOMES)}")
    limit = int(args.get("limit", "50")) if args.get("limit", "50").isdigit() else -1
    if not 1 <= limit <= 1000:
        raise ValueError(f"limit={args.get('limit')!r}: expected a whole number from 1 to 1000")
    state = service.app.state
    status = status_payload(service)
    audits = [a for a in state.audits(limit=40) if a.action != "check"][:20]
    checks = [c for name in names for c in state.audits(name, "check", limit=1)]
    return {
        **status, "version": __version__, "now": time.time(), "table_names": names,
        "filters": {"table": table, "outcome": outcome, "limit": limit},
        "runs": [dict(r.__dict__) for r in state.runs(table, limit=limit, outcome=outcome)],
        "audits": [dict(a.__dict__) for a in audits], "checks": [dict(c.__dict__) for c in checks],
        "owners": service.app.owners(),
    }  # fmt: skip


def readiness(service: Service) -> list[str]:
    """Names of the parts that do not answer: source, catalog, state."""
    failing = []
    checks = (
        ("source", lambda: service.app.engine.rows("SELECT 1")),
        ("catalog", service.app.sink.ping),
        ("state", service.app.state.ping),
    )
    for name, check in checks:
        try:
            check()
        except Exception:  # any failure means not ready; its text stays in the logs
            failing.append(name)
    return failing


GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
"""A client that hung up (or never finished its request): not an error of the service."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a burst of scrapes waits in the backlog instead of being refused

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Errors outside a route (reading the request line, a client gone): one line, never a traceback on stderr."""
        import sys

        exc = sys.exc_info()[1]
        log = structlog.get_logger("offloader")
        if isinstance(exc, GONE):
            log.debug("http_client_gone", error_type=type(exc).__name__)
        else:
            log.warning("http_request_failed", error_type=type(exc).__name__, error=str(exc))


class _Handler(BaseHTTPRequestHandler):
    service: Service
    server_version = "offloader"
    sys_version = ""
    timeout = 15  # a connection that sends no request in this long is closed

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.path.split("?", 1)[0]
        routes = {
            "/": self._page,
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/status": self._status,
        }
        route = routes.get(path)
        if route is None:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        try:
            route()
        except GONE as exc:
            structlog.get_logger("offloader").debug("http_client_gone", path=path, error_type=type(exc).__name__)
        except Exception:
            structlog.get_logger("offloader").exception("http_handler_failed", path=path)
            try:
                self._send(500, "text/plain; charset=utf-8", b"internal error\n")
            except GONE:
                pass

    def _metrics(self) -> None:
        self._send(200, *self.service.metrics.exposition())

    def _healthz(self) -> None:
        if self.service.healthy():
            self._send(200, "text/plain; charset=utf-8", b"ok\n")
        else:
            self._send(503, "text/plain; charset=utf-8", b"scheduler not running\n")

    def _readyz(self) -> None:
        failing = readiness(self.service)
        if failing:
            self._send(503, "text/plain; charset=utf-8", f"not ready: {', '.join(failing)}\n".encode())
        else:
            self._send(200, "text/plain; charset=utf-8", b"ready\n")

    def _status(self) -> None:
        try:
            out = status_payload(self.service)
        except OffloaderError:
            self._send(503, "text/plain; charset=utf-8", b"status unavailable: the state store does not answer\n")
            return
        self._send(200, "application/json", json.dumps(out, indent=2, default=str).encode())

    def _page(self) -> None:
        try:
            data = page_data(self.service, urlsplit(self.path).query)
        except ValueError as exc:
            self._send(400, "text/plain; charset=utf-8", f"bad filter: {exc}\n".encode())
            return
        except OffloaderError:
            self._send(503, "text/plain; charset=utf-8", b"page unavailable: the state store does not answer\n")
            return
        self._send(200, "text/html; charset=utf-8", page.render(data).encode())

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        structlog.get_logger("offloader").debug(
            "http_request", request=self.requestline, status=args[1] if len(args) > 1 else None
        )


def serve(service: Service, host: str, port: int) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start the endpoints in a daemon thread; returns the server (its real port in server_address)."""
    handler = type("Handler", (_Handler,), {"service": service})
    server = _Server((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, name="offloader-http", daemon=True)
    thread.start()
    structlog.get_logger("offloader").info("http_listening", host=host, port=server.server_address[1])
    return server, thread

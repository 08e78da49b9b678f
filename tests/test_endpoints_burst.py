"""The service's endpoints under a burst: clients that hang up or never speak are not errors.

A running `offloader run` gets 200 clients that send a request and reset the connection
before reading the answer, 100 that connect and send nothing, then 200 concurrent scrapes
of /metrics. Every scrape is answered, and the service logs no error and no traceback.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import threading

from helpers import Workspace, daemon, http_get, service_ws, trades_table, wait_for


def hang_up(port: int) -> None:
    """Send a request, then reset the connection before the answer is read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: offloader\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST


def test_hang_ups_and_silent_clients_are_not_errors_and_a_burst_of_scrapes_is_answered(ws: Workspace) -> None:
    """200 hang-ups and 100 silent connections log no error; 200 concurrent scrapes all get 200."""
    port = service_ws(ws, interval="1h")
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(100, start="2026-01-01 00:00:00")
    with daemon(ws, env={"OFFLOADER__LOGGING__LEVEL": "info"}) as proc:
        wait_for(lambda: http_get(port, "/healthz")[0] == 200, what="the service is up", timeout=60)
        for _ in range(200):
            hang_up(port)
        silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(100)]
        answers: list[int] = []
        lock = threading.Lock()

        def scrape() -> None:
            code = http_get(port, "/metrics")[0]
            with lock:
                answers.append(code)

        threads = [threading.Thread(target=scrape) for _ in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for sock in silent:
            sock.close()
        assert answers == [200] * 200, f"{len(answers)} answers, {answers.count(200)} of them 200"
        assert http_get(port, "/status")[0] == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines, "the service logged nothing"
    errors = [
        line
        for line in lines
        if line.get("level") in ("error", "critical") or "http" in line.get("event", "") and line.get("level") == "warning"
    ]
    assert not errors, errors[:3]
    assert "Traceback" not in out + err

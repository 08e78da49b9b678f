"""tests/chhttp.py as a subprocess on a workspace's chDB directory: a remote ClickHouse for tests.

Tests that need one take the ``endpoint`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from helpers import Workspace, trades_table

CHHTTP = Path(__file__).resolve().with_name("chhttp.py")


class Endpoint:
    """tests/chhttp.py running as a subprocess on the workspace's chDB directory."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.log = ws.root / "chhttp.log"
        self._clients: list[Any] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dsn(self) -> str:
        return f"http://default@127.0.0.1:{self.port}/k2"

    def start(self, fault: str | None = None, users: dict[str, str] | None = None) -> None:
        """Start the endpoint (the test's own chDB handle is released first) and wait for its port.

        ``users`` (name to password) makes it refuse every other credential, as ClickHouse does.
        """
        self.ws.release()
        env = {k: v for k, v in os.environ.items() if k != "CHHTTP_FAULT"}
        if fault:
            env["CHHTTP_FAULT"] = fault
        accepted = [arg for name, password in (users or {}).items() for arg in ("--user", f"{name}:{password}")]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHHTTP), "--path", str(self.ws.chdb_path), "--port", "0", *accepted],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=self.ws.root, env=env,
            )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            poller = select.poll()  # not select(): it refuses descriptors above 1024, and chDB holds many
            poller.register(self.proc.stdout, select.POLLIN)
            if poller.poll(200):
                line = self.proc.stdout.readline()
                if line.startswith("LISTENING "):
                    self.port = int(line.split()[1])
                    self.ws.source_dsn = self.dsn
                    return
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        self.kill()
        raise AssertionError(f"chhttp did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        """SIGTERM; the endpoint's exit code. Its own close waits up to 10 s for streams in
        flight, then chDB shuts down with the process, slowly on a loaded machine: 60 s."""
        assert self.proc is not None
        self.close_clients()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc = None

    def kill(self) -> None:
        self.close_clients()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.proc = None

    def wait_exit(self, timeout: float = 15) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.proc = None

    def client(self, database: str = "k2") -> Any:
        import clickhouse_connect

        client = clickhouse_connect.get_client(
            dsn=f"{self.url.replace('//', '//default@')}/{database}", compress=False, query_retries=0,
            autogenerate_session_id=False,
        )  # fmt: skip
        self._clients.append(client)
        return client

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows of a query on the source, read over the endpoint."""
        return [tuple(row) for row in self.client().query(sql).result_rows]

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def fault_status(self) -> tuple[str, int]:
        """The endpoint's fault spec (or "none") and how many times it fired."""
        with urllib.request.urlopen(f"{self.url}/_chhttp/fault", timeout=5) as response:  # noqa: S310 - http on loopback
            spec, fired = response.read().decode().split()
        return spec, int(fired)

    def set_fault(self, spec: str) -> str:
        """Set (or clear, with "") the endpoint's fault at run time; returns '<spec> <times fired>'."""
        request = urllib.request.Request(f"{self.url}/_chhttp/fault", data=spec.encode(), method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http on loopback
            return response.read().decode().strip()


def seed(ws: Workspace, rows: int) -> None:
    """Create and fill k2.trades with the test's own chDB handle, before the endpoint owns the directory."""
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(rows, start="2026-01-01 00:00:00", step_us=1000)
    ws.release()

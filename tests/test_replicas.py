"""Replicas sharing the tables, against the real state stores and a real `offloader run`.

Membership and the lease on both state backends (PostgreSQL, SQLite) with a clock the test
moves; the lock probe; the run history of an older database gaining its ``replica`` column;
a dependent table waiting for an upstream another runner holds instead of being skipped; and
the replica's identity in the run history, ``status``, ``history``, the logs and the metrics
of a real daemon. The three-replica SIGKILL test is in tests/test_http_source.py (the
replicas reach the source over the HTTP endpoint).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import Workspace, daemon, events, http_get, iceberg_rows, service_ws, trades_table, wait_for

from offloader.config import ReplicaConfig, StateConfig, TableConfig, connection_url
from offloader.replicas import FORGET_AFTER_LEASES, Membership
from offloader.state import RunRecord, StateStore

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
TABLES = [TableConfig(name=f"t{i}", source=f"k2.t{i}", target=f"cold.t{i}", layer="bronze", cursor=("ts",)) for i in range(30)]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def member(store: StateStore, replica: str, clock: Clock, lease: float = 10.0) -> Membership:
    return Membership(store, ReplicaConfig(id=replica, heartbeat=1.0, lease=lease), clock=clock, host="host-1", pid=4242)


def names(tables: list[TableConfig]) -> set[str]:
    return {t.name for t in tables}


# -- membership and the lease ------------------------------------------------------------------


def test_a_replica_row_is_refreshed_listed_and_removed(store: StateStore) -> None:
    """A heartbeat inserts the replica's row once and then refreshes it; leave deletes it; a replica silent for many leases is forgotten."""
    clock = Clock(T0)
    a = member(store, "pod-a", clock)
    a.beat()
    clock.now += 3
    a.beat()
    rows = store.replicas()
    assert [(r.replica_id, r.host, r.pid, r.started_at, r.heartbeat_at) for r in rows] == [("pod-a", "host-1", 4242, T0, T0 + 3)]
    a.leave()
    assert store.replicas() == []
    a.beat()
    clock.now += FORGET_AFTER_LEASES * 10 + 1
    member(store, "pod-b", clock).beat()
    assert [r.replica_id for r in store.replicas()] == ["pod-b"]


def test_a_dead_replica_s_tables_go_to_the_live_ones_once_its_lease_ran_out(store: StateStore) -> None:
    """Three replicas split the tables; one stops beating: within its lease nothing moves, past it only its tables move, and back it takes them again."""
    clock = Clock(T0)
    a, b, c = (member(store, r, clock) for r in ("pod-a", "pod-b", "pod-c"))
    for m in (a, b, c):
        m.beat()
    owned = {m.id: names(m.share(TABLES).mine) for m in (a, b, c)}
    assert all(owned.values()), owned
    assert set().union(*owned.values()) == names(TABLES) and sum(map(len, owned.values())) == len(TABLES)
    assert a.share(TABLES).elsewhere == {t: who for who, ts in owned.items() for t in ts if who != "pod-a"}

    clock.now += 8  # pod-c killed at T0: its lease (10 s) has not run out yet
    a.beat()
    b.beat()
    assert names(a.share(TABLES).mine) == owned["pod-a"] and names(b.share(TABLES).mine) == owned["pod-b"]
    assert a.share(TABLES).live == ["pod-a", "pod-b", "pod-c"]

    clock.now += 5  # pod-c silent for 13 s
    a.beat()
    b.beat()
    now_a, now_b = names(a.share(TABLES).mine), names(b.share(TABLES).mine)
    assert a.share(TABLES).live == ["pod-a", "pod-b"]
    assert now_a | now_b == names(TABLES) and not now_a & now_b
    assert now_a >= owned["pod-a"] and now_b >= owned["pod-b"], "a live replica keeps its tables"
    assert (now_a - owned["pod-a"]) | (now_b - owned["pod-b"]) == owned["pod-c"], "only the dead replica's tables move"

    c.beat()  # restarted under the same id (a pod name): its tables come back at once
    assert names(c.share(TABLES).mine) == owned["pod-c"]
    assert names(a.share(TABLES).mine) == owned["pod-a"]


def test_a_clean_leave_hands_the_tables_over_without_waiting_for_the_lease(store: StateStore) -> None:
    """A replica that shuts down cleanly deletes its row: at the next share the other owns every table."""
    clock = Clock(T0)
    a, b = member(store, "pod-a", clock), member(store, "pod-b", clock)
    a.beat()
    b.beat()
    assert names(a.share(TABLES).mine) != names(TABLES)
    b.leave()
    assert names(a.share(TABLES).mine) == names(TABLES)


def test_held_sees_a_lock_another_runner_holds_without_taking_it(store: StateStore, state_config: StateConfig) -> None:
    """held() is true while another runner holds the table's lock, false for a free one, and leaves the holder's lock in place."""
    other = StateStore(state_config)
    try:
        with other.lock("trades") as taken:
            assert taken
            assert store.held("trades") is True
            assert store.held("quotes") is False
            with store.lock("trades") as mine:
                assert mine is False, "the holder still holds it"
        assert store.held("trades") is False
    finally:
        other.close()


def test_an_older_run_history_gains_the_replica_column(state_config: StateConfig) -> None:
    """A database created before replicas (offloader_runs without `replica`) is migrated in place: old runs read back with no replica, new ones with theirs."""
    from sqlalchemy import create_engine, text

    if state_config.is_sqlite:
        Path(state_config.dsn[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(connection_url(state_config.dsn, None))
    old = (
        "CREATE TABLE offloader_runs (run_id TEXT PRIMARY KEY, table_name TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,"
        " finished_at DOUBLE PRECISION, window_lo TEXT, window_hi TEXT, windows INTEGER NOT NULL DEFAULT 0,"
        " rows_written BIGINT NOT NULL DEFAULT 0, bytes_written BIGINT NOT NULL DEFAULT 0, files_written INTEGER NOT NULL DEFAULT 0,"
        " snapshot_id BIGINT, duration_seconds DOUBLE PRECISION, outcome TEXT NOT NULL, error_class TEXT, error_message TEXT)"
    )
    with engine.begin() as conn:
        conn.execute(text(old))
        conn.execute(
            text("INSERT INTO offloader_runs (run_id, table_name, started_at, outcome) VALUES ('old', 'trades', 1, 'committed')")
        )
    engine.dispose()
    store = StateStore(state_config)
    try:
        store.migrate()
        store.migrate()  # idempotent
        store.record_run(RunRecord(run_id="new", table_name="trades", started_at=2, outcome="committed", replica="pod-a"))
        assert [(r.run_id, r.replica) for r in store.runs("trades")] == [("new", "pod-a"), ("old", None)]
    finally:
        store.close()


# -- a dependent and its upstream held elsewhere ----------------------------------------------


@pytest.mark.parametrize("upstream", ["in_the_cycle", "owned_elsewhere"])
def test_a_dependent_waits_for_an_upstream_held_elsewhere_and_then_runs(ws: Workspace, upstream: str) -> None:
    """While another runner holds the upstream's lock the dependent waits (info lines only); once it is let go the dependent runs and commits instead of being skipped."""
    ws.tables = [
        trades_table(),
        trades_table("silver", source="k2.silver", target="cold.silver", layer="silver", depends_on=["trades"]),
    ]
    ws.create_trades()
    ws.create_trades("silver")
    ws.insert_trades(300)
    ws.insert_trades(200, table="k2.silver")
    app = ws.app()
    tables = app.config.ordered_tables() if upstream == "in_the_cycle" else [app.config.table("silver")]
    elsewhere = {"trades": "pod-b"} if upstream == "owned_elsewhere" else None
    other = StateStore(app.config.state)  # the other runner: another session on the same state database
    results: list[Any] = []
    try:
        with structlog.testing.capture_logs() as logs:
            with other.lock("trades") as taken:
                assert taken
                cycle = threading.Thread(target=lambda: results.extend(app.run_cycle(tables, elsewhere=elsewhere)))
                cycle.start()
                wait_for(lambda: events(logs, "upstream_held_elsewhere"), what="the dependent waiting")
                assert cycle.is_alive() and not events(logs, "table_started"), "nothing ran while the upstream was held"
            cycle.join(timeout=300)
        assert not cycle.is_alive()
    finally:
        other.close()
        app.close()
    by_table = {r.table: r for r in results}
    assert by_table["silver"].outcome == "committed" and by_table["silver"].rows == 200, by_table["silver"]
    assert iceberg_rows(ws, "cold.silver") == 200
    if upstream == "in_the_cycle":
        assert by_table["trades"].held_elsewhere, by_table["trades"]
        assert [e["table"] for e in events(logs, "table_held_elsewhere")] == ["trades"]
    assert events(logs, "upstream_released") and not events(logs, "table_skipped")
    loud = [e for e in logs if e["log_level"] in {"warning", "error", "critical"}]
    assert loud == [], loud


# -- the identity of a replica -----------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text; None when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if not line.startswith("#") and sample == name and ",".join(sorted(label_text.rstrip("}").split(","))) == want:
            return float(value)
    return None


def test_the_replica_id_is_in_run_history_status_logs_and_metrics(ws: Workspace) -> None:
    """`offloader run` with OFFLOADER__REPLICA__ID: its runs, /status, /metrics and every log line carry the id; a clean stop deletes its row; status and history show it after."""
    port = service_ws(ws)
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(500)
    log_path = ws.root / "service.log"
    state = StateStore(StateConfig(dsn=ws.pg_dsn))
    with log_path.open("w") as log, daemon(ws, {"OFFLOADER__REPLICA__ID": "pod-x"}, stdout=log, stderr=subprocess.STDOUT) as proc:
        wait_for(lambda: iceberg_rows(ws) == 500, what="rows")
        text = wait_for(
            lambda: (t := http_get(port, "/metrics")[1]) and metric(t, "offloader_table_owned", table="trades") == 1 and t,
            what="metrics",
        )
        assert metric(text, "offloader_replica_info", replica="pod-x", host=socket.gethostname()) == 1
        assert metric(text, "offloader_replicas_live") == 1
        assert metric(text, "offloader_table_held_elsewhere_total", table="trades") == 0
        status = wait_for(
            lambda: (s := json.loads(http_get(port, "/status")[1])) and s["tables"][0]["last_run"] and s, what="status"
        )
        table = status["tables"][0]
        assert table["owner"] == "pod-x" and table["last_run"]["replica"] == "pod-x", status
        assert status["replica"] == "pod-x" and [r["replica_id"] for r in status["replicas"]] == ["pod-x"], status
        assert [r.replica_id for r in state.replicas()] == ["pod-x"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    try:
        assert state.replicas() == [], "a clean shutdown deletes the replica's row"
        runs = state.runs("trades")
        assert runs and {r.replica for r in runs} == {"pod-x"}
    finally:
        state.close()
    lines = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.startswith("{")]
    assert len(lines) > 5 and all(ln.get("replica") == "pod-x" for ln in lines), [
        ln for ln in lines if ln.get("replica") != "pod-x"
    ][:3]
    shown = ws.cli("status")
    assert shown.returncode == 0, shown.stderr
    assert " by pod-x" in shown.stdout and "live replicas: none" in shown.stdout, shown.stdout
    history = ws.cli("history", "--table", "trades")
    assert history.stdout.splitlines()[1].split()[8] == "pod-x", history.stdout

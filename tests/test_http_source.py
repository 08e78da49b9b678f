"""offloader against a remote ClickHouse over HTTP, the production path.

The source is a ClickHouse HTTP endpoint served from chDB (tests/chhttp.py) in a subprocess
of its own: that process owns the chDB directory, so the test reads the source over HTTP
too (clickhouse-connect), and `offloader once` runs as a real subprocess talking HTTP to it.
Iceberg is read back with PyIceberg.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from endpoint import Endpoint, seed
from helpers import Workspace, assert_exact, daemon, iceberg_rows, service_ws, trades_table, wait_for
from storage import free_port


def start_once(ws: Workspace) -> subprocess.Popen[str]:
    """`offloader once` as a subprocess, not waited for."""
    return ws.start("once")


def failed_line(stderr: str, table: str = "trades") -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith(f"{table}: FAILED:")]
    assert len(lines) == 1, f"expected one failure line for {table}, stderr:\n{stderr}"
    return lines[0]


# ---------------------------------------------------------------------------------------


def test_endpoint_speaks_what_offloader_uses(ws: Workspace, endpoint: Endpoint) -> None:
    """Over the endpoint, clickhouse-connect does DDL, INSERT ... SELECT, Native and Arrow queries, a streamed ArrowStream, server-side parameters and errors."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from offloader.clickhouse import HttpEngine
    from offloader.config import SourceConfig
    from offloader.errors import SourceError

    ws.chdb_path.mkdir(parents=True)
    endpoint.start()
    endpoint.client(database="").command("CREATE DATABASE IF NOT EXISTS k2")  # the DSN's database must exist
    client = endpoint.client()
    client.command("CREATE TABLE k2.t (ts DateTime64(6, 'UTC'), n UInt64, s String) ENGINE = MergeTree ORDER BY (ts, n)")
    client.command(
        "INSERT INTO k2.t SELECT toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalMicrosecond(number), number, "
        "toString(number) FROM numbers({n:UInt64})",
        parameters={"n": 300_000},
    )
    assert client.database == "k2"
    assert client.query("SELECT currentDatabase(), count() FROM t").result_rows == [("k2", 300_000)]
    counted = client.query_arrow(
        "SELECT count() AS c FROM t WHERE ts <= {hi:DateTime64(9, 'UTC')}", parameters={"hi": "2026-01-01 00:00:00.000999"}
    )
    assert counted.column("c").to_pylist() == [1000]
    tricky = "tab\there 'quote' back\\slash\nline `tick`"
    assert client.query("SELECT {s:String}", parameters={"s": tricky}).result_rows == [(tricky,)]
    assert client.query("SELECT name FROM system.tables WHERE database = {db:String}", parameters={"db": "k2"}).result_rows == [
        ("t",)
    ]

    with client.query_arrow_stream("SELECT n FROM t ORDER BY n") as stream:
        pieces = [piece.num_rows for piece in stream]
    assert sum(pieces) == 300_000 and len(pieces) > 1  # streamed in pieces, all of them

    with pytest.raises(DatabaseError, match=r"Code: 60\..*(Unknown table|does not exist)"):
        client.query_arrow("SELECT * FROM k2.nosuch")
    with pytest.raises(DatabaseError, match="UNKNOWN_IDENTIFIER"):
        client.command("INSERT INTO k2.t SELECT nosuch")

    engine = HttpEngine(SourceConfig(dsn=endpoint.dsn))
    try:
        assert engine.rows("SELECT count() FROM t WHERE n < {n:UInt64}", {"n": 10}) == [(10,)]
        assert sum(batch.num_rows for batch in engine.stream("SELECT * FROM t")) == 300_000
        with pytest.raises(SourceError, match=r"ClickHouse query failed \(http://default@127.0.0.1:\d+/k2\): .*Code: 60\."):
            engine.rows("SELECT * FROM nosuch")
    finally:
        engine.close()
    assert endpoint.stop() == 0


def test_offload_over_http_is_exact(ws: Workspace, endpoint: Endpoint) -> None:
    """`offloader once` reading the source over HTTP leaves Iceberg equal to the source row for row, and a re-run adds nothing."""
    seed(ws, 50_000)
    ws.source["max_window"] = "10s"
    endpoint.start()
    done = ws.run_once()
    assert done.returncode == 0, done.stderr
    assert "trades: committed 50,000 rows in 5 window(s)" in done.stdout
    assert_exact(ws, source=endpoint.rows, rows=50_000)

    again = ws.run_once()
    assert again.returncode == 0, again.stderr
    assert "trades: nothing new" in again.stdout
    assert_exact(ws, source=endpoint.rows, rows=50_000)
    assert endpoint.stop() == 0


def test_two_runners_at_once_over_http(ws: Workspace, endpoint: Endpoint) -> None:
    """Two `offloader once` processes started together on the same table: every row lands once, one commits, the other skips or finds nothing new."""
    seed(ws, 100_000)
    ws.source["max_window"] = "10s"
    endpoint.start()
    runners = [start_once(ws), start_once(ws)]
    outputs = [runner.communicate(timeout=120) for runner in runners]
    for runner, (out, err) in zip(runners, outputs, strict=True):
        assert runner.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    stdouts = sorted((out for out, _ in outputs), key=lambda out: "committed" not in out)
    assert "trades: committed 100,000 rows in 10 window(s)" in stdouts[0], stdouts
    assert "trades: skipped: another runner holds this table's lock" in stdouts[1] or "trades: nothing new" in stdouts[1], stdouts
    assert_exact(ws, source=endpoint.rows, rows=100_000)
    assert len(ws.iceberg_table("cold.trades").snapshots()) == 10
    assert endpoint.stop() == 0


@pytest.mark.parametrize("fault", ["die:1000000", "reset:1000000", "stall:1000000:5"])
def test_endpoint_failing_mid_stream(ws: Workspace, endpoint: Endpoint, fault: str) -> None:
    """The endpoint dying, resetting the connection or stalling mid-stream fails the run with one line naming ClickHouse and commits nothing; once it is healthy again a re-run is exact."""
    seed(ws, 100_000)  # one window of ~7 MB of ArrowStream: the fault fires after 1 MB
    ws.source["query_timeout"] = "2s"
    endpoint.start(fault=fault)
    failed = ws.run_once()  # a stall outlasting the 2 s query timeout fails too, instead of waiting it out
    assert failed.returncode == 1, failed.stdout + failed.stderr
    line = failed_line(failed.stderr)
    assert "ClickHouse" in line and endpoint.url.removeprefix("http://") in line, line
    assert "Traceback" not in failed.stderr
    assert iceberg_rows(ws) == 0

    if fault.startswith("die"):
        assert endpoint.wait_exit() == 17  # the endpoint really died mid-stream
        endpoint.start()  # restarted, on a new port
    else:
        assert endpoint.fault_status()[1] >= 1  # the run failed because the fault fired mid-stream
        assert endpoint.set_fault("").startswith("none")
    ws.source["query_timeout"] = "60s"
    rerun = ws.run_once()
    assert rerun.returncode == 0, rerun.stderr
    assert "trades: committed 100,000 rows in 1 window(s)" in rerun.stdout
    assert_exact(ws, source=endpoint.rows, rows=100_000)
    assert endpoint.stop() == 0


def test_clickhouse_not_there(ws: Workspace) -> None:
    """A ClickHouse server that is not there (a closed port) fails the run with exit 1 and a message naming the source and its address, without a traceback."""
    port = free_port()  # nothing listens there
    ws.tables = [trades_table()]
    ws.source_dsn = f"http://default@127.0.0.1:{port}/k2"
    done = ws.run_once(timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    line = failed_line(done.stderr)
    assert "ClickHouse" in line and f"127.0.0.1:{port}" in line, line
    assert "Traceback" not in done.stderr, done.stderr


def test_refused_credentials_fail_once_and_are_never_retried(ws: Workspace, endpoint: Endpoint) -> None:
    """ClickHouse refusing offloader's password (516 AUTHENTICATION_FAILED) fails `once` with exit 1 and one "authentication failed" line, without a retry."""
    seed(ws, 100)
    ws.schedule.update(retry_attempts=3, retry_backoff="0s")
    right, wrong = "the-right-one", "not-the-right-one"
    endpoint.start(users={"offloader": right})
    ws.source_dsn = f"http://offloader@127.0.0.1:{endpoint.port}/k2"
    done = ws.cli("once", env={"OFFLOADER__SOURCE__PASSWORD": wrong}, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    line = failed_line(done.stderr)
    assert line.startswith(f"trades: FAILED: authentication failed at {ws.source_dsn}: "), line
    assert "AUTHENTICATION_FAILED" in line, line
    assert '"table_retry"' not in done.stderr, done.stderr
    assert wrong not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert iceberg_rows(ws) == 0

    accepted = ws.cli("once", env={"OFFLOADER__SOURCE__PASSWORD": right}, timeout=120)
    assert accepted.returncode == 0, accepted.stderr
    assert "trades: committed 100 rows" in accepted.stdout
    assert endpoint.stop() == 0


def test_a_run_that_fails_before_it_starts_is_in_the_history_and_status_exits_1(ws: Workspace) -> None:
    """A run whose ClickHouse is not there is recorded as a failed run with its error, which `history` and `status` show, and `status` exits 1."""
    port = free_port()  # nothing listens there
    ws.tables = [trades_table()]
    ws.source_dsn = f"http://default@127.0.0.1:{port}/k2"
    done = ws.run_once(timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    reason = failed_line(done.stderr).removeprefix("trades: FAILED: ")

    history = ws.cli("history", timeout=60)
    assert history.returncode == 0, history.stderr
    _header, run = history.stdout.splitlines()
    assert run.split()[2:5] == ["trades", "failed", "0"] and run.endswith(f"  SourceError: {reason}"), run
    assert reason == f"cannot connect to ClickHouse at {ws.source_dsn}: connection refused", reason

    status = ws.cli("status", timeout=60)
    assert status.returncode == 1, status.stdout + status.stderr
    header, row, legend, replicas = status.stdout.splitlines()
    assert legend.startswith("lag: newest source row minus the cursor"), status.stdout
    assert replicas == "live replicas: none", status.stdout
    assert row.startswith("trades ") and " failed " in row, status.stdout
    assert f"trades: cannot connect to ClickHouse at {ws.source_dsn}: " in status.stderr, status.stderr
    assert "Traceback" not in status.stderr, status.stderr


def test_check_and_repair_over_http(ws: Workspace, endpoint: Endpoint) -> None:
    """`check` over the HTTP source sums the Iceberg side on an in-memory embedded engine; a late row is found and repaired."""
    seed(ws, 20_000)
    endpoint.start()
    done = ws.run_once()
    assert done.returncode == 0, done.stderr
    endpoint.client().command(
        "INSERT INTO k2.trades SELECT toDateTime64('2026-01-01 00:00:05', 3, 'UTC'), toDateTime64('2026-01-01 00:00:05.0005', 6, 'UTC'), "
        "999999, 'BTC-USDT', 'buy', toDecimal64(1, 8), toDecimal64(1, 8)"
    )
    found = ws.cli("check")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "clickhouse=20,001  iceberg=20,000  (-1)" in found.stdout
    fixed = ws.cli("check", "--repair")
    assert fixed.returncode == 0 and "trades: repaired" in fixed.stdout, fixed.stdout + fixed.stderr
    assert_exact(ws, source=endpoint.rows, rows=20_001)
    assert endpoint.stop() == 0


def test_the_service_over_http_is_exact_and_keeps_pandas_out_of_memory(ws: Workspace, endpoint: Endpoint) -> None:
    """`offloader run` with a remote source offloads exactly, and never maps pandas (only the embedded engine needs it)."""
    from helpers import wait_for

    seed(ws, 20_000)
    service_ws(ws, interval="1s")
    endpoint.start()
    with daemon(ws) as proc:
        wait_for(lambda: iceberg_rows(ws, "cold.trades") == 20_000, what="rows offloaded by the service")
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "/pyarrow/" in maps and "/pyiceberg" in maps, "the service has written: its libraries are mapped"
        assert "/pandas/" not in maps, "a service with a remote source loaded pandas"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert_exact(ws, source=endpoint.rows, rows=20_000)
    assert endpoint.stop() == 0


def _children(pid: int) -> list[str]:
    """The command lines of ``pid``'s child processes."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                out.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except FileNotFoundError:
                pass
    return out


def test_the_service_checks_a_remote_source_without_keeping_the_embedded_engine(ws: Workspace, endpoint: Endpoint) -> None:
    """The daily check of a service with a remote source sums the Iceberg side in a helper process
    that ends with the check: the service never maps chDB, and no helper is left behind."""
    seed(ws, 20_000)
    service_ws(ws, interval="1s")
    ws.schedule["maintenance_cron"] = "* * * * *"  # a maintenance slot (and its check) every minute
    endpoint.start()
    with daemon(ws) as proc:
        wait_for(lambda: iceberg_rows(ws, "cold.trades") == 20_000, what="rows offloaded by the service")
        from offloader.state import StateStore

        state = StateStore(ws.config().state)

        def checked() -> bool:
            return any(a.outcome == "ok" for a in state.audits("trades", "check"))

        wait_for(checked, timeout=150, what="the service's consistency check of trades")
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "/chdb/" not in maps, "the service loaded the embedded engine into its own process"
        assert not [c for c in _children(proc.pid) if "serve_arrow" not in c], "the service started other processes"
        wait_for(lambda: not any("serve_arrow" in c for c in _children(proc.pid)), what="the checksum process to end")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    check = next(a for a in state.audits("trades", "check") if a.outcome == "ok")
    state.close()
    found = json.loads(check.detail or "{}")
    assert found["buckets"] > 0 and found["differing"] == [], f"the check found differences: {check.detail}"
    assert (found["missing_rows"], found["extra_rows"]) == (0, 0), check.detail
    assert_exact(ws, source=endpoint.rows, rows=20_000)
    assert endpoint.stop() == 0


# -- replicas ---------------------------------------------------------------------------------

REPLICA_IDS = ("replica-0", "replica-1", "replica-2")
# Owners by rendezvous over REPLICA_IDS: trades and quotes replica-1, orders replica-0, trades_silver
# (a dependent of trades, owned by another replica than its upstream) replica-2.
CHAOS_TABLES = ("trades", "quotes", "orders", "trades_silver")
CHAOS_SECONDS = 45


def _feed(endpoint: Endpoint, stop: threading.Event, rng: random.Random, fed: dict[str, int]) -> None:
    """The live feed: rows with the server's current time land in every source table until ``stop``."""
    client = endpoint.client()
    first = 10_000_000
    while not stop.wait(0.1):
        for table in CHAOS_TABLES:
            n = rng.randint(1, 200)
            client.command(
                f"INSERT INTO k2.{table} SELECT now64(3), now64(6) + toIntervalMicrosecond(number), {{first:UInt64}} + number, "
                "['BTC-USDT', 'ETH-USDT'][number % 2 + 1], if(number % 2 = 0, 'buy', 'sell'), toDecimal64(30000, 8), "
                "toDecimal64(0.5, 8) FROM numbers({n:UInt64})",
                parameters={"first": first, "n": n},
            )
            first += n
            fed[table] += n


def _log_entries(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """The JSON log lines each incarnation of each replica wrote, by log file name (``<replica>.<n>.log``)."""
    return {
        path.name: [json.loads(ln) for ln in path.read_text().splitlines() if ln.startswith("{")]
        for path in sorted(folder.glob("*.log"))
    }


@pytest.mark.slow
def test_three_replicas_killed_and_restarted_at_random_stay_exact_and_share_the_work(ws: Workspace, endpoint: Endpoint) -> None:
    """Three `offloader run` replicas on one config, SIGKILLed and restarted at random while rows keep arriving: Iceberg equals the source row for row, every table progressed, the tables were shared by owner, and no log line warns about locks."""
    from offloader.config import StateConfig
    from offloader.replicas import assign
    from offloader.state import StateStore

    seed_value = int(os.environ.get("OFFLOADER_CHAOS_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed_value)  # noqa: S311 - the test's kill schedule, repeatable from its seed
    ws.tables = [trades_table(t, source=f"k2.{t}", target=f"cold.{t}") for t in CHAOS_TABLES[:3]]
    ws.tables.append(
        trades_table(
            "trades_silver", source="k2.trades_silver", target="cold.trades_silver", layer="silver", depends_on=["trades"]
        )
    )
    for table in CHAOS_TABLES:
        ws.create_trades(table)
        ws.insert_trades(20_000, table=f"k2.{table}")
    ws.release()
    ws.source.update(safety_lag="2s")  # a fed row is visible well before a window reaches its time
    ws.schedule.update(interval="3s", shutdown_timeout="30s")
    ws.server.update(enabled=False)
    endpoint.start()
    catalog = ws.storage.catalog()  # the SQL catalog creates its tables before the replicas race for them
    if hasattr(catalog, "engine"):
        catalog.engine.dispose()

    logs = ws.root / "replica-logs"
    logs.mkdir()
    running: dict[str, tuple[subprocess.Popen[str], Any]] = {}
    starts: dict[str, int] = dict.fromkeys(REPLICA_IDS, 0)
    ended: dict[tuple[str, int], float] = {}  # (replica, incarnation) -> when it was killed (epoch)

    def launch(replica: str) -> None:
        starts[replica] += 1
        out = (logs / f"{replica}.{starts[replica]}.log").open("w")
        env = {"OFFLOADER__REPLICA__ID": replica, "OFFLOADER__REPLICA__HEARTBEAT": "0.5s", "OFFLOADER__REPLICA__LEASE": "2.5s"}
        running[replica] = (ws.start("run", env=env, stdout=out, stderr=subprocess.STDOUT), out)

    fed = dict.fromkeys(CHAOS_TABLES, 0)
    stop_feed = threading.Event()
    feed_rng = random.Random(seed_value + 1)  # noqa: S311 - the feed's sizes, repeatable from the seed
    feed = threading.Thread(target=_feed, args=(endpoint, stop_feed, feed_rng, fed), daemon=True)
    kills = 0
    try:
        for replica in REPLICA_IDS:
            launch(replica)
        feed.start()
        deadline = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(1.0, 5.0))
            victim = rng.choice(REPLICA_IDS)
            proc, out = running.pop(victim)
            proc.kill()
            proc.wait(timeout=30)
            ended[(victim, starts[victim])] = time.time()
            out.close()
            kills += 1
            time.sleep(rng.uniform(0.0, 4.0))
            launch(victim)
        stop_feed.set()
        feed.join(timeout=60)
        assert not feed.is_alive()

        def caught_up() -> bool:
            return all(iceberg_rows(ws, f"cold.{t}") == endpoint.rows(f"SELECT count() FROM k2.{t}")[0][0] for t in CHAOS_TABLES)

        wait_for(caught_up, timeout=300, what=f"the replicas to catch up (seed {seed_value})")
        for proc, _ in running.values():
            proc.send_signal(signal.SIGTERM)
        for replica, (proc, _) in running.items():
            assert proc.wait(timeout=120) == 0, f"{replica} did not stop cleanly (seed {seed_value})"
    finally:
        stop_feed.set()
        for proc, out in running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()

    assert kills >= 5
    for table in CHAOS_TABLES:
        assert fed[table] > 0
        assert_exact(ws, table=f"k2.{table}", target=f"cold.{table}", source=endpoint.rows, rows=20_000 + fed[table])

    state = StateStore(StateConfig(dsn=ws.pg_dsn))
    try:
        runs = [r for r in state.runs(limit=1_000_000) if r.outcome in {"committed", "nothing_new"}]
        assert state.replicas() == [], "every replica stopped cleanly deletes its row"
    finally:
        state.close()
    owners = assign(CHAOS_TABLES, REPLICA_IDS)
    assert set(owners.values()) == set(REPLICA_IDS), owners
    by_replica = Counter(r.replica for r in runs)
    assert len(by_replica) > 1 and set(by_replica) <= set(REPLICA_IDS), by_replica
    # While a table's owner serves, the others leave the table to it; they take it over only
    # while the owner is down (killed, or still starting). So count the runs started while the
    # owner was serving: from its service_started (plus a lease and a cycle, for a run already in
    # flight elsewhere) to its kill. Under load a replica can be killed before it ever serves.
    by_file = _log_entries(logs)
    serving: dict[str, list[tuple[float, float]]] = {r: [] for r in REPLICA_IDS}
    for replica in REPLICA_IDS:
        for n in range(1, starts[replica] + 1):
            up = next((e["timestamp"] for e in by_file[f"{replica}.{n}.log"] if e["event"] == "service_started"), None)
            if up is not None:
                since = datetime.fromisoformat(up.replace("Z", "+00:00")).timestamp() + 2.5 + 3.0
                serving[replica].append((since, ended.get((replica, n), float("inf"))))
    shared = 0
    for table in CHAOS_TABLES:
        mine = [r for r in runs if r.table_name == table]
        assert any(r.outcome == "committed" and r.rows_written > 0 for r in mine), f"{table} never progressed"
        owner = owners[table]
        while_up = [r for r in mine if any(lo <= r.started_at < hi for lo, hi in serving[owner])]
        by_owner = sum(r.replica == owner for r in while_up)
        assert 2 * by_owner > len(while_up) or len(while_up) < 3, (
            f"{table}: {by_owner} of the {len(while_up)} runs while its owner {owner} served were by it, "
            f"others {dict(Counter(r.replica for r in while_up if r.replica != owner))} (seed {seed_value})"
        )
        shared += len(while_up) >= 3
    assert shared >= 2, f"too few runs while the owners served to see the sharing: {serving} (seed {seed_value})"

    entries = [e for lines in by_file.values() for e in lines]
    assert entries and all(e.get("replica") in REPLICA_IDS for e in entries)
    loud = [e for e in entries if e.get("level") in {"warning", "error", "critical"}]
    about_locks = [e for e in loud if "lock" in json.dumps(e).lower()]
    assert about_locks == [], about_locks[:5]
    assert not [e for e in entries if e["event"] == "table_locked"]
    assert endpoint.stop() == 0

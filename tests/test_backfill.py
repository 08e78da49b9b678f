"""`offloader backfill`: a table's history in slices, written by parallel workers, committed in order.

Each test ends comparing the cold tier with the source row for row. Worker processes need
the source over HTTP (only one process may open a chDB directory), so most tests run
tests/chhttp.py; the Ray tests start a real local Ray instance (`ray start --head`, 2 CPUs).
Kills are real SIGKILLs: of a worker process found under the driver (or a Ray worker running
the slice task), and of the driver itself at a named point (offloader/faults.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from endpoint import Endpoint
from helpers import ROOT, Workspace, assert_exact, clean_env, trades_table
from storage import free_port
from test_http_source import seed

SLOW = {"OFFLOADER_SLOW_AT": "after_write:2"}  # each slice held 2 s after its files are written
# a throwaway local cluster: no auth token (one left in ~/.ray by another instance would not match), no usage stats
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def backfill(
    ws: Workspace, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return ws.cli("backfill", "--table", "trades", *args, env=env, timeout=timeout)


def slices_committed(ws: Workspace) -> list[dict[str, str]]:
    """The summaries of the backfill's snapshots, oldest first."""
    table = ws.iceberg_table("cold.trades")
    return [
        dict(s.summary.additional_properties)
        for s in table.snapshots()
        if "offloader.backfill-slice" in s.summary.additional_properties
    ]


def processes(match: str) -> dict[int, str]:
    """Processes whose command line contains ``match``: pid to command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if match in cmdline:
            found[int(entry.name)] = cmdline
    return found


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def wait_for_worker(parent: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(parent_of(pid) == parent for pid in processes("multiprocessing.spawn")):
        assert time.monotonic() < deadline, f"no worker process of {parent} appeared in {timeout:.0f}s"
        time.sleep(0.1)


def kill_one(match: str, parent: int | None = None, settle: float = 3.0, timeout: float = 60) -> int:
    """SIGKILL a process whose command line has ``match`` (a child of ``parent``, if given)
    ``settle`` seconds after it appears, so that it is busy with a slice; its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [pid for pid in processes(match) if pid != os.getpid() and (parent is None or parent_of(pid) == parent)]
        if found:
            time.sleep(settle)
            try:
                os.kill(found[0], signal.SIGKILL)
            except ProcessLookupError:  # gone meanwhile (the pool stops its other workers when one dies): look again
                continue
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no process matching {match!r} appeared in {timeout:.0f}s")


def assert_in_cursor_order(summaries: list[dict[str, str]]) -> None:
    """Each committed slice moved the cursor forward, and no slice was committed twice per run."""
    cursors = [json.loads(s["offloader.cursor"]) for s in summaries]
    assert cursors == sorted(cursors), cursors
    per_run = [(s["offloader.run-id"], s["offloader.backfill-slice"]) for s in summaries]
    assert len(per_run) == len(set(per_run)), per_run


# ---------------------------------------------------------------------------------------


def test_backfill_in_process_never_splits_ties_and_the_cycle_carries_on(ws: Workspace) -> None:
    """In one process on the embedded engine: slices end at a time (a thousand rows share each), rows land once, and `once` goes on from the backfill's marker."""
    ws.tables = [trades_table()]
    ws.create_trades()
    for second in range(12):  # twelve instants, a thousand rows each
        ws.insert_trades(1000, start=f"2026-01-01 00:00:{second:02d}", same_ts=True, first_seq=second * 1000)
    done = backfill(ws, "--slice-rows", "1500")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trades: backfilled 12,000 rows in 6 slice(s) with 1 worker(s)" in done.stdout, done.stdout
    summaries = slices_committed(ws)
    assert [int(s["offloader.source-rows"]) for s in summaries] == [
        2000
    ] * 6  # 1,500 rows end inside an instant: it is taken whole
    assert_in_cursor_order(summaries)
    assert_exact(ws, rows=12_000)

    ws.insert_trades(500, start="2026-01-01 00:01:00", first_seq=100_000)
    carried = ws.run_once()
    assert carried.returncode == 0, carried.stderr
    assert "trades: committed 500 rows in 1 window(s)" in carried.stdout
    assert_exact(ws, rows=12_500)
    again = backfill(ws)
    assert again.returncode == 0 and "trades: nothing to backfill" in again.stdout, again.stdout + again.stderr


def test_backfill_from_and_to_and_the_refusals(ws: Workspace) -> None:
    """--from starts a new table at a time, --to ends it; a --from past the cursor, a bad time and several workers on the embedded engine are refused with a message."""
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(3600, start="2026-01-01 00:00:00", step_us=1_000_000)  # one row a second for an hour
    part = backfill(ws, "--from", "2026-01-01 00:10:00", "--to", "2026-01-01 00:19:59.5")
    assert part.returncode == 0, part.stderr
    assert "trades: backfilled 600 rows" in part.stdout, part.stdout
    seconds = sorted(r[0] for r in ws.engine.rows("SELECT toUnixTimestamp(ingestion_timestamp) FROM k2.trades"))
    assert sorted(r[0] for r in ws.duckdb_rows("cold.trades", "epoch(ingestion_timestamp)::BIGINT")) == seconds[600:1200]

    ahead = backfill(ws, "--from", "2026-01-01 00:30:00")
    assert ahead.returncode == 2, ahead.stdout + ahead.stderr
    assert "--from 2026-01-01 00:30:00 is after the committed cursor of trades" in ahead.stderr, ahead.stderr
    bad = backfill(ws, "--to", "yesterday")
    assert bad.returncode == 2 and "--to 'yesterday' is not a time" in bad.stderr, bad.stderr
    many = backfill(ws, "--workers", "2")
    assert many.returncode == 2 and "--workers 2 needs a ClickHouse server" in many.stderr, many.stderr
    assert "Traceback" not in ahead.stderr + bad.stderr + many.stderr

    rest = backfill(ws)  # from the cursor (00:19:59) to the end
    assert rest.returncode == 0 and "trades: backfilled 2,400 rows" in rest.stdout, rest.stdout + rest.stderr
    assert sorted(r[0] for r in ws.duckdb_rows("cold.trades", "epoch(ingestion_timestamp)::BIGINT")) == seconds[600:]


def test_two_worker_processes_a_killed_worker_and_a_cycle_that_skips(ws: Workspace, endpoint: Endpoint) -> None:
    """Two local worker processes over HTTP: one SIGKILLed as it starts and one mid-slice, their slices taken again; a cycle started meanwhile skips the locked table; the end is exact, each slice committed once in order."""
    seed(ws, 200_000)
    ws.source["max_window"] = "60s"
    endpoint.start()
    driver = ws.start("backfill", "--table", "trades", "--workers", "2", "--slice-rows", "20000", env=SLOW)
    wait_for_worker(driver.pid)  # workers start only once the driver holds the table's lock
    first = kill_one("multiprocessing.spawn", parent=driver.pid, settle=0)  # while it starts: the pool breaks under a submit
    cycle = ws.run_once()
    assert cycle.returncode == 0, cycle.stderr
    assert "trades: skipped: another runner holds this table's lock" in cycle.stdout, cycle.stdout
    killed = kill_one("multiprocessing.spawn", parent=driver.pid, settle=0.5)  # a worker, busy with (or held after) a slice
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, out + err
    assert "trades: backfilled 200,000 rows in 10 slice(s) with 2 worker(s)" in out, out
    assert not {first, killed} & set(processes("multiprocessing.spawn"))
    summaries = slices_committed(ws)
    assert len(summaries) == 10
    assert_in_cursor_order(summaries)
    assert_exact(ws, source=endpoint.rows, rows=200_000)


def test_a_killed_driver_resumes_from_the_committed_marker(ws: Workspace, endpoint: Endpoint) -> None:
    """The driver SIGKILLed after its second commit: the next backfill carries on from the marker, every file a snapshot references is on disk, and no row is there twice."""
    seed(ws, 150_000)
    ws.source["max_window"] = "60s"
    endpoint.start()
    died = backfill(ws, "--workers", "2", "--slice-rows", "20000", env={"OFFLOADER_KILL_AT": "after_commit:2"})
    assert died.returncode == -signal.SIGKILL, died.stdout + died.stderr
    assert len(slices_committed(ws)) == 2
    rerun = backfill(ws, "--workers", "2", "--slice-rows", "20000")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "trades: backfilled 110,000 rows in 6 slice(s)" in rerun.stdout, rerun.stdout
    assert_in_cursor_order(slices_committed(ws))
    assert_exact(ws, source=endpoint.rows, rows=150_000)
    table = ws.iceberg_table("cold.trades")
    live = {task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()}
    written = {str(p) for p in ws.warehouse.rglob("*.parquet")}
    # Whether the dead driver's workers had written the slices in flight depends on timing: such
    # files, when there are any, are unreferenced and left to orphan removal; none is referenced.
    assert live <= written, sorted(live - written)


# -- on Ray ------------------------------------------------------------------------------


@pytest.fixture
def ray_head() -> Iterator[str]:
    """A local Ray instance of 2 CPUs (`ray start --head`); its address. Its workers hold each slice 2 s."""
    port = free_port()
    ray = str(Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "ray")
    ray = ray if os.path.exists(ray) else "ray"
    env = clean_env(**SLOW, **RAY_ENV)
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    started = subprocess.run(
        [ray, "start", "--head", "--num-cpus", "2", "--port", str(port), "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp}"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_backfill_on_ray_survives_a_killed_worker_and_a_killed_driver(ws: Workspace, endpoint: Endpoint, ray_head: str) -> None:
    """On a local Ray instance: the driver SIGKILLed after its second commit, then a Ray worker SIGKILLed mid-slice in the rerun (Ray takes the task again); the end is exact."""
    seed(ws, 120_000)
    ws.source["max_window"] = "60s"
    endpoint.start()
    args = ("--ray", ray_head, "--workers", "2", "--slice-rows", "20000")
    died = backfill(ws, *args, env={"OFFLOADER_KILL_AT": "after_commit:2", **RAY_ENV})
    assert died.returncode == -signal.SIGKILL, died.stdout + died.stderr
    assert len(slices_committed(ws)) == 2

    driver = ws.start("backfill", "--table", "trades", *args, env=RAY_ENV)
    killed = kill_one("ray::write_backfill_slice")
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, out + err
    assert "trades: backfilled 80,000 rows in 4 slice(s) with 2 worker(s)" in out, out
    assert killed not in processes("ray::")
    assert_in_cursor_order(slices_committed(ws))
    assert_exact(ws, source=endpoint.rows, rows=120_000)

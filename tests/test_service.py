"""The service as a real daemon subprocess on a fast schedule, against chDB and PostgreSQL."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
from helpers import Workspace, assert_exact, daemon, http_get, iceberg_rows, run_cli, service_ws, trades_table, wait_for
from storage import free_port

SENTINEL = "s3ntinel-Pa55-do-not-log"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample == name and ",".join(sorted(label_text.rstrip("}").split(","))) == want:
            return float(value)
    return 0.0


def test_daemon_offloads_and_metrics_match_what_was_offloaded(ws: Workspace) -> None:
    """Rows appear in Iceberg on schedule, and /metrics, /healthz, /readyz and /status agree with them."""
    port = service_ws(ws)
    ws.tables = [trades_table(), trades_table("trades2", source="k2.trades2", target="cold.trades2")]
    ws.create_trades()
    ws.create_trades("trades2")
    ws.insert_trades(3000, start="2026-01-01 00:00:00")
    ws.insert_trades(1234, start="2026-01-01 00:00:00", table="k2.trades2")
    with daemon(ws) as proc:
        wait_for(lambda: iceberg_rows(ws, "cold.trades") == 3000 and iceberg_rows(ws, "cold.trades2") == 1234, what="rows")
        text = wait_for(
            lambda: (
                (t := http_get(port, "/metrics")[1])
                and metric(t, "offloader_rows_total", table="trades2", layer="bronze") == 1234
                and metric(t, "offloader_cycle_duration_seconds_count") >= 1
                and t
            ),
            what="metrics",
        )
        assert metric(text, "offloader_rows_total", table="trades", layer="bronze") == 3000
        assert metric(text, "offloader_files_written_total", table="trades") >= 1
        assert metric(text, "offloader_bytes_written_total", table="trades") > 0
        assert metric(text, "offloader_consecutive_failures", table="trades") == 0
        assert metric(text, "offloader_last_success_timestamp_seconds", table="trades") > time.time() - 300
        assert metric(text, "offloader_watermark_timestamp_seconds", table="trades") == pytest.approx(1767225602.999, abs=0.01)
        assert metric(text, "offloader_build_info", version="0.1.0") == 1
        assert 'offloader_lag_seconds{table="trades"} 0.0' in text, "fully offloaded: the cursor is the newest source row"
        assert metric(text, "offloader_cycle_duration_seconds_count") >= 1
        assert http_get(port, "/healthz")[0] == 200
        assert http_get(port, "/readyz") == (200, "ready\n")
        code, body = http_get(port, "/status")
        assert code == 200 and '"iceberg_rows": 3000' in body and '"next_run"' in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_a_failing_table_does_not_block_siblings_and_its_dependents_are_skipped(ws: Workspace) -> None:
    """A failing table leaves its siblings offloading; its dependents are skipped each cycle, and errors are counted."""
    port = service_ws(ws)
    ws.tables = [
        trades_table(),
        trades_table("broken", source="k2.missing", target="cold.broken"),
        trades_table("child", source="k2.trades", target="cold.child", layer="silver", depends_on=["broken"]),
    ]
    ws.create_trades()
    ws.insert_trades(500, start="2026-01-01 00:00:00")
    with daemon(ws) as proc:
        wait_for(lambda: iceberg_rows(ws, "cold.trades") == 500, what="sibling rows")
        text = wait_for(
            lambda: (
                (t := http_get(port, "/metrics")[1]) and metric(t, "offloader_consecutive_failures", table="broken") >= 2 and t
            ),
            what="failures counted",
        )
        assert metric(text, "offloader_errors_total", table="broken", error_type="schema_error") >= 2
        assert metric(text, "offloader_rows_total", table="child", layer="silver") == 0
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert '"event": "table_skipped"' in out and "upstream broken did not complete this cycle" in out
    assert iceberg_rows(ws, "cold.child") == 0


def test_sigterm_during_a_cycle_exits_cleanly_and_the_next_start_resumes_exactly(ws: Workspace) -> None:
    """SIGTERM mid-cycle exits 0 with no partial commit; the next start resumes exactly where it stopped."""
    service_ws(ws)
    ws.source["max_window"] = "1m"
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(60_000, start="2026-01-01 00:00:00", step_us=20_000)  # 20 minutes: 20 windows
    # 0.5 s after each commit: on an idle machine the 20 windows otherwise land before the signal
    with daemon(ws, env={"OFFLOADER_SLOW_AT": "after_commit:0.5"}) as proc:
        wait_for(lambda: iceberg_rows(ws, "cold.trades") > 0, what="first window")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)  # shutdown_timeout is 30 s
        assert proc.returncode == 0
    assert '"event": "service_stopped"' in out
    assert '"event": "table_stopped"' in out and '"event": "table_failed"' not in out, "a stop is not a failure"
    table = ws.iceberg_table("cold.trades")
    committed = table.scan().to_arrow().num_rows
    summaries = [s.summary.additional_properties for s in table.snapshots()]
    assert committed == sum(int(p["offloader.source-rows"]) for p in summaries), "every snapshot is a whole window"
    assert committed < 60_000, "the stop came mid-cycle"
    with daemon(ws) as proc:
        wait_for(lambda: iceberg_rows(ws, "cold.trades") == 60_000, what="the rest", timeout=120)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert_exact(ws)


def sigterm_caught(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (its SigCgt mask in /proc)."""
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_sigterm_while_the_service_is_still_starting_stops_it_cleanly(ws: Workspace) -> None:
    """The process catches SIGTERM from its first moment: one sent during start-up (held 8 s at the
    ``starting`` point, before the service installs its handler) ends it with exit 0 and no cycle run."""
    service_ws(ws)
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(100, start="2026-01-01 00:00:00")
    with daemon(ws, env={"OFFLOADER_SLOW_AT": "starting:8"}) as proc:
        deadline = time.monotonic() + 3
        while not (caught := sigterm_caught(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # whether caught or not: the process is certainly still starting
        out, _ = proc.communicate(timeout=60)
    assert caught, "the process did not catch SIGTERM within 3 s of its start"
    assert proc.returncode == 0, out[-2000:]
    assert '"event": "shutdown_requested"' in out and '"event": "service_stopped"' in out
    assert '"event": "table_committed"' not in out and iceberg_rows(ws, "cold.trades") == 0, "no cycle ran after the stop"


def test_healthz_turns_503_when_the_scheduler_is_wedged_or_stopped(ws: Workspace) -> None:
    """/healthz answers 200 while the scheduler ticks, 503 once it stops ticking (paused) and when it is shut down."""
    from offloader.server import serve
    from offloader.service import Service

    ws.tables = [trades_table()]
    ws.schedule.update(interval="1h", run_at_start=False)
    ws.create_trades()
    app = ws.app()
    service = Service(app)
    service.health_timeout = 2.0
    server, _ = serve(service, "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        service.start()
        wait_for(lambda: http_get(port, "/healthz")[0] == 200, what="healthy", timeout=20)
        service.scheduler.pause()  # the scheduler thread stops running jobs: wedged
        code, body = wait_for(lambda: (r := http_get(port, "/healthz"))[0] == 503 and r, what="503 when wedged", timeout=20)
        assert body == "scheduler not running\n"
        service.scheduler.resume()
        wait_for(lambda: http_get(port, "/healthz")[0] == 200, what="healthy again", timeout=20)
        service.shutdown()
        assert http_get(port, "/healthz")[0] == 503
    finally:
        server.shutdown()
        app.close()


def test_readyz_names_the_part_that_does_not_answer(ws: Workspace, tmp_path: Any) -> None:
    """/readyz is 503 naming the state store when it does not answer, 200 when everything does."""
    from offloader.server import serve
    from offloader.service import Service

    ws.tables = [trades_table()]
    ws.create_trades()
    app = ws.app()
    service = Service(app)
    server, _ = serve(service, "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        assert http_get(port, "/readyz") == (200, "ready\n")
        from offloader.config import StateConfig
        from offloader.state import StateStore

        app.state = StateStore(StateConfig(dsn="postgresql://nobody@127.0.0.1:1/none"))
        assert http_get(port, "/readyz") == (503, "not ready: state\n")
    finally:
        server.shutdown()
        app.close()


def test_no_secret_reaches_logs_metrics_or_endpoints(ws: Workspace) -> None:
    """A sentinel password planted in the environment never appears in any output or endpoint, even on failure."""
    port = service_ws(ws)
    ws.tables = [trades_table(), trades_table("broken", source="k2.missing", target="cold.broken")]
    ws.create_trades()
    ws.insert_trades(100, start="2026-01-01 00:00:00")
    env = {"OFFLOADER__STATE__PASSWORD": SENTINEL, "OFFLOADER__CATALOG__PASSWORD": SENTINEL, "OFFLOADER__LOGGING__LEVEL": "debug"}
    with daemon(ws, env) as proc:
        wait_for(lambda: iceberg_rows(ws, "cold.trades") == 100, what="rows")
        bodies = [http_get(port, path)[1] for path in ("/metrics", "/healthz", "/readyz", "/status", "/nope")]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    status = run_cli("status", "--json", config=ws.config_path, env=env, cwd=ws.root)
    for text in [out, err, status.stdout, status.stderr, *bodies]:
        assert SENTINEL not in text
    assert '"event": "offload_committed"' in out


SECRETS_ENV = {
    "OFFLOADER__SOURCE__PASSWORD": SENTINEL,
    "OFFLOADER__STATE__PASSWORD": SENTINEL,
    "OFFLOADER__CATALOG__PASSWORD": SENTINEL,
    "OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY": SENTINEL,
    "OFFLOADER__CATALOG__CREDENTIAL": SENTINEL,
}


@pytest.mark.parametrize(
    "point, code, event, storage, module",
    [
        ("source_connect", 1, "table_failed", "local", "clickhouse.py"),
        ("state_connect", 70, "internal_error", "local", "state.py"),
        ("catalog_connect", 70, "internal_error", "s3-rest", "catalog.py"),  # S3 secret key and REST credential revealed
    ],
    indirect=["storage"],
)
def test_no_secret_in_the_traceback_of_an_internal_error(ws: Workspace, point: str, code: int, event: str, module: str) -> None:
    """An internal error raised where a password is a local variable is logged with its traceback but without the frames' locals, so no secret reaches the output."""
    ws.tables = [trades_table()]
    ws.source_dsn = f"http://offloader@127.0.0.1:{free_port()}/k2"  # the fault fires before it is reached
    ws.write_config()
    if not ws.storage.on_s3:  # an S3 key id, so that the S3 secret key from the environment is taken
        text = ws.config_path.read_text()
        ws.config_path.write_text(text.replace("[catalog]\n", '[catalog]\n"s3.access-key-id" = "offloader"\n', 1))
    env = {**SECRETS_ENV, "OFFLOADER_FAULT": f"internal_error:{point}"}
    done = run_cli("once", config=ws.config_path, env=env, cwd=ws.root, timeout=120)
    assert done.returncode == code, done.stdout + done.stderr
    assert SENTINEL not in done.stdout + done.stderr
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (failure,) = [entry for entry in logged if entry["event"] == event]
    (raised,) = failure["exception"]
    assert raised["exc_type"] == "RuntimeError" and point in raised["exc_value"], raised
    frames = {(frame["name"], frame["filename"].rsplit("/", 1)[-1]) for frame in raised["frames"]}
    assert ("__init__", module) in frames, frames  # the frame holding the secrets is in the traceback
    assert not any("locals" in frame for frame in raised["frames"]), raised["frames"]

    debug = run_cli("--debug", "once", config=ws.config_path, env=env, cwd=ws.root, timeout=120)
    assert debug.returncode != 0 and point in debug.stderr  # with --debug the traceback (locals too) is shown


def test_schedule_jobs_follow_config_cron_per_table_cron_and_run_at_start(ws: Workspace) -> None:
    """The cycle runs on [schedule] cron, a table with its own cron runs apart, and run_at_start=false waits for the cron."""
    from datetime import UTC, datetime, timedelta

    from offloader.service import Service

    ws.tables = [trades_table(), trades_table("hourly", source="k2.trades", target="cold.hourly", cron="0 * * * *")]
    ws.schedule.update(cron="*/15 * * * *", run_at_start=False, maintenance_cron="0 2 * * *")
    ws.create_trades()
    app = ws.app()
    service = Service(app)
    try:
        service.start()
        jobs = {job.id: job for job in service.scheduler.get_jobs()}
        assert set(jobs) == {"cycle", "table:hourly", "heartbeat", "replica", "maintenance"}
        assert [t.name for t in jobs["cycle"].args[0]] == ["trades"]
        assert [t.name for t in jobs["table:hourly"].args[0]] == ["hourly"]
        now = datetime.now(UTC)
        cycle_next, hourly_next = jobs["cycle"].next_run_time, jobs["table:hourly"].next_run_time
        assert cycle_next.minute % 15 == 0 and cycle_next.second == 0 and now < cycle_next <= now + timedelta(minutes=15)
        assert hourly_next.minute == 0 and now < hourly_next <= now + timedelta(hours=1)
        assert jobs["maintenance"].next_run_time.hour == 2
        next_runs = service.next_runs()
        assert next_runs == {"trades": cycle_next.isoformat(), "hourly": hourly_next.isoformat()}
        assert service.cycles_done == 0, "run_at_start = false: nothing ran at start"
    finally:
        service.shutdown()
        app.close()

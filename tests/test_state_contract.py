"""The state store's contract, run on both backends: PostgreSQL and SQLite.

The operations depend on the :class:`~offloader.ports.StateStore` port only; these tests
hold each backend to the same behaviour: the watermark mirror, the run history, the audit
log, the runner locks (across connections and processes) and an idempotent migration.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from offloader.config import StateConfig
from offloader.errors import StateError
from offloader.ports import AuditRecord, RunRecord
from offloader.state import StateStore


def _dsn(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'state.db'}"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture(params=["postgresql", "sqlite"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _dsn(request.param, tmp_path, request)


@pytest.fixture
def store(dsn: str) -> Iterator[StateStore]:
    state = StateStore(StateConfig(dsn=dsn))
    state.migrate()
    yield state
    state.close()


def test_migrate_is_idempotent_and_keeps_data(store: StateStore, dsn: str) -> None:
    store.set_mirror("trades", "cold.trades", ["2026-01-01 00:00:00.000000", 7], 11, "run-1")
    store.migrate()
    again = StateStore(StateConfig(dsn=dsn))
    again.migrate()
    mirror = again.mirror("trades")
    again.close()
    assert mirror is not None and mirror.cursor == ["2026-01-01 00:00:00.000000", 7] and mirror.snapshot_id == 11


def test_mirror_set_read_update_delete(store: StateStore) -> None:
    assert store.mirror("trades") is None and store.mirrors() == {}
    store.set_mirror("trades", "cold.trades", ["2026-01-01 00:00:00.000000", 1], 10, "run-1")
    store.set_mirror("bars", "cold.bars", ["2026-01-02 00:00:00.000000"], 20, "run-2")
    store.set_mirror("trades", "cold.trades", ["2026-01-03 00:00:00.000000", 2], 30, "run-3")
    trades = store.mirror("trades")
    assert trades is not None
    assert (trades.cursor, trades.snapshot_id, trades.run_id) == (["2026-01-03 00:00:00.000000", 2], 30, "run-3")
    assert trades.updated_at > 0
    assert set(store.mirrors()) == {"trades", "bars"}
    store.delete_mirror("trades")
    assert store.mirror("trades") is None and set(store.mirrors()) == {"bars"}
    store.set_mirror("empty", "cold.empty", None, None, None)
    empty = store.mirror("empty")
    assert empty is not None and empty.cursor is None and empty.snapshot_id is None


def _run(table: str, started: float, outcome: str = "committed", rows: int = 0) -> RunRecord:
    return RunRecord(run_id=uuid.uuid4().hex, table_name=table, started_at=started, outcome=outcome, rows_written=rows)


def test_runs_are_recorded_updated_listed_and_pruned(store: StateStore) -> None:
    now = time.time()
    first = _run("trades", now - 300, "running")
    store.record_run(first)
    first.outcome, first.rows_written, first.finished_at, first.error_message = "failed", 5, now - 290, "boom"
    store.record_run(first)  # the same run, updated: not a second row
    for i in range(4):
        store.record_run(_run("trades", now - 200 + i, rows=i))
    store.record_run(_run("bars", now - 100))
    runs = store.runs("trades", limit=10)
    assert len(runs) == 5, "an update of a run is not a new run"
    assert [r.started_at for r in runs] == sorted((r.started_at for r in runs), reverse=True), "newest first"
    failed = next(r for r in runs if r.run_id == first.run_id)
    assert (failed.outcome, failed.rows_written, failed.error_message) == ("failed", 5, "boom")
    assert len(store.runs("trades", limit=2)) == 2
    assert {r.table_name for r in store.runs(limit=50)} == {"trades", "bars"}
    last = store.last_runs()
    assert set(last) == {"trades", "bars"} and last["trades"].started_at == pytest.approx(now - 197)
    assert store.prune_runs(now - 250) == 1
    assert first.run_id not in {r.run_id for r in store.runs("trades", limit=10)}


def test_audit_records_filter_by_table_and_action(store: StateStore) -> None:
    now = time.time()
    for i, (table, action) in enumerate([("trades", "compact"), ("trades", "check"), ("bars", "compact")]):
        store.record_audit(
            AuditRecord(id=uuid.uuid4().hex, table_name=table, action=action, started_at=now + i, detail=f"d{i}", dry_run=i % 2)
        )
    assert len(store.audits()) == 3
    assert [a.detail for a in store.audits("trades")] == ["d1", "d0"], "newest first"
    assert [a.table_name for a in store.audits(action="compact")] == ["bars", "trades"]
    (check,) = store.audits("trades", "check")
    assert check.dry_run == 1 and check.outcome == "ok"
    assert len(store.audits(limit=1)) == 1


def test_lock_is_exclusive_per_table_and_released(dsn: str) -> None:
    one, two = StateStore(StateConfig(dsn=dsn)), StateStore(StateConfig(dsn=dsn))
    one.migrate()
    try:
        with one.lock("trades") as taken:
            assert taken
            with two.lock("trades") as again:
                assert not again, "a second store takes a lock another one holds"
            with two.lock("bars") as other:
                assert other, "tables lock independently"
        with two.lock("trades") as after:
            assert after, "the lock is released when its holder leaves"
        with pytest.raises(RuntimeError), one.lock("trades") as taken:
            assert taken
            raise RuntimeError("the run failed")
        with two.lock("trades") as after_failure:
            assert after_failure, "the lock is released when its holder fails"
    finally:
        one.close()
        two.close()


def _hold(dsn: str, table: str, ready: object, release: object) -> None:
    store = StateStore(StateConfig(dsn=dsn))
    with store.lock(table) as taken:
        assert taken
        ready.set()  # type: ignore[attr-defined]
        release.wait(30)  # type: ignore[attr-defined]
    store.close()


def test_lock_held_by_another_process_is_busy_then_waited_for(dsn: str) -> None:
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(dsn, "trades", ready, release))
    holder.start()
    store = StateStore(StateConfig(dsn=dsn))
    try:
        assert ready.wait(60), "the holder process took the lock"
        with store.lock("trades") as taken:
            assert not taken, "a lock another process holds is busy"
        with store.lock("trades", wait=0.6) as taken:
            assert not taken, "waiting gives up after `wait` while the holder keeps the lock"
        release.set()
        with store.lock("trades", wait=30) as taken:
            assert taken, "waiting gets the lock once the holder lets go"
    finally:
        release.set()
        holder.join(30)
        store.close()
    assert holder.exitcode == 0


def test_a_dead_server_is_a_state_error_naming_it(tmp_path: Path) -> None:
    store = StateStore(StateConfig(dsn="postgresql://postgres@127.0.0.1:1/none"))
    with pytest.raises(StateError, match="127.0.0.1:1"):
        store.mirror("trades")

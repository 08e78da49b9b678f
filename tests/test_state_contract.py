"""The state store's contract, run on both of its backends: PostgreSQL and SQLite.

offloader keeps its own state (the watermark mirror, the run history, the maintenance audit
log and the per-table runner locks) in PostgreSQL, or in SQLite for the embedded default. Every
case here runs once on a fresh PostgreSQL database and once on a fresh SQLite file, through
:class:`offloader.state.StateStore` only, and must give the same answer on both: a difference
between the backends is a bug.

Locks are checked from another connection of the same process and from another process (a
small script holding the lock until told to let go, or until it is killed).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, clean_env, fresh_pg_database

from offloader.config import StateConfig
from offloader.errors import StateError
from offloader.state import AuditRecord, RunRecord, StateStore

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
BIG = 2**63 - 1  # the largest snapshot id and row count a BIGINT holds
SLACK = 3.0  # seconds a lock wait may overrun its bound on a loaded machine

# Takes a table's lock in a process of its own, says whether it got it, holds it until a line
# arrives on stdin (or the process is killed), then says "released".
HOLDER = """
import sys
from offloader.config import StateConfig
from offloader.state import StateStore

store = StateStore(StateConfig(dsn=sys.argv[1]))
with store.lock(sys.argv[2]) as taken:
    print("taken" if taken else "busy", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


@pytest.fixture
def other(state_config: StateConfig, store: StateStore) -> Iterator[StateStore]:
    """A second store on the same database, as another runner of the same process opens it."""
    opened = StateStore(state_config)
    try:
        yield opened
    finally:
        opened.close()


class Holder:
    """A lock held by another process (:data:`HOLDER`)."""

    def __init__(self, config: StateConfig, table: str) -> None:
        env = clean_env(PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, config.dsn, table], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.said = self.proc.stdout.readline().strip()

    def release(self) -> None:
        """Tell the holder to leave its lock block; wait until it says it has."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def holders(state_config: StateConfig, store: StateStore) -> Iterator[Any]:
    """Starts processes holding a table's lock; kills whatever is left at the end."""
    started: list[Holder] = []

    def start(table: str) -> Holder:
        holder = Holder(state_config, table)
        started.append(holder)
        assert holder.said == "taken", holder.proc.stderr.read() if holder.proc.stderr else holder.said
        return holder

    try:
        yield start
    finally:
        for holder in started:
            holder.close()


def differs_on(request: pytest.FixtureRequest, config: StateConfig, backend: str, reason: str) -> None:
    """Mark the running case as an expected failure on ``backend``: a difference between the
    backends found by this suite (strict: the case must really fail there)."""
    if ("sqlite" if config.is_sqlite else "postgresql") == backend:
        request.applymarker(pytest.mark.xfail(reason=f"BACKEND DIFFERENCE: {reason}", strict=True))


def run(run_id: str, table: str = "trades", started_at: float = T0, **fields: Any) -> RunRecord:
    return RunRecord(run_id=run_id, table_name=table, started_at=started_at, **fields)


def audit(record_id: str, table: str = "trades", action: str = "compact", started_at: float = T0, **fields: Any) -> AuditRecord:
    return AuditRecord(id=record_id, table_name=table, action=action, started_at=started_at, **fields)


# -- schema ----------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_keeps_what_is_stored(store: StateStore) -> None:
    """Applying the schema again (every start does) changes nothing and loses nothing."""
    store.set_mirror("trades", "cold.trades", ["2026-01-01 00:00:00.000000", 7], 11, "r1")
    store.record_run(run("r1"))
    store.record_audit(audit("a1"))
    store.migrate()
    store.migrate()
    mirror = store.mirror("trades")
    assert mirror is not None and mirror.cursor == ["2026-01-01 00:00:00.000000", 7]
    assert [r.run_id for r in store.runs()] == ["r1"]
    assert [a.id for a in store.audits()] == ["a1"]


def test_migrate_from_several_stores_at_once(state_config: StateConfig) -> None:
    """Several processes starting together on an empty database all apply the schema without an error."""
    stores = [StateStore(state_config) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def migrate(s: StateStore) -> None:
        try:
            barrier.wait(timeout=30)
            s.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        stores[0].ping()
        assert stores[0].mirrors() == {} and stores[0].runs() == [] and stores[0].audits() == []
    finally:
        for s in stores:
            s.close()


def test_ping_answers(store: StateStore) -> None:
    """A store that is there answers a ping (what /readyz asks)."""
    store.ping()


# -- the watermark mirror --------------------------------------------------------------------


def test_mirror_of_an_unknown_table_is_none(store: StateStore) -> None:
    """A table never offloaded has no mirror, and no entry among all mirrors."""
    assert store.mirror("trades") is None
    assert store.mirrors() == {}


def test_mirror_set_then_read_back(store: StateStore) -> None:
    """A mirror set is read back field for field, its update time the time it was set."""
    before = time.time()
    store.set_mirror("trades", "cold.trades", ["2026-01-01 00:00:01.000000", 42], BIG, "run-1")
    after = time.time()
    mirror = store.mirror("trades")
    assert mirror is not None
    assert (mirror.table_name, mirror.cursor, mirror.snapshot_id, mirror.run_id) == (
        "trades", ["2026-01-01 00:00:01.000000", 42], BIG, "run-1",
    )  # fmt: skip
    assert before <= mirror.updated_at <= after


def test_mirror_set_again_replaces_it(store: StateStore) -> None:
    """Setting a table's mirror again replaces cursor, snapshot and run; there is still one mirror."""
    store.set_mirror("trades", "cold.trades", ["2026-01-01 00:00:01.000000", 1], 1, "run-1")
    first = store.mirror("trades")
    store.set_mirror("trades", "cold.trades", ["2026-01-02 00:00:00.000000", 2], 2, "run-2")
    second = store.mirror("trades")
    assert first is not None and second is not None
    assert (second.cursor, second.snapshot_id, second.run_id) == (["2026-01-02 00:00:00.000000", 2], 2, "run-2")
    assert second.updated_at >= first.updated_at
    assert list(store.mirrors()) == ["trades"]


def test_mirror_cursor_values_round_trip_exactly(store: StateStore) -> None:
    """Cursor values of every kind a cursor holds come back equal: text with quotes, escapes and
    non-ASCII, the largest UInt64 a long holds, negative numbers, decimals as text, and no cursor at all."""
    cursor = ["2026-01-01 09:00:00.123456789", "tab\there 'q' \"dq\" back\\slash ünï 🚀", BIG, -1, "123.45000000"]
    store.set_mirror("odd", "cold.odd", cursor, None, None)
    store.set_mirror("empty", "cold.empty", None, None, None)
    odd, empty = store.mirror("odd"), store.mirror("empty")
    assert odd is not None and odd.cursor == cursor and odd.snapshot_id is None and odd.run_id is None
    assert empty is not None and empty.cursor is None


def test_mirrors_lists_every_table_and_delete_removes_one(store: StateStore) -> None:
    """mirrors() holds every table's mirror; deleting one leaves the others; deleting a missing one is no error."""
    for i, name in enumerate(["a", "b", "c"]):
        store.set_mirror(name, f"cold.{name}", [f"2026-01-01 00:00:0{i}.000000"], i, f"r{i}")
    assert {name: m.cursor for name, m in store.mirrors().items()} == {
        "a": ["2026-01-01 00:00:00.000000"], "b": ["2026-01-01 00:00:01.000000"], "c": ["2026-01-01 00:00:02.000000"],
    }  # fmt: skip
    store.delete_mirror("b")
    store.delete_mirror("never-there")
    assert store.mirror("b") is None
    assert sorted(store.mirrors()) == ["a", "c"]


def test_mirror_written_by_one_store_is_read_by_another(store: StateStore, other: StateStore) -> None:
    """What one store commits, another store on the same database reads at once."""
    store.set_mirror("trades", "cold.trades", ["2026-01-01 00:00:00.000000", 1], 5, "r")
    seen = other.mirror("trades")
    assert seen is not None and seen.snapshot_id == 5


# -- the run history -------------------------------------------------------------------------


def test_run_recorded_then_read_back_field_for_field(store: StateStore) -> None:
    """A run record is read back equal in every field, the None ones and the large ones included."""
    record = run(
        "r1", started_at=T0 + 0.123456, finished_at=T0 + 9.5, window_lo="2026-01-01 00:00:00.000000",
        window_hi="2026-01-01 01:00:00.000000", windows=3, rows_written=BIG, bytes_written=2**40, files_written=7,
        snapshot_id=BIG, duration_seconds=9.376544, outcome="committed",
    )  # fmt: skip
    bare = run("r2", started_at=T0 - 1)
    store.record_run(record)
    store.record_run(bare)
    assert store.runs() == [record, bare]


def test_run_recorded_again_is_updated_not_added(store: StateStore) -> None:
    """Recording a run again under its id (started, then finished) updates the one record."""
    started = run("r1")
    store.record_run(started)
    assert store.runs() == [started]
    finished = replace(
        started, finished_at=T0 + 2, outcome="failed", error_class="SourceError",
        error_message="cannot connect to ClickHouse at http://default@127.0.0.1:1/k2: refused ünï " + "x" * 1900,
    )  # fmt: skip
    store.record_run(finished)
    assert store.runs() == [finished]


def test_runs_newest_first_filtered_by_table_and_limited(store: StateStore) -> None:
    """runs() lists the newest run first, of one table or of all, at most ``limit`` of them."""
    for i in range(5):
        store.record_run(run(f"t{i}", "trades", T0 + i))
        store.record_run(run(f"b{i}", "bars", T0 + i + 0.5))
    assert [r.run_id for r in store.runs("trades")] == ["t4", "t3", "t2", "t1", "t0"]
    assert [r.run_id for r in store.runs("trades", limit=2)] == ["t4", "t3"]
    assert [r.run_id for r in store.runs(limit=3)] == ["b4", "t4", "b3"]
    assert [r.run_id for r in store.runs()] == [f"{t}{i}" for i in range(4, -1, -1) for t in ("b", "t")]
    assert store.runs("nope") == []
    assert store.runs(limit=0) == []


def test_abandon_marks_only_the_tables_other_running_runs(store: StateStore) -> None:
    """abandon_runs(table, by) marks that table's other ``running`` runs abandoned, says how many,
    and leaves finished runs, other tables' runs and the run ``by`` itself as they were."""
    store.record_run(run("dead", "trades", T0))
    store.record_run(run("done", "trades", T0 + 1, outcome="committed"))
    store.record_run(run("other", "bars", T0 + 2))
    store.record_run(run("me", "trades", T0 + 3))
    assert store.abandon_runs("trades", "me", T0 + 4) == 1
    got = {r.run_id: r for r in store.runs()}
    assert got["dead"].outcome == "abandoned" and got["dead"].finished_at == T0 + 4
    assert got["dead"].error_message is not None and "found by run me" in got["dead"].error_message
    assert (got["done"].outcome, got["other"].outcome, got["me"].outcome) == ("committed", "running", "running")
    assert store.abandon_runs("trades", "me", T0 + 5) == 0


def test_last_runs_gives_the_newest_run_of_every_table(store: StateStore) -> None:
    """last_runs() maps each table to its newest run, whatever order the runs were recorded in."""
    store.record_run(run("t-new", "trades", T0 + 10, outcome="committed"))
    store.record_run(run("t-old", "trades", T0))
    store.record_run(run("b-only", "bars", T0 + 5, outcome="failed"))
    last = store.last_runs()
    assert {table: r.run_id for table, r in last.items()} == {"trades": "t-new", "bars": "b-only"}
    assert last["bars"] == run("b-only", "bars", T0 + 5, outcome="failed")


def test_last_runs_of_an_empty_history(store: StateStore) -> None:
    """An empty history has no last run."""
    assert store.last_runs() == {}


def test_prune_removes_only_runs_started_before_the_cut(store: StateStore) -> None:
    """prune_runs(t) deletes the runs started before t, says how many, and keeps the one started at t."""
    for i in range(4):
        store.record_run(run(f"r{i}", started_at=T0 + i))
    assert store.prune_runs(T0 + 2) == 2
    assert [r.run_id for r in store.runs()] == ["r3", "r2"]
    assert store.prune_runs(T0 + 2) == 0
    assert store.prune_runs(T0 + 100) == 2
    assert store.runs() == []


def test_a_negative_limit_is_refused(store: StateStore, state_config: StateConfig, request: pytest.FixtureRequest) -> None:
    """runs() and audits() with a negative limit fail with a StateError; it never means "no limit"."""
    differs_on(
        request, state_config, "sqlite",
        "SQLite reads LIMIT -1 as no limit and returns every row, PostgreSQL refuses it: "
        "`offloader history --limit -1` fails on one and lists the whole history on the other",
    )  # fmt: skip
    store.record_run(run("r1"))
    store.record_audit(audit("a1"))
    with pytest.raises(StateError):
        store.runs(limit=-1)
    with pytest.raises(StateError):
        store.audits(limit=-1)


def test_any_text_of_an_error_message_is_recorded(store: StateStore) -> None:
    """A failed run's error message is stored whatever characters it holds: recording the failure must
    not fail. A NUL, which PostgreSQL text cannot hold, is stored as the two characters ``\\0`` on both backends."""
    failed = run("r1", outcome="failed", error_class="SourceError", error_message="ClickHouse said: bad byte \x00 here")
    store.record_run(failed)
    assert store.runs() == [replace(failed, error_message="ClickHouse said: bad byte \\0 here")]
    store.record_audit(audit("a1", detail="\x00 in a detail"))
    assert store.audits()[0].detail == "\\0 in a detail"


def test_concurrent_writers_all_land(store: StateStore, state_config: StateConfig) -> None:
    """Runs, audit records and mirrors written from several threads at once, on several stores, all land."""
    stores = [store, *(StateStore(state_config) for _ in range(3))]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def write(n: int, s: StateStore) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(20):
                s.record_run(run(f"r{n}-{i}", f"t{n}", T0 + i))
                s.record_audit(audit(f"a{n}-{i}", f"t{n}", started_at=T0 + i))
                s.set_mirror(f"t{n}", f"cold.t{n}", [i], i, f"r{n}-{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n, s)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len(store.runs(limit=1000)) == len(store.audits(limit=1000)) == 20 * len(stores)
        assert {name: m.cursor for name, m in store.mirrors().items()} == {f"t{n}": [19] for n in range(len(stores))}
    finally:
        for s in stores[1:]:
            s.close()


# -- the maintenance audit log ---------------------------------------------------------------


def test_audit_recorded_then_read_back_field_for_field(store: StateStore) -> None:
    """An audit record is read back equal in every field."""
    full = audit(
        "a1", started_at=T0 + 0.25, duration_seconds=1.5, outcome="ok", dry_run=1, files_before=12, files_after=3,
        bytes_before=BIG, bytes_after=2**40, snapshot_id=BIG, detail="12 small files -> 3 (ünï, 'quoted')",
    )  # fmt: skip
    bare = audit("a2", action="remove_orphans", started_at=T0, outcome="nothing_to_do")
    store.record_audit(full)
    store.record_audit(bare)
    assert store.audits() == [full, bare]


def test_audits_filtered_by_table_and_action_newest_first_and_limited(store: StateStore) -> None:
    """audits() gives the newest record first, of one table, one action, both or neither, at most ``limit``."""
    actions = ["compact", "expire_snapshots", "check"]
    for i in range(6):
        store.record_audit(audit(f"t{i}", "trades", actions[i % 3], T0 + i))
        store.record_audit(audit(f"b{i}", "bars", actions[i % 3], T0 + i + 0.5))
    ids = lambda records: [a.id for a in records]  # noqa: E731
    assert ids(store.audits("trades")) == ["t5", "t4", "t3", "t2", "t1", "t0"]
    assert ids(store.audits(action="compact")) == ["b3", "t3", "b0", "t0"]
    assert ids(store.audits("bars", "check")) == ["b5", "b2"]
    assert ids(store.audits("trades", limit=2)) == ["t5", "t4"]
    assert ids(store.audits(limit=3)) == ["b5", "t5", "b4"]
    assert store.audits("trades", "repair") == [] and store.audits("nope") == []


def test_an_audit_record_is_written_once(store: StateStore) -> None:
    """An audit record's id is its key: writing the same id again fails with a StateError and changes nothing."""
    store.record_audit(audit("a1", outcome="ok"))
    with pytest.raises(StateError, match="write the maintenance audit log"):
        store.record_audit(audit("a1", outcome="failed"))
    assert [(a.id, a.outcome) for a in store.audits()] == [("a1", "ok")]


# -- the runner locks ------------------------------------------------------------------------


def test_a_free_lock_is_taken(store: StateStore) -> None:
    """A table's lock nobody holds is taken at once."""
    with store.lock("trades") as taken:
        assert taken is True


def test_a_held_lock_is_busy_for_another_connection_and_free_after(store: StateStore, other: StateStore) -> None:
    """While one store holds a table's lock, another store (another runner) finds it busy; once left, it is free."""
    with store.lock("trades") as taken:
        assert taken
        with other.lock("trades") as second:
            assert second is False
        with store.lock("trades") as again:
            assert again is False, "the lock is not re-entrant: a second run in the same process is busy too"
    with other.lock("trades") as after:
        assert after is True


def test_a_lock_held_by_another_process_is_busy_until_it_lets_go(store: StateStore, holders: Any) -> None:
    """A table's lock held by another process is busy here; when that process leaves its block, it is free."""
    holder = holders("trades")
    with store.lock("trades") as taken:
        assert taken is False
    holder.release()
    with store.lock("trades") as taken:
        assert taken is True


def test_a_lock_held_by_a_killed_process_is_free(store: StateStore, holders: Any) -> None:
    """A process SIGKILLed while it holds a table's lock leaves the lock free (its session or file is gone)."""
    holder = holders("trades")
    with store.lock("trades") as taken:
        assert taken is False
    holder.kill()
    with store.lock("trades", wait=10) as taken:
        assert taken is True


def test_a_process_finds_a_lock_this_process_holds_busy(store: StateStore, state_config: StateConfig) -> None:
    """The other way round: a lock held here is busy for another process."""
    with store.lock("trades") as taken:
        assert taken
        holder = Holder(state_config, "trades")
        try:
            assert holder.said == "busy"
        finally:
            holder.close()


def test_waiting_for_a_busy_lock_gives_up_after_wait(store: StateStore, holders: Any) -> None:
    """lock(wait=w) on a lock held elsewhere waits about w seconds, then yields False."""
    holders("trades")
    started = time.monotonic()
    with store.lock("trades", wait=1.5) as taken:
        waited = time.monotonic() - started
        assert taken is False
    assert 1.5 <= waited < 1.5 + SLACK, waited


def test_waiting_takes_the_lock_once_it_is_let_go(store: StateStore, holders: Any) -> None:
    """lock(wait=w) takes the lock as soon as its holder lets go within w, without waiting all of w."""
    holder = holders("trades")
    timer = threading.Timer(1.0, holder.release)
    timer.start()
    started = time.monotonic()
    try:
        with store.lock("trades", wait=30) as taken:
            waited = time.monotonic() - started
            assert taken is True
    finally:
        timer.join()
    assert 1.0 <= waited < 1.0 + SLACK, waited


def test_no_wait_means_no_waiting(store: StateStore, holders: Any) -> None:
    """lock() without wait (an offload run) answers at once when the lock is busy."""
    holders("trades")
    started = time.monotonic()
    with store.lock("trades") as taken:
        assert taken is False
    assert time.monotonic() - started < SLACK


def test_a_lock_is_released_when_its_block_raises(store: StateStore, other: StateStore) -> None:
    """An exception inside the lock's block propagates, and the lock is free afterwards."""
    with pytest.raises(RuntimeError, match="inside"):
        with store.lock("trades") as taken:
            assert taken
            raise RuntimeError("inside the lock")
    with other.lock("trades") as taken:
        assert taken is True


def test_a_busy_lock_left_early_does_not_free_the_holder_s_lock(store: StateStore, other: StateStore, holders: Any) -> None:
    """Finding a lock busy and leaving (or raising) leaves it held by its holder."""
    holders("trades")
    with pytest.raises(RuntimeError):
        with store.lock("trades") as taken:
            assert taken is False
            raise RuntimeError("gave up")
    with other.lock("trades") as taken:
        assert taken is False


def test_locks_of_two_tables_are_independent(store: StateStore, other: StateStore, holders: Any) -> None:
    """Holding one table's lock leaves every other table's lock free, in this process and another."""
    holders("trades")
    with store.lock("bars") as bars, other.lock("trades2") as trades2:
        assert bars is True and trades2 is True
        with other.lock("bars") as again:
            assert again is False
    with store.lock("trades") as trades:
        assert trades is False


def test_locks_belong_to_one_state_database(
    store: StateStore, state_config: StateConfig, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two state databases (two deployments) do not share locks: a table's lock held in one is free in the other."""
    differs_on(
        request, state_config, "sqlite",
        "SQLite's lock files (.offloader-<table>.lock) sit beside the database and are named after the table only, "
        "so two state files in one directory share their locks; PostgreSQL's advisory locks belong to one database",
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        if state_config.is_sqlite:
            elsewhere = StateConfig(dsn=state_config.dsn.replace("offloader.db", "another.db"))
        else:
            elsewhere = StateConfig(dsn=stack.enter_context(fresh_pg_database()))
        second = StateStore(elsewhere)
        stack.callback(second.close)
        second.migrate()
        with store.lock("trades") as here, second.lock("trades") as there:
            assert here is True
            assert there is True

"""Disaster recovery, performed for real and ended with `check` exact (docs/runbooks/catalog-lost.md,
docs/runbooks/state-lost.md).

- **The catalog database is lost:** its tables are dropped from PostgreSQL. A run then refuses to
  start an empty table over the lost one; `offloader catalog recover` registers each table
  again from the newest metadata file known to have landed, and the next runs go on exactly.
- **The catalog is restored from an old backup:** its row points to an old metadata file;
  recovery moves it to the newest landed one.
- **A newer metadata file that never landed** (what a process killed between writing it and the
  catalog's update leaves; here written exactly as PyIceberg stages it) is never registered:
  recovery refuses, naming it, and registers the landed file when told to. The same holds for a
  commit that did land but whose process was killed before its landed record was written.
- **The state database is lost:** its tables are dropped. The next run rebuilds the mirrors from
  the Iceberg markers, offloads nothing twice, and the history starts afresh.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg2
import pytest
from helpers import Workspace, assert_exact, trades_table

STATE_TABLES = ("offloader_watermarks", "offloader_runs", "maintenance_audit_log", "offloader_replicas")
CATALOG_TABLES = ("iceberg_tables", "iceberg_namespace_properties")


def _sql(ws: Workspace, *statements: str) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(ws.pg_dsn)
    conn.autocommit = True
    rows: list[tuple[Any, ...]] = []
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                if cur.description is not None:
                    rows = list(cur.fetchall())
    finally:
        conn.close()
    return rows


def _offloaded(ws: Workspace, hours: int = 3) -> None:
    """A trades table with ``hours`` hourly windows committed (three runs, so several metadata files)."""
    ws.tables = [trades_table()]
    ws.create_trades()
    for hour in range(hours):
        ws.insert_trades(1000, start=f"2026-01-01 {hour:02d}:00:00", step_us=3_000_000, first_seq=hour * 1000)
        done = ws.run_once()
        assert done.returncode == 0, done.stderr[-2000:]


def _current_location(ws: Workspace) -> str:
    (row,) = _sql(ws, "SELECT metadata_location FROM iceberg_tables WHERE table_name = 'trades'")
    return str(row[0])


def _lose_catalog(ws: Workspace) -> None:
    _sql(ws, *(f"DROP TABLE {name}" for name in CATALOG_TABLES))


def _more_and_check(ws: Workspace, first_seq: int) -> None:
    """New rows arrive, a run takes them, and the cold tier is exact (by `check` and by three readers)."""
    ws.insert_trades(500, start="2026-01-01 05:00:00", step_us=3_000_000, first_seq=first_seq)
    done = ws.run_once()
    assert done.returncode == 0, done.stderr[-2000:]
    check = ws.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr[-2000:]
    assert_exact(ws)


# SeaweedFS keeps its REST catalog in the filer that holds the data, and deletes a dropped table's
# files whatever purgeRequested says: its catalog cannot be lost alone, so the REST set-up is not run.
@pytest.mark.parametrize("storage", ["local", "s3-sql"], indirect=True)
def test_a_lost_catalog_is_registered_again_and_the_table_goes_on_exactly(ws: Workspace) -> None:
    _offloaded(ws)
    newest = ws.iceberg_table("cold.trades").metadata_location
    _lose_catalog(ws)

    refused = ws.run_once()
    assert refused.returncode == 1
    assert "offloader catalog recover --table trades" in refused.stdout + refused.stderr
    dry = ws.cli("catalog", "recover", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"trades: would register: {newest} " in dry.stdout, "the newest landed file; no empty table was started"

    recovered = ws.cli("catalog", "recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert "trades: registered" in recovered.stdout
    assert ws.iceberg_table("cold.trades").metadata_location == newest
    assert ws.cli("catalog", "recover").stdout.startswith("trades: already current")

    _more_and_check(ws, first_seq=3000)
    audit = ws.cli("audit", "--action", "recover")
    assert "registered" in audit.stdout


def test_a_catalog_restored_from_an_old_backup_is_moved_to_the_newest_landed_file(ws: Workspace) -> None:
    _offloaded(ws, hours=1)
    old = _current_location(ws)  # the backup is taken here
    ws.insert_trades(1000, start="2026-01-01 01:00:00", step_us=3_000_000, first_seq=1000)
    assert ws.run_once().returncode == 0
    newest = _current_location(ws)
    _sql(ws, f"UPDATE iceberg_tables SET metadata_location = '{old}' WHERE table_name = 'trades'")  # the restore

    recovered = ws.cli("catalog", "recover", "--table", "trades")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert _current_location(ws) == newest
    _more_and_check(ws, first_seq=2000)


def _stage_unlanded_commit(ws: Workspace) -> str:
    """Write what a commit killed before the catalog's update leaves: the data file and the next
    metadata file, staged by PyIceberg itself, with rows the source never had."""
    import pyarrow as pa
    from pyiceberg.serializers import ToOutputFile
    from pyiceberg.table.update import update_table_metadata

    table = ws.iceberg_table("cold.trades")
    rows = table.scan(limit=5).to_arrow()
    rows = rows.set_column(
        rows.schema.get_field_index("sequence_number"),
        "sequence_number",
        pa.array([10**9 + i for i in range(len(rows))], pa.uint64()),
    )
    tx = table.transaction()
    tx.append(rows.cast(table.schema().as_arrow()), snapshot_properties={"offloader.cursor": json.dumps(["2026-01-02 00:00:00"])})
    staged = update_table_metadata(table.metadata, tx._updates, metadata_location=table.metadata_location)  # noqa: SLF001
    version = int(table.metadata_location.rsplit("/", 1)[-1].split("-", 1)[0]) + 1
    location = f"{table.metadata.location}/metadata/{version:05d}-{uuid.uuid4()}.metadata.json"
    ToOutputFile.table_metadata(staged, table.io.new_output(location))
    return location


def test_recovery_never_registers_a_metadata_file_whose_commit_never_landed(ws: Workspace) -> None:
    _offloaded(ws)
    landed = _current_location(ws)
    unlanded = _stage_unlanded_commit(ws)
    _lose_catalog(ws)

    refused = ws.cli("catalog", "recover")
    assert refused.returncode == 1
    assert unlanded.rsplit("/", 1)[-1] in refused.stdout and "never landed" in refused.stdout
    assert "--metadata" in refused.stdout
    assert not _sql(ws, "SELECT 1 FROM pg_tables WHERE tablename = 'iceberg_tables'") or not _sql(
        ws, "SELECT 1 FROM iceberg_tables WHERE table_name = 'trades'"
    ), "nothing was registered"

    chosen = ws.cli("catalog", "recover", "--table", "trades", "--metadata", landed)
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert "passed over" in chosen.stdout and unlanded.rsplit("/", 1)[-1] in chosen.stdout
    _more_and_check(ws, first_seq=3000)  # the staged rows (sequence numbers from 10**9) are not there


def test_a_commit_killed_before_its_landed_record_is_not_guessed_and_the_landed_parent_is_exact(ws: Workspace) -> None:
    _offloaded(ws, hours=2)
    parent = _current_location(ws)
    ws.insert_trades(1000, start="2026-01-01 02:00:00", step_us=3_000_000, first_seq=2000)
    killed = ws.run_once(kill_at="before_landed_record")
    assert killed.returncode == -9
    landed_but_unrecorded = _current_location(ws)
    assert landed_but_unrecorded != parent
    _lose_catalog(ws)

    refused = ws.cli("catalog", "recover")
    assert refused.returncode == 1 and landed_but_unrecorded.rsplit("/", 1)[-1] in refused.stdout

    # The runbook's safe choice: the file known to have landed; the source still holds the rest.
    chosen = ws.cli("catalog", "recover", "--table", "trades", "--metadata", parent)
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    _more_and_check(ws, first_seq=3000)


def test_the_state_database_surviving_confirms_the_last_commit(ws: Workspace) -> None:
    _offloaded(ws, hours=2)
    ws.insert_trades(1000, start="2026-01-01 02:00:00", step_us=3_000_000, first_seq=2000)
    assert ws.run_once(kill_at="before_landed_record").returncode == -9
    assert ws.run_once().returncode == 0  # records the run, then the catalog is lost before the next commit
    newest = _current_location(ws)
    _lose_catalog(ws)
    recovered = ws.cli("catalog", "recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert _current_location(ws) == newest
    _more_and_check(ws, first_seq=3000)


def test_a_stale_catalog_is_refused_and_forked_history_is_not_guessed(ws: Workspace) -> None:
    """The catalog and the state restored from one old backup: runs refuse the catalog (the
    landed record is ahead of it), instead of offloading again over it and pruning the newer
    branch. Another engine's commits on the stale catalog fork the history: recovery refuses."""
    _offloaded(ws, hours=1)
    old = _current_location(ws)
    ws.insert_trades(1000, start="2026-01-01 01:00:00", step_us=3_000_000, first_seq=1000)
    assert ws.run_once().returncode == 0
    landed = _current_location(ws)  # offloader's last commit: its landed record names it
    for n in range(2):  # two more landed commits (another engine's property changes)
        ws.iceberg_table("cold.trades").transaction().set_properties(note=str(n)).commit_transaction()
    newest = _current_location(ws)
    _sql(ws, f"UPDATE iceberg_tables SET metadata_location = '{old}' WHERE table_name = 'trades'")
    assert ws.cli("mirror", "reset", "--table", "trades").returncode == 0  # the state restored with it

    stale = ws.run_once()
    assert stale.returncode == 1
    assert "the catalog is behind the warehouse" in stale.stderr, stale.stderr[-2000:]
    assert landed.rsplit("/", 1)[-1] in stale.stderr
    assert ws.iceberg_table("cold.trades").metadata_location == old, "nothing committed on the stale catalog"

    for n in range(2):  # another engine commits on the stale catalog: a second landed branch
        ws.iceberg_table("cold.trades").transaction().set_properties(stale=str(n)).commit_transaction()
    refused = ws.cli("catalog", "recover")
    assert refused.returncode == 1, refused.stdout
    assert "history forked" in refused.stdout and "--metadata" in refused.stdout
    chosen = ws.cli("catalog", "recover", "--table", "trades", "--metadata", newest)
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    _more_and_check(ws, first_seq=3000)


def test_a_lost_state_database_is_rebuilt_from_iceberg_and_nothing_is_offloaded_twice(ws: Workspace) -> None:
    _offloaded(ws, hours=2)
    _sql(ws, *(f"DROP TABLE {name}" for name in STATE_TABLES))

    status = ws.cli("status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    (table,) = json.loads(status.stdout)
    assert table["cursor"] is not None, "the cursor is read from Iceberg, not from the lost mirror"
    _more_and_check(ws, first_seq=3000)
    mirror = _sql(ws, "SELECT cursor_json FROM offloader_watermarks WHERE table_name = 'trades'")
    assert mirror, "the mirror is rebuilt"
    history = ws.cli("history")
    assert history.returncode == 0 and "committed" in history.stdout

"""PyIceberg's private API, as offloader's ``iceberg.internals`` relies on it.

Each test pins one behaviour against the installed PyIceberg, with no server (a REST
catalog is a stdlib HTTP stub on loopback), so an upgrade that renames or changes an
internal fails here, fast, rather than in a production cycle.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import requests
from pyiceberg.io.fileformat import FileFormatFactory
from pyiceberg.io.pyarrow import PyArrowFileIO, pyarrow_to_schema
from pyiceberg.manifest import FileFormat
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

from offloader.iceberg import internals

SCHEMA = Schema(
    NestedField(1, "ts", TimestamptzType(), required=True),
    NestedField(2, "seq", LongType(), required=True),
    NestedField(3, "symbol", StringType(), required=False),
)


def rows(n: int, day: int = 1) -> pa.Table:
    start = dt.datetime(2026, 1, day, tzinfo=dt.UTC)
    return pa.table(
        {
            "ts": pa.array([start + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("us", "UTC")),
            "seq": pa.array(range(n), pa.int64()),
            "symbol": pa.array([f"S{i % 7}" for i in range(n)]),
        }
    )


def test_parquet_format_is_registered_by_importing_the_pyarrow_io() -> None:
    """In a fresh interpreter (only the FileIO of fsspec loaded), the Parquet model is found and makes writers."""
    probe = (
        "import pyiceberg.io.fsspec\n"
        "from offloader.iceberg import internals\n"
        "model = internals.parquet_format()\n"
        "print(type(model).__name__, callable(getattr(model, 'create_writer', None)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[1] == "True", done.stdout


def test_written_bytes_is_zero_for_a_writer_without_a_stream() -> None:
    """Without ``_fos`` (an upgrade renamed it) the count is 0 and files never roll: the test below must hold."""
    assert internals.written_bytes(object()) == 0


def test_written_bytes_counts_what_the_parquet_writer_has_written(tmp_path: Path) -> None:
    """The format writer keeps its stream in ``_fos``; its position grows with each write."""
    model = FileFormatFactory.get(FileFormat.PARQUET)
    writer = model.create_writer(PyArrowFileIO().new_output(str(tmp_path / "a.parquet")), SCHEMA, {})
    assert hasattr(writer, "_fos"), "PyIceberg's Parquet writer no longer keeps its stream in _fos"
    table = rows(5_000)
    prepared = pa.Table.from_batches(
        [internals.to_requested_schema(SCHEMA, pyarrow_to_schema(table.schema, name_mapping=SCHEMA.name_mapping), b, model)
         for b in table.to_batches()]
    )  # fmt: skip
    sizes = []
    for _ in range(3):
        writer.write(prepared)
        sizes.append(internals.written_bytes(writer))
    writer.close()
    assert sizes[0] > 0 and sizes[0] < sizes[1] < sizes[2], sizes
    assert (tmp_path / "a.parquet").stat().st_size >= sizes[-1]


def test_to_requested_schema_puts_the_table_field_ids_on_the_rows() -> None:
    """Arrow without field ids comes back in the table's layout, each field carrying its Iceberg id."""
    table = rows(10)
    file_schema = pyarrow_to_schema(table.schema, name_mapping=SCHEMA.name_mapping)
    model = FileFormatFactory.get(FileFormat.PARQUET)
    (batch,) = [internals.to_requested_schema(SCHEMA, file_schema, b, model) for b in table.to_batches()]
    ids = {f.name: int(f.metadata[b"PARQUET:field_id"]) for f in batch.schema}
    assert ids == {"ts": 1, "seq": 2, "symbol": 3}
    assert batch.num_rows == 10 and batch.column(1).to_pylist() == list(range(10))


def test_determine_partitions_splits_rows_by_partition_key() -> None:
    """A chunk spanning two days comes back as two (key, rows) parts with the right rows each."""
    spec = PartitionSpec(PartitionField(source_id=1, field_id=1000, transform=DayTransform(), name="ts_day"))
    table = pa.concat_tables([rows(30, day=1), rows(12, day=2)])
    parts = list(internals.determine_partitions(spec, SCHEMA, table))
    assert sorted(part.num_rows for _, part in parts) == [12, 30]
    paths = {key.to_path(): part.num_rows for key, part in parts}
    assert paths == {"ts_day=2026-01-01": 30, "ts_day=2026-01-02": 12}


class _SlowCatalog(http.server.BaseHTTPRequestHandler):
    """A REST catalog stub: answers /v1/config at once, and every other request after 5 s."""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if not self.path.startswith("/v1/config"):
            time.sleep(5)
        body = json.dumps({"defaults": {}, "overrides": {}, "namespaces": []}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up: that is the point

    def log_message(self, *args: object) -> None: ...


@pytest.fixture
def slow_catalog() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowCatalog)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bounded_rest_catalog_times_out_a_stalled_request(slow_catalog: str) -> None:
    """Every session the REST catalog creates (``_create_session``) gets the request timeout."""
    catalog = internals.bounded_rest_catalog("cold", {"uri": slow_catalog, internals.REST_TIMEOUT: "0.5"})
    with pytest.raises(requests.exceptions.Timeout):
        catalog.list_namespaces()


def _catalog_with_table(tmp_path: Path) -> tuple[Any, Any]:
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}")
    catalog.create_namespace("n")
    table = catalog.create_table("n.t", rows(1).schema)
    table.append(rows(3))
    return catalog, table


def test_the_transaction_property_replays_the_staged_updates_on_the_table_metadata() -> None:
    import inspect

    from pyiceberg.table import Transaction

    source = inspect.getsource(Transaction.table_metadata.fget)
    assert "update_table_metadata(self._table.metadata, self._updates)" in source


def test_replayed_is_update_table_metadata_without_the_copy(tmp_path: Path) -> None:
    from pyiceberg.table.update import update_table_metadata

    _, table = _catalog_with_table(tmp_path)
    tx = table.transaction()
    tx.set_properties({"k": "v"})
    tx.append(rows(2, day=2))
    base, updates = table.metadata, tx._updates
    assert len(updates) >= 3  # properties, the snapshot and its ref
    ours, theirs = internals.replayed(base, updates), update_table_metadata(base, updates)
    assert ours.model_dump(exclude={"last_updated_ms"}) == theirs.model_dump(exclude={"last_updated_ms"})
    assert ours.last_updated_ms > base.last_updated_ms
    assert ours.snapshots[0] is base.snapshots[0]  # shared, not copied
    assert internals.replayed(base, ()) is base


def test_cached_metadata_computes_once_per_staged_change_and_follows_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog, table = _catalog_with_table(tmp_path)
    calls: list[int] = []
    replay = internals.replayed

    def counting(base: Any, updates: tuple[Any, ...]) -> Any:
        calls.append(len(updates))
        return replay(base, updates)

    monkeypatch.setattr(internals, "replayed", counting)
    tx = internals.cached_metadata(table.transaction())
    first = tx.table_metadata
    assert tx.table_metadata is first and len(calls) == 1  # a second read is free
    tx.set_properties({"k": "v"})
    staged = tx.table_metadata
    assert staged.properties["k"] == "v" and "k" not in first.properties  # a staged change is seen
    assert tx.table_metadata is staged and len(calls) == 2
    other = catalog.load_table("n.t")
    other.append(rows(2, day=2))
    tx._table.refresh()
    assert tx.table_metadata.current_snapshot().snapshot_id == other.current_snapshot().snapshot_id  # follows refresh
    assert len(calls) == 3
    tx.commit_transaction()
    assert catalog.load_table("n.t").properties["k"] == "v"
    assert type(internals.cached_metadata(tx)) is type(tx)  # wrapping twice is a no-op


def test_lean_sql_catalog_commits_what_pyiceberg_commits_and_still_sees_other_writers(tmp_path: Path) -> None:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.exceptions import CommitFailedException

    props = {"uri": f"sqlite:///{tmp_path}/c.db", "warehouse": f"file://{tmp_path}"}
    plain = SqlCatalog("t", **props)
    plain.create_namespace("n")
    plain.create_table(
        "n.t", rows(1).schema, properties={"write.metadata.previous-versions-max": "2", "commit.retry.num-retries": "0"}
    )
    lean = internals.lean_sql_catalog("t", props)
    table = lean.load_table("n.t")
    assert lean.load_table("n.t").metadata is table.metadata  # a location is parsed once
    for day in (1, 2, 3):
        table.append(rows(2, day=day))
    reloaded = plain.load_table("n.t")  # what any other reader parses from the file
    assert reloaded.metadata_location == table.metadata_location
    assert reloaded.metadata.model_dump() == table.metadata.model_dump()
    assert len(reloaded.metadata.snapshots) == 3 and len(reloaded.metadata.metadata_log) == 2  # the log is bounded
    assert reloaded.scan().to_arrow().num_rows == 6
    stale = lean.load_table("n.t")
    plain.load_table("n.t").append(rows(1, day=4))  # another writer commits first
    with pytest.raises(CommitFailedException):
        stale.append(rows(1, day=5))
    fresh = lean.load_table("n.t")
    assert fresh.metadata_location == plain.load_table("n.t").metadata_location
    assert fresh.scan().to_arrow().num_rows == 7


def test_metadata_json_is_what_pyiceberg_writes_and_serialises_a_snapshot_once(tmp_path: Path) -> None:
    props = {"uri": f"sqlite:///{tmp_path}/c.db", "warehouse": f"file://{tmp_path}"}
    lean = internals.lean_sql_catalog("t", props)
    lean.create_namespace("n")
    table = lean.create_table("n.t", rows(1).schema, properties={"commit.retry.num-retries": "0"})
    for day in (1, 2, 3, 4):
        table.append(rows(2, day=day))
    metadata = table.metadata
    written = json.loads(Path(table.metadata_location.removeprefix("file://")).read_text())
    assert written == json.loads(metadata.model_dump_json())  # the file is PyIceberg's own JSON
    assert len(written["snapshots"]) == 4
    first = metadata.snapshots[0]
    pieces = internals._SNAPSHOT_JSON[str(metadata.table_uuid)]
    kept = pieces[first.snapshot_id][1]
    table.append(rows(2, day=5))  # the next commit reuses the piece of every earlier snapshot
    assert table.metadata.snapshots[0] is first
    assert internals._SNAPSHOT_JSON[str(metadata.table_uuid)][first.snapshot_id][1] is kept
    older = [s.snapshot_id for s in table.metadata.snapshots[:2]]
    table.maintenance.expire_snapshots().by_ids(older).commit()
    after = json.loads(Path(table.metadata_location.removeprefix("file://")).read_text())
    assert after == json.loads(table.metadata.model_dump_json())
    assert [s["snapshot-id"] for s in after["snapshots"]] == [s.snapshot_id for s in table.metadata.snapshots]
    assert set(internals._SNAPSHOT_JSON[str(metadata.table_uuid)]) == {s.snapshot_id for s in table.metadata.snapshots}
    assert lean.load_table("n.t").scan().to_arrow().num_rows == 10  # expiry drops history, not rows

"""Faults on the storage path and refused credentials, against the real SeaweedFS (S3 and its REST catalog).

offloader reaches S3, and on the REST set-up the Iceberg REST catalog, through the fault
proxies of tests/faultproxy.py (``Storage.endpoint`` and ``Storage.rest_uri`` point at them);
the test's own readers (PyIceberg, ClickHouse, DuckDB, PyArrow's S3 client) reach SeaweedFS
directly. After every fault the table must hold no snapshot that refers to a missing or partial
file, an unknown commit outcome must have been settled from the snapshot history, the next
cycle must be exact, and orphan removal must leave exactly the files the snapshots refer to.

PyArrow's S3 client (the AWS SDK) retries network errors, timeouts and ``503 SlowDown`` itself,
three attempts in all: a fault on one attempt is absorbed within the cycle, a fault on every
attempt fails the window, whose files are then discarded.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
import pytest
import structlog
from faultproxy import FaultProxy
from helpers import Workspace, assert_exact, events, trades_table

from offloader.errors import AuthenticationError, CatalogError

S3_SETUPS = pytest.mark.parametrize("storage", ["s3-sql", "s3-rest"], indirect=True)
DATA = r"/data/.*\.parquet$"
DAY2 = r"/data/exchange_timestamp_day=2026-01-02/.*\.parquet$"  # the second of a window's two files
MANIFESTS = r"/metadata/[^/]*\.avro$"
METADATA_JSON = r"/metadata/[^/]*\.metadata\.json$"
COMPLETE = r"^uploadId="  # CompleteMultipartUpload: the moment an S3 object comes into being
COMMIT = r"^/v1/.*/namespaces/[^/]+/tables/[^/]+$"  # the REST catalog's commit (and load) of one table


@dataclass
class Proxies:
    """The fault proxies between offloader and SeaweedFS."""

    s3: FaultProxy
    rest: FaultProxy | None


@pytest.fixture
def proxied(ws: Workspace) -> Iterator[Proxies]:
    """offloader reaches S3 (and the REST catalog) through fault proxies; the test's readers reach SeaweedFS directly."""
    seaweed = ws.storage.seaweed
    assert seaweed is not None
    s3 = FaultProxy(seaweed.endpoint).start()
    rest = FaultProxy(seaweed.rest_uri).start() if ws.storage.rest else None
    ws.storage.endpoint = s3.url
    ws.storage.rest_uri = rest.url if rest else None
    try:
        yield Proxies(s3, rest)
    finally:
        s3.close()
        if rest is not None:
            rest.close()


# -- helpers ---------------------------------------------------------------------------------


def seed(ws: Workspace) -> Any:
    """A trades table whose first window is committed; rows for a second window spanning two
    day partitions (two data files) are waiting. Returns the app."""
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(2000, start="2026-01-01 00:00:00")
    app = ws.app()
    (first,) = app.run_cycle()
    assert first.outcome == "committed", first.reason
    ws.insert_trades(3000, start="2026-01-01 23:59:58", first_seq=2000)  # across midnight
    return app


def cycle(app: Any) -> tuple[Any, list[Any]]:
    """One cycle of the one table, with the log events it emitted."""
    with structlog.testing.capture_logs() as logs:
        (result,) = app.run_cycle()
    return result, logs


def s3_path(location: str) -> str:
    return location.removeprefix("s3://")


def referenced(ws: Workspace) -> dict[str, int | None]:
    """Every file the table's metadata refers to, read by PyIceberg straight from SeaweedFS:
    metadata files, manifest lists, manifests and data files, with their recorded size (None
    where the metadata records none)."""
    table = ws.iceberg_table("cold.trades")
    io, metadata = table.io, table.metadata
    files: dict[str, int | None] = {table.metadata_location: None}
    files.update({entry.metadata_file: None for entry in metadata.metadata_log})
    for snapshot in metadata.snapshots:
        files[snapshot.manifest_list] = None
        for manifest in snapshot.manifests(io):
            files[manifest.manifest_path] = manifest.manifest_length
            for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                files[entry.data_file.file_path] = entry.data_file.file_size_in_bytes
    return files


def listed(ws: Workspace) -> dict[str, int]:
    """Every file under the table's location, listed straight from SeaweedFS: location -> size."""
    from pyarrow.fs import FileSelector, FileType

    assert ws.storage.seaweed is not None
    location = ws.iceberg_table("cold.trades").metadata.location
    infos = ws.storage.seaweed.filesystem().get_file_info(FileSelector(s3_path(location), recursive=True))
    return {f"s3://{info.path}": int(info.size or 0) for info in infos if info.type == FileType.File}


def assert_sound(ws: Workspace) -> None:
    """No snapshot refers to a missing or partial file: each one exists with the size its
    metadata records, and each data file is whole Parquet holding the rows its manifest says."""
    assert ws.storage.seaweed is not None
    fs = ws.storage.seaweed.filesystem()
    table = ws.iceberg_table("cold.trades")
    present = listed(ws)
    for path, size in referenced(ws).items():
        assert path in present, f"a snapshot refers to {path}, which is not there"
        assert size is None or present[path] == size, f"{path} has {present[path]} bytes, its metadata says {size}"
    for snapshot in table.metadata.snapshots:
        for manifest in snapshot.manifests(table.io):
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                rows = pq.read_metadata(s3_path(entry.data_file.file_path), filesystem=fs).num_rows
                assert rows == entry.data_file.record_count, f"{entry.data_file.file_path} is partial"


def assert_no_stray_data(ws: Workspace) -> None:
    """The data files of a window that was not committed were discarded: every data file under
    the table's location is one a snapshot refers to."""
    refs = referenced(ws)
    stray = sorted(path for path in listed(ws) if path.endswith(".parquet") and path not in refs)
    assert not stray, f"data files of a failed window were left behind: {stray}"


def assert_orphans_removable(ws: Workspace, app: Any) -> None:
    """Orphan removal, with a clock past orphan_age, leaves exactly the files the snapshots refer to."""
    from offloader.maintenance import Maintenance

    work = Maintenance(app.job(app.config.tables[0], clock=lambda: time.time() + 2 * 86400))
    (result,) = work.run(("remove_orphans",))
    assert result.ok, result.detail
    landed = {path for path in listed(ws) if path.endswith("/offloader/landed.json")}  # kept on purpose
    assert set(listed(ws)) - landed == set(referenced(ws)), "files under the table location that orphan removal would not remove"


def window_snapshots(ws: Workspace) -> list[Any]:
    """The snapshots that committed the second window (its last row is sequence number 4999)."""
    table = ws.iceberg_table("cold.trades")
    return [s for s in table.snapshots() if json.loads(s.summary.additional_properties["offloader.cursor"])[1] == 4999]


def assert_recovers(ws: Workspace, app: Any, proxies: Proxies) -> None:
    """With the faults gone the next cycle is exact, every file is sound, and orphan removal
    leaves exactly the referenced files."""
    proxies.s3.disarm()
    if proxies.rest is not None:
        proxies.rest.disarm()
    result, _ = cycle(app)
    assert result.ok, result.reason
    assert len(window_snapshots(ws)) == 1, "the second window is in exactly one snapshot"
    assert_exact(ws)
    assert_sound(ws)
    assert_orphans_removable(ws, app)
    app.close()


def assert_settled_not_landed(ws: Workspace, app: Any, proxies: Proxies, logs: Any, result: Any, before: int) -> None:
    """An unknown commit outcome settled by its commit id as not landed (never taken for a conflict):
    the table failed retryably, no snapshot was added, nothing stray is left, the next cycle is exact."""
    (unknown,) = events(logs, "commit_unknown")
    (settled,) = events(logs, "commit_settled")
    assert settled["landed"] is False and settled["commit_id"] == unknown["commit_id"]
    assert not events(logs, "commit_conflict"), "an unknown outcome is never taken for a conflict"
    assert result.outcome == "failed" and "the commit did not land" in result.reason and result.error.retryable
    assert len(ws.iceberg_table("cold.trades").snapshots()) == before
    assert_sound(ws)
    assert_no_stray_data(ws)
    assert_recovers(ws, app, proxies)


# -- A. faults on the storage path ----------------------------------------------------------


TRANSIENT: dict[str, dict[str, Any]] = {
    "reset_mid_body": {"method": "PUT", "fault": "reset_mid_body"},
    "slow_down": {"method": "PUT", "fault": "slow_down"},
    "stall": {"method": "PUT", "fault": "stall"},
    "reply_lost": {"method": "POST", "query_re": COMPLETE, "fault": "reset_after"},
}


@S3_SETUPS
@pytest.mark.parametrize("case", list(TRANSIENT))
def test_a_fault_on_one_upload_attempt_is_absorbed_by_the_s3_client_retry(ws: Workspace, proxied: Proxies, case: str) -> None:
    """A reset mid-upload, a 503 SlowDown, a stall past the timeout or a lost reply on one attempt of a data file upload is retried by the S3 client, and the window commits once, whole."""
    if case == "stall":
        ws.storage.properties.update({"s3.connect-timeout": "1", "s3.request-timeout": "1"})
    app = seed(ws)
    rule = proxied.s3.arm(path_re=DATA, times=1, **TRANSIENT[case])
    result, _ = cycle(app)
    assert rule.hits == 1, "the fault fired"
    assert result.outcome == "committed" and result.rows == 3000, result.reason
    assert len(window_snapshots(ws)) == 1
    assert_sound(ws)
    assert_no_stray_data(ws)
    ws.insert_trades(500, start="2026-01-02 01:00:00", first_seq=5000)
    assert_recovers(ws, app, proxied)


PERSISTENT: dict[str, dict[str, Any]] = {
    "data-reset_mid_body": {"method": "PUT", "path_re": DAY2, "fault": "reset_mid_body"},
    "data-slow_down": {"method": "PUT", "path_re": DAY2, "fault": "slow_down"},
    "data-stall": {"method": "PUT", "path_re": DAY2, "fault": "stall"},
    "data-reply_lost": {"method": "POST", "path_re": DAY2, "query_re": COMPLETE, "fault": "reset_after"},
    "manifest-reset_mid_body": {"method": "PUT", "path_re": MANIFESTS, "fault": "reset_mid_body"},
}


@S3_SETUPS
@pytest.mark.parametrize("case", list(PERSISTENT))
def test_a_persistent_upload_fault_fails_the_window_cleanly(ws: Workspace, proxied: Proxies, case: str) -> None:
    """A fault on every attempt of one upload of a window (a data file or a manifest) fails the window as a retryable catalog error, its files are discarded, and the next cycle is exact."""
    if case.endswith("stall"):
        ws.storage.properties.update({"s3.connect-timeout": "1", "s3.request-timeout": "1"})
    app = seed(ws)
    before = len(ws.iceberg_table("cold.trades").snapshots())
    rule = proxied.s3.arm(**PERSISTENT[case])
    result, logs = cycle(app)
    assert rule.hits >= 3, "every attempt of the S3 client met the fault"
    assert result.outcome == "failed" and type(result.error) is CatalogError and result.error.retryable, result.error
    assert not events(logs, "commit_unknown"), "the commit was never sent"
    assert len(ws.iceberg_table("cold.trades").snapshots()) == before, "nothing was committed"
    assert_sound(ws)
    assert_no_stray_data(ws)
    assert_recovers(ws, app, proxied)


SQL_METADATA: dict[str, dict[str, Any]] = {
    "before": {"method": "PUT", "path_re": METADATA_JSON, "fault": "reset_mid_body"},
    "after": {"method": "POST", "path_re": METADATA_JSON, "query_re": COMPLETE, "fault": "reset_after"},
}


@pytest.mark.parametrize("storage", ["s3-sql"], indirect=True)
@pytest.mark.parametrize("moment", list(SQL_METADATA))
def test_a_failed_metadata_write_of_the_sql_catalog_is_settled_as_not_landed(
    ws: Workspace, proxied: Proxies, moment: str
) -> None:
    """The SQL catalog's commit writes the new metadata file to S3 first: failing it (mid-upload, or its reply lost after it was stored) leaves the outcome unknown, settled from the snapshot history as not landed, and the next cycle is exact."""
    app = seed(ws)
    before = len(ws.iceberg_table("cold.trades").snapshots())
    rule = proxied.s3.arm(**SQL_METADATA[moment])
    result, logs = cycle(app)
    assert rule.hits >= 3
    assert_settled_not_landed(ws, app, proxied, logs, result, before)


REST_BEFORE: dict[str, dict[str, Any]] = {
    "500": {"fault": "error_before", "status": 500},
    "502": {"fault": "error_before", "status": 502},
    "503": {"fault": "error_before", "status": 503},
    "504": {"fault": "error_before", "status": 504},
    "reset_mid_body": {"fault": "reset_mid_body"},
    "stall": {"fault": "stall", "seconds": 900},  # past rest.request-timeout; unbounded, PyIceberg would wait it out
}


@pytest.mark.parametrize("storage", ["s3-rest"], indirect=True)
@pytest.mark.parametrize("case", list(REST_BEFORE))
def test_a_rest_commit_failing_before_it_lands_is_settled_as_not_landed(ws: Workspace, proxied: Proxies, case: str) -> None:
    """A REST commit answered 5xx, cut mid-request or stalled past the timeout without reaching the catalog is an unknown outcome, settled by the commit id as not landed: sent once, its files discarded, and the next cycle exact."""
    assert proxied.rest is not None
    if case == "stall":
        ws.storage.properties["rest.request-timeout"] = "2"
    app = seed(ws)
    before = len(ws.iceberg_table("cold.trades").snapshots())
    rule = proxied.rest.arm(method="POST", path_re=COMMIT, times=1, **REST_BEFORE[case])
    result, logs = cycle(app)
    assert rule.hits == 1
    assert len(proxied.rest.requests("POST", COMMIT)) == 2, "the first window's commit and this one, never sent again blindly"
    assert_settled_not_landed(ws, app, proxied, logs, result, before)


REST_AFTER: dict[str, dict[str, Any]] = {
    "500": {"fault": "error_after", "status": 500},
    "502": {"fault": "error_after", "status": 502},
    "503": {"fault": "error_after", "status": 503},
    "504": {"fault": "error_after", "status": 504},
    "reset": {"fault": "reset_after"},
}


@pytest.mark.parametrize("storage", ["s3-rest"], indirect=True)
@pytest.mark.parametrize("case", list(REST_AFTER))
def test_a_rest_commit_whose_reply_is_lost_is_settled_as_landed_once(ws: Workspace, proxied: Proxies, case: str) -> None:
    """A REST commit that lands but whose reply is replaced by a 5xx or a reset is settled by the commit id as landed: the window is in exactly one snapshot, its files kept, and the next cycle exact."""
    assert proxied.rest is not None
    app = seed(ws)
    rule = proxied.rest.arm(method="POST", path_re=COMMIT, times=1, **REST_AFTER[case])
    result, logs = cycle(app)
    assert rule.hits == 1
    assert len(proxied.rest.requests("POST", COMMIT)) == 2, "the lost commit was not sent again"
    (unknown,) = events(logs, "commit_unknown")
    (settled,) = events(logs, "commit_settled")
    assert settled["landed"] is True and settled["commit_id"] == unknown["commit_id"]
    assert result.outcome == "committed" and result.rows == 3000, result.reason
    (snapshot,) = window_snapshots(ws)
    assert snapshot.snapshot_id == settled["snapshot_id"] == result.snapshot_id
    assert snapshot.summary.additional_properties["offloader.commit-id"] == unknown["commit_id"]
    assert_sound(ws)
    assert_no_stray_data(ws)
    (again, _) = cycle(app)
    assert again.outcome == "nothing_new", "the window is not taken a second time"
    assert_recovers(ws, app, proxied)


@pytest.mark.parametrize("storage", ["s3-rest"], indirect=True)
def test_a_lost_commit_reply_whose_lookup_fails_too_is_settled_by_the_next_run(ws: Workspace, proxied: Proxies) -> None:
    """A REST commit that lands with its reply lost, and whose settling lookup fails too, leaves its files in place; the next run finds the window in the marker and takes it no second time."""
    assert proxied.rest is not None
    app = seed(ws)
    commit = proxied.rest.arm(method="POST", path_re=COMMIT, times=1, fault="error_after", status=502)
    lookup = proxied.rest.arm(method="GET", path_re=COMMIT, times=1, fault="error_before", status=503, after=commit)
    result, logs = cycle(app)
    assert commit.hits == 1 and lookup.hits == 1
    assert events(logs, "commit_unknown") and not events(logs, "commit_settled")
    assert result.outcome == "failed" and result.error.retryable, result.reason
    (snapshot,) = window_snapshots(ws)  # it did land
    assert_sound(ws)
    assert_no_stray_data(ws)  # its files were kept
    (again, _) = cycle(app)
    assert again.outcome == "nothing_new", again.reason
    assert [s.snapshot_id for s in window_snapshots(ws)] == [snapshot.snapshot_id]
    assert_recovers(ws, app, proxied)


# -- B. refused credentials fail at once ----------------------------------------------------


def run_refused(ws: Workspace, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`offloader once` in a subprocess, with retries configured (three attempts)."""
    ws.schedule.update(retry_attempts=3, retry_backoff="0.1s")
    return ws.cli("once", env=env)


def assert_refused(done: subprocess.CompletedProcess[str], where: str, secret: str) -> None:
    """Exit 1 with "authentication failed at <where>", never retried, the secret in no output."""
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert f"authentication failed at {where}" in done.stderr, done.stderr[-3000:]
    assert '"table_retry"' not in output, "a refused credential is never retried"
    assert "internal error" not in output
    assert secret not in output


@pytest.mark.parametrize("storage", ["s3-rest"], indirect=True)
@pytest.mark.parametrize("kind", ["credential", "token"])
def test_a_refused_rest_catalog_credential_fails_at_once(ws: Workspace, kind: str) -> None:
    """A wrong REST client secret (OAuth invalid_client) or an invalid bearer token (401) fails `once` at once with exit 1 and "authentication failed at" the catalog URI, never retried, the secret in no output."""
    assert ws.storage.seaweed is not None
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(100, start="2026-01-01 00:00:00")
    wrong = "wr0ng-" + ws.storage.uid
    if kind == "credential":
        env = {"OFFLOADER__CATALOG__CREDENTIAL": f"offloader:{wrong}"}  # the environment wins over the secret file
    else:
        ws.secret_files = False  # no credential to fetch a fresh token with: only the bearer token
        env = {"OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY": ws.storage.seaweed.secret_key, "OFFLOADER__CATALOG__TOKEN": wrong}
    done = run_refused(ws, env)
    assert_refused(done, f"the Iceberg REST catalog {ws.storage.seaweed.rest_uri}", wrong)


@pytest.mark.parametrize("storage", ["s3-sql", "s3-rest", "s3-sql-fsspec", "s3-rest-fsspec"], indirect=True)
def test_a_refused_s3_secret_key_fails_at_once(ws: Workspace) -> None:
    """A wrong S3 secret key (SignatureDoesNotMatch, or AccessDenied for a bodiless request) fails `once` with exit 1 and "authentication failed at" the S3 endpoint, never retried, the secret in no output."""
    assert ws.storage.seaweed is not None
    ws.tables = [trades_table()]
    ws.create_trades()
    ws.insert_trades(100, start="2026-01-01 00:00:00")
    wrong = "wr0ng-" + ws.storage.uid
    done = run_refused(ws, {"OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY": wrong})
    assert_refused(done, f"the S3 endpoint {ws.storage.seaweed.endpoint}", wrong)
    assert "trades: FAILED: authentication failed" in done.stderr


REFUSALS: dict[str, tuple[str, dict[str, Any]]] = {
    "s3-upload-403": ("s3", {"method": "PUT", "path_re": DAY2, "fault": "error_before", "status": 403}),
    "rest-commit-403": ("rest", {"method": "POST", "path_re": COMMIT, "fault": "error_before", "status": 403}),
}


@pytest.mark.parametrize(
    "storage, case",
    [("s3-sql", "s3-upload-403"), ("s3-rest", "s3-upload-403"), ("s3-rest", "rest-commit-403")],
    indirect=["storage"],
)
def test_a_refusal_in_the_middle_of_a_run_fails_the_table_at_once(ws: Workspace, proxied: Proxies, case: str) -> None:
    """A 403 from S3 on a data file upload, or from the REST catalog on the commit, fails the table with an AuthenticationError that is not retried; nothing is committed and the next cycle is exact."""
    which, rule_args = REFUSALS[case]
    ws.schedule.update(retry_attempts=3, retry_backoff="0.1s")
    app = seed(ws)
    before = len(ws.iceberg_table("cold.trades").snapshots())
    proxy = proxied.rest if which == "rest" else proxied.s3
    assert proxy is not None
    rule = proxy.arm(**rule_args)
    result, logs = cycle(app)
    assert rule.hits == 1, "refused once, never asked again"
    assert len(events(logs, "table_started")) == 1 and not events(logs, "table_retry")
    assert isinstance(result.error, AuthenticationError) and not result.error.retryable, result.error
    assert str(result.error).startswith("authentication failed at the ")
    assert len(ws.iceberg_table("cold.trades").snapshots()) == before
    assert_sound(ws)
    assert_no_stray_data(ws)
    assert_recovers(ws, app, proxied)

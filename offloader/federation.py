"""One ClickHouse view per table over warm and cold rows: ``<source>_all``.

The view is the source's rows above the committed cursor, UNION ALL the Iceberg rows at or
below it, read by ClickHouse's own Iceberg reader (``icebergLocal``, or ``icebergS3`` with
a named collection for the credentials) pinned to the metadata file that carries that
cursor (``iceberg_metadata_file_path``). Both halves are cut at the same cursor tuple and
the Iceberg half is pinned to the snapshot that holds exactly the rows up to it, so the
view counts every row once whatever the offloader does next, and ClickHouse's TTL may
delete hot rows already in Iceberg. The Iceberg half is cast back to the source's types.

:func:`view_sql` builds the DDL (library-free text); :class:`Federation` reads what it
needs through the ``Engine`` and ``SinkTable`` ports and replaces a view after each commit
(:meth:`Federation.after_commit`). A replacement that fails is logged and counted, never
raised: the commit stands, and the view, still exact at the previous cut, is replaced at
the next commit or run. ``docs/federation.md`` says what a query through it costs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from offloader.chtypes import parse_type, quote_identifier, render_type
from offloader.config import Config, TableConfig
from offloader.errors import ConfigError, OffloaderError
from offloader.ports import Engine, SinkTable

SUFFIX = "_all"
TIME_LITERAL = "toDateTime64({}, 9, 'UTC')"


def literal(value: Any) -> str:
    """A ClickHouse literal of a cursor value (text quoted and escaped, numbers as written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def bare_type(ch_type: str) -> str:
    """The type without LowCardinality, for a typed literal."""
    node = parse_type(ch_type)
    return render_type(node.args[0]) if node.name == "LowCardinality" else ch_type


def cut(cursor_columns: Sequence[str], values: Sequence[Any], types: dict[str, str]) -> tuple[str, str]:
    """(hot, cold): the predicates of the rows above the cursor and at or below it.

    A whole cursor tuple compares as a tuple, as the offload's windows do; a cursor of the
    time alone (after a reset, and in replace mode) cuts on the time column."""
    time_value = TIME_LITERAL.format(literal(values[0]))
    if len(cursor_columns) > 1 and len(values) == len(cursor_columns):
        cols = ", ".join(quote_identifier(c) for c in cursor_columns)
        vals = [time_value] + [
            f"CAST({literal(v)} AS {bare_type(types[c])})" for c, v in zip(cursor_columns[1:], values[1:], strict=True)
        ]
        left, right = f"({cols})", f"({', '.join(vals)})"
    else:
        left, right = quote_identifier(cursor_columns[0]), time_value
    return f"{left} > {right}", f"{left} <= {right}"


def cold_column(name: str, ch_type: str, read_type: str | None) -> str:
    """The Iceberg column ``name`` (read by ClickHouse as ``read_type``) as the source's ``ch_type``.

    A column the pinned snapshot does not have (added to the source since) and the NULLs of
    a column Iceberg added later take the type's default, as ClickHouse shows old parts."""
    col, target = quote_identifier(name), ch_type
    if read_type is None:
        return f"defaultValueOfTypeName({literal(target)}) AS {col}"
    if read_type == ch_type:
        return col
    nullable = ch_type.startswith(("Nullable(", "LowCardinality(Nullable("))
    if read_type.startswith("Nullable(") and not nullable:
        return f"CAST(if(isNull({col}), defaultValueOfTypeName({literal(target)}), CAST({col} AS {target})) AS {target}) AS {col}"
    return f"CAST({col} AS {target}) AS {col}"


def view_sql(
    view: str, source: str, columns: Sequence[tuple[str, str]], cursor_columns: Sequence[str],
    cursor: Sequence[Any] | None, iceberg: str | None, read_types: dict[str, str],
) -> str:  # fmt: skip
    """``CREATE OR REPLACE VIEW``: the hot rows above ``cursor`` UNION ALL the rows of the
    table function ``iceberg`` at or below it (the hot rows alone while nothing is committed)."""
    names = ", ".join(quote_identifier(name) for name, _ in columns)
    if cursor is None or iceberg is None:
        return f"CREATE OR REPLACE VIEW {view} AS SELECT {names} FROM {source}"
    hot, cold = cut(cursor_columns, cursor, dict(columns))
    cast = ", ".join(cold_column(name, ch_type, read_types.get(name)) for name, ch_type in columns)
    return (
        f"CREATE OR REPLACE VIEW {view} AS\n"
        f"SELECT {names} FROM {source} WHERE {hot}\n"
        f"UNION ALL\n"
        f"SELECT {cast} FROM (SELECT * FROM {iceberg} WHERE {cold})"
    )


S3_SCHEMES = {"s3", "s3a", "s3n"}


def table_function(config: Config, location: str, metadata_location: str) -> str:
    """The Iceberg table function that reads ``metadata_location`` of the table at ``location``,
    as ClickHouse reaches it (``[federate]``); S3 credentials come from the named collection."""
    fed = config.federate
    endpoint = fed.s3_endpoint or config.catalog.properties.get("s3.endpoint")
    if urlsplit(location).scheme in S3_SCHEMES and (not fed.named_collection or not endpoint):
        raise ConfigError("federate.named_collection and federate.s3_endpoint are needed for tables in S3")
    return reader(config, location, metadata_location)


def reader(config: Config, location: str, metadata_location: str) -> str:
    """ClickHouse's Iceberg table function for ``metadata_location`` of the table at ``location``:
    the path mapped by ``federate.warehouse_path``; on S3 the endpoint of ``[federate]`` or the
    catalog, credentials from ``federate.named_collection`` when set (else ClickHouse's own)."""
    fed, warehouse = config.federate, config.catalog.warehouse
    location = location.rstrip("/")
    if not metadata_location.startswith(location + "/"):
        raise ConfigError(f"the metadata file {metadata_location} is not under the table's location {location}")
    pinned = literal(metadata_location[len(location) + 1 :])
    parts = urlsplit(location)
    if parts.scheme in S3_SCHEMES:
        endpoint = fed.s3_endpoint or config.catalog.properties.get("s3.endpoint") or "https://<s3-endpoint>"
        url = literal(f"{endpoint.rstrip('/')}/{parts.netloc}{parts.path}/")
        collection = f"{quote_identifier(fed.named_collection)}, url = " if fed.named_collection else ""
        return f"icebergS3({collection}{url}, SETTINGS iceberg_metadata_file_path = {pinned})"
    if parts.scheme not in {"", "file"}:
        raise ConfigError(f"federate: ClickHouse cannot read a table at {location} (expected s3:// or a local path)")
    path = parts.path
    if fed.warehouse_path:
        base = urlsplit(warehouse).path.rstrip("/")
        if not path.startswith(base + "/"):
            raise ConfigError(f"federate.warehouse_path: the table at {location} is not under catalog.warehouse {warehouse}")
        path = fed.warehouse_path.rstrip("/") + path[len(base) :]
    return f"icebergLocal({literal(path)}, SETTINGS iceberg_metadata_file_path = {pinned})"


@dataclass(frozen=True)
class Plan:
    """A view's DDL, and the metadata file it pins (None: no Iceberg side yet)."""

    view: str
    sql: str
    pinned: str | None


class Federation:
    """The views of one process: built from the ports, replaced after each commit."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._replaced: dict[str, str | None] = {}  # table -> the metadata file its view was last replaced with here

    @property
    def enabled(self) -> bool:
        return self.config.federate.enabled

    def view_name(self, table: TableConfig) -> str:
        database = self.config.federate.database or table.source_database
        return f"{quote_identifier(database)}.{quote_identifier(table.source_table + SUFFIX)}"

    def plan(self, table: TableConfig, engine: Engine, sink: SinkTable | None) -> Plan:
        """The view of ``table`` cut at the marker of ``sink``'s current metadata file."""
        columns = [
            (str(name), str(t))
            for name, t in engine.rows(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {tbl:String}"
                " AND default_kind NOT IN ('ALIAS', 'EPHEMERAL') ORDER BY position",
                {"db": table.source_database, "tbl": table.source_table},
            )
        ]
        if not columns:
            raise ConfigError(f"federate: source table {table.source} of {table.name} does not exist or has no columns")
        marker = sink.marker() if sink is not None else None
        source = f"{quote_identifier(table.source_database)}.{quote_identifier(table.source_table)}"
        if sink is None or marker is None:
            return Plan(
                self.view_name(table), view_sql(self.view_name(table), source, columns, table.cursor, None, None, {}), None
            )
        pinned = sink.metadata_location
        iceberg = table_function(self.config, sink.location, pinned)
        read_types = {str(row[0]): str(row[1]) for row in engine.rows(f"DESCRIBE TABLE {iceberg}")}
        sql = view_sql(self.view_name(table), source, columns, table.cursor, marker.cursor, iceberg, read_types)
        return Plan(self.view_name(table), sql, pinned)

    def replace(self, table: TableConfig, engine: Engine, sink: SinkTable | None) -> Plan:
        """Build and run the view's DDL (raises what the engine raised)."""
        plan = self.plan(table, engine, sink)
        engine.command(plan.sql)
        with self._lock:
            self._replaced[table.name] = plan.pinned
        return plan

    def after_commit(self, table: TableConfig, engine: Engine, sink: SinkTable, observer: Any, log: Any) -> None:
        """Bring the view to ``sink``'s current metadata file unless it is there; never raises.

        A failure is logged (``federate_view_failed``) and counted; the view, exact at its
        previous cut, is replaced at the next commit or run."""
        with self._lock:
            if table.name in self._replaced and self._replaced[table.name] == sink.metadata_location:
                return
        try:
            plan = self.replace(table, engine, sink)
        except Exception as exc:  # a commit must stand whatever the view does; a bug is logged with its traceback
            with self._lock:
                self._replaced.pop(table.name, None)
            observer.view_failed(table)
            fields = {"view": self.view_name(table), "error": (str(exc).splitlines() or [type(exc).__name__])[0]}
            (log.warning if isinstance(exc, OffloaderError) else log.exception)("federate_view_failed", **fields)
            return
        observer.view_replaced(table)
        log.info("federate_view_replaced", view=plan.view, metadata=plan.pinned)

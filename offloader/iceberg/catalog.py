"""The catalog: connecting to it, and opening or creating the tables offloader owns.

:class:`Sink` is the catalog behind the :class:`~offloader.ports.Sink` port. A table is
created on first use from config (format version 2, zstd level 3, PyIceberg's blind commit
retry off) with the partition spec its config names; a REST catalog's requests are bounded
by ``rest.request-timeout``.
"""

from __future__ import annotations

import time
from typing import Any

from offloader.chtypes import ColumnPlan, TypeOptions
from offloader.config import CatalogConfig, TableConfig, connection_url, partition_transform
from offloader.errors import (
    CatalogError,
    OffloaderError,
    SchemaError,
    first_line,
)
from offloader.faults import fail
from offloader.iceberg.failures import failure, refusal
from offloader.iceberg.internals import bounded_rest_catalog, lean_sql_catalog
from offloader.iceberg.mapping import iceberg_schema, plan_columns
from offloader.iceberg.recovery import record_landed, recover, refuse_created_over_lost, refuse_lost_table
from offloader.iceberg.sorting import ensure_sort_order, sort_order
from offloader.iceberg.table import BOUNDED_HISTORY, SinkTable
from offloader.ports import Recovered

TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    "write.parquet.compression-level": "3",
    "commit.retry.num-retries": "0",
    "write.metadata.previous-versions-max": "100",
    **BOUNDED_HISTORY,
}


def _catalog_properties(config: CatalogConfig) -> dict[str, str]:
    """The properties PyIceberg gets: the configured ones with the secrets put in."""
    props = dict(config.properties)
    props.update({key: secret.reveal() for key, secret in config.secrets.items()})
    if "uri" in props:
        props["uri"] = connection_url(props["uri"], config.password)
    props.setdefault("type", "sql")
    if props.get("type") == "sql":
        props.setdefault("init_catalog_tables", "true")
    return props


class Sink:
    """The Iceberg catalog offloader writes into."""

    def __init__(self, config: CatalogConfig) -> None:
        from pyiceberg.catalog import load_catalog

        self.config = config
        properties = _catalog_properties(config)  # the secrets revealed: a local of this frame only
        fail("catalog_connect")
        for attempt in range(3):
            try:
                if properties.get("type") == "rest":
                    self.catalog = bounded_rest_catalog(config.name, properties)
                elif properties.get("type") == "sql":
                    self.catalog = lean_sql_catalog(config.name, properties)
                else:
                    self.catalog = load_catalog(config.name, **properties)
                break
            except Exception as exc:
                refused = refusal(exc, config.properties)
                if refused is not None:
                    raise refused from exc
                # PyIceberg creates the SQL catalog's own tables check-then-create: two
                # processes starting together on a new database can collide once.
                if attempt == 2:
                    raise CatalogError(f"cannot open the Iceberg catalog {config.name!r}: {first_line(exc)}") from exc
                time.sleep(0.2 * (attempt + 1))

    def _failure(self, exc: BaseException, message: str) -> OffloaderError:
        return failure(exc, message, self.config.properties)

    def ping(self) -> None:
        try:
            self.catalog.list_namespaces()
        except Exception as exc:
            raise self._failure(exc, "the Iceberg catalog does not answer") from exc

    def plan_columns(self, columns: list[tuple[str, str]], options: TypeOptions) -> list[ColumnPlan]:
        """How each ``(name, ClickHouse type)`` column is fetched and what Iceberg type it becomes."""
        return plan_columns(columns, options)

    def open(self, table: TableConfig, plans: list[ColumnPlan], file_size: int | None = None) -> SinkTable:
        """Load the destination table, creating it (and its namespace) on first use with the planned columns."""
        from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError

        schema = iceberg_schema(plans)
        identifier = table.target
        order = sort_order(table, schema)  # sort_by checked against the source's columns
        try:
            try:
                return SinkTable(ensure_sort_order(self.catalog.load_table(identifier), table), table)
            except NoSuchTableError:
                refuse_lost_table(self.catalog, table)
            try:
                self.catalog.create_namespace_if_not_exists(table.target_namespace)
            except NamespaceAlreadyExistsError:
                pass
            except Exception:  # another runner created it at the same instant
                if not self.catalog.namespace_exists(table.target_namespace):
                    raise
            properties = dict(TABLE_PROPERTIES)
            if file_size:
                properties["write.target-file-size-bytes"] = str(file_size)
            spec = partition_spec(table, schema)
            try:
                created = self.catalog.create_table(
                    identifier, schema=schema, partition_spec=spec, sort_order=order, properties=properties
                )
                refuse_created_over_lost(self.catalog, created, table)
                record_landed(created)
            except TableAlreadyExistsError:
                created = ensure_sort_order(self.catalog.load_table(identifier), table)
            except Exception:  # a concurrent create can surface as the catalog's unique violation
                if not self.catalog.table_exists(identifier):
                    raise
                created = self.catalog.load_table(identifier)
            return SinkTable(created, table)
        except OffloaderError:
            raise
        except Exception as exc:
            raise self._failure(exc, f"cannot open Iceberg table {identifier}") from exc

    def recover(
        self,
        table: TableConfig,
        *,
        location: str | None = None,
        metadata: str | None = None,
        snapshot_ids: set[int] | None = None,
        dry_run: bool = False,
    ) -> Recovered:
        """Register the table again from its warehouse files (``iceberg/recovery.py``)."""
        try:
            return recover(
                self.catalog, table, location=location, metadata=metadata, snapshot_ids=snapshot_ids or set(), dry_run=dry_run
            )
        except OffloaderError:
            raise
        except Exception as exc:
            raise self._failure(exc, f"cannot recover Iceberg table {table.target}") from exc

    def load(self, table: TableConfig, *, writable: bool = True) -> SinkTable | None:
        """The destination table if it exists, else None; never creates it."""
        from pyiceberg.exceptions import NoSuchTableError

        try:
            loaded = self.catalog.load_table(table.target)
        except NoSuchTableError:
            return None
        except Exception as exc:
            raise self._failure(exc, f"cannot load Iceberg table {table.target}") from exc
        return SinkTable(loaded, table, writable=writable)


def partition_spec(table: TableConfig, schema: Any) -> Any:
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import (
        BucketTransform,
        DayTransform,
        HourTransform,
        IdentityTransform,
        MonthTransform,
        TruncateTransform,
        VoidTransform,
        YearTransform,
    )

    simple = {
        "identity": IdentityTransform, "year": YearTransform, "month": MonthTransform,
        "day": DayTransform, "hour": HourTransform, "void": VoidTransform,
    }  # fmt: skip
    fields = []
    for index, expr in enumerate(table.partition_by):
        fn, column, param = partition_transform(expr)
        try:
            source_id = schema.find_field(column).field_id
        except ValueError:
            raise SchemaError(f"tables.{table.name}.partition_by: column {column!r} is not in the source table") from None
        if fn == "bucket" and param is not None:
            transform: Any = BucketTransform(param)
        elif fn == "truncate" and param is not None:
            transform = TruncateTransform(param)
        else:
            transform = simple[fn]()
        name = column if fn == "identity" else f"{column}_{fn}"
        fields.append(PartitionField(source_id=source_id, field_id=1000 + index, transform=transform, name=name))
    return PartitionSpec(*fields)

"""The federated view's DDL (offloader/federation.py) and the [federate] section's checks: pure text, no server."""

from __future__ import annotations

from pathlib import Path

import pytest
from sample_config import MINIMAL, write

from offloader.config import ConfigError
from offloader.config_loader import load_config
from offloader.federation import cold_column, cut, table_function, view_sql

TYPES = {"ts": "DateTime64(6, 'UTC')", "seq": "UInt64", "venue": "LowCardinality(String)"}
S3 = MINIMAL.replace('warehouse = "file:///tmp/warehouse"', 'warehouse = "s3://cold/warehouse"')


def test_a_whole_cursor_cuts_as_a_tuple_and_a_time_cursor_on_the_time() -> None:
    """A (time, tie-breaker) cursor compares as a tuple on both sides; a cursor of the time alone cuts on the time column."""
    hot, cold = cut(["ts", "seq"], ["2026-01-01 00:00:00.5", 7], TYPES)
    assert hot == "(`ts`, `seq`) > (toDateTime64('2026-01-01 00:00:00.5', 9, 'UTC'), CAST(7 AS UInt64))"
    assert cold == hot.replace(" > ", " <= ")
    hot, cold = cut(["ts", "seq"], ["2026-01-01 00:00:00"], TYPES)
    assert (hot, cold) == (
        "`ts` > toDateTime64('2026-01-01 00:00:00', 9, 'UTC')",
        "`ts` <= toDateTime64('2026-01-01 00:00:00', 9, 'UTC')",
    )


def test_a_text_tie_breaker_is_escaped_and_typed_without_low_cardinality() -> None:
    """A cursor value with a quote and a backslash becomes one escaped literal, cast to the column's type unwrapped."""
    hot, _ = cut(["ts", "venue"], ["2026-01-01 00:00:00", "o'k\\x"], TYPES)
    assert hot.endswith("CAST('o\\'k\\\\x' AS String))")


def test_the_iceberg_side_is_cast_back_to_the_source_types() -> None:
    """A column read as the source's type is taken as is; another is cast; Iceberg NULLs of a non-Nullable column and a missing column take the type's default."""
    assert cold_column("seq", "UInt64", "UInt64") == "`seq`"
    assert cold_column("seq", "UInt64", "Int64") == "CAST(`seq` AS UInt64) AS `seq`"
    assert "if(isNull(`side`), defaultValueOfTypeName('Enum8(\\'a\\' = 1)')" in cold_column(
        "side", "Enum8('a' = 1)", "Nullable(String)"
    )
    assert cold_column("new", "UInt8", None) == "defaultValueOfTypeName('UInt8') AS `new`"


def test_without_a_committed_cursor_the_view_is_the_hot_rows() -> None:
    """Before the first commit the view is the source table alone; after it, hot UNION ALL cold over a subquery of the raw Iceberg columns."""
    columns = [("ts", TYPES["ts"]), ("seq", "UInt64")]
    assert view_sql("`k2`.`t_all`", "`k2`.`t`", columns, ["ts", "seq"], None, None, {}) == (
        "CREATE OR REPLACE VIEW `k2`.`t_all` AS SELECT `ts`, `seq` FROM `k2`.`t`"
    )
    sql = view_sql("`k2`.`t_all`", "`k2`.`t`", columns, ["ts", "seq"], ["2026-01-01 00:00:00", 1], "icebergLocal('/w/t')", {})
    assert "\nUNION ALL\n" in sql and "FROM (SELECT * FROM icebergLocal('/w/t') WHERE (`ts`, `seq`) <= (" in sql


def test_the_table_function_pins_the_metadata_file_and_names_no_secret(tmp_path: Path) -> None:
    """Local tables are read with icebergLocal at warehouse_path; S3 tables with icebergS3 and the named collection; the metadata file is pinned relative to the table and no secret is written."""
    local = MINIMAL + '[federate]\nenabled = true\nwarehouse_path = "/var/lib/clickhouse/user_files/wh"\n'
    config = load_config(write(tmp_path, local), env={})
    assert table_function(
        config, "file:///tmp/warehouse/cold/t", "file:///tmp/warehouse/cold/t/metadata/00001-a.metadata.json"
    ) == (
        "icebergLocal('/var/lib/clickhouse/user_files/wh/cold/t', SETTINGS iceberg_metadata_file_path = 'metadata/00001-a.metadata.json')"
    )
    catalog = '"s3.endpoint" = "http://minio:9000"\n"s3.access-key-id" = "offloader"\n[state]'
    s3 = S3.replace("[state]", catalog) + '[federate]\nenabled = true\nnamed_collection = "cold_s3"\n'
    config = load_config(write(tmp_path, s3), env={"OFFLOADER__CATALOG__S3_SECRET_ACCESS_KEY": "do-not-show"})
    sql = table_function(config, "s3://cold/warehouse/cold/t", "s3://cold/warehouse/cold/t/metadata/00002-b.metadata.json")
    assert sql == (
        "icebergS3(`cold_s3`, url = 'http://minio:9000/cold/warehouse/cold/t/', "
        "SETTINGS iceberg_metadata_file_path = 'metadata/00002-b.metadata.json')"
    )
    assert "do-not-show" not in sql and "offloader" not in sql


def test_federate_in_object_storage_needs_a_named_collection_and_an_endpoint(tmp_path: Path) -> None:
    """[federate] on an S3 warehouse without a named collection or an endpoint, and malformed keys, are refused at start-up, each naming its key."""
    text = S3 + '[federate]\nenabled = true\ndatabase = "bad-name"\ns3_endpoint = "minio:9000"\ncolour = 1\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    found = "\n".join(info.value.problems)
    for key in ("federate.named_collection: missing", "federate.database", "federate.s3_endpoint", "federate.colour"):
        assert key in found, found
    assert not load_config(write(tmp_path), env={}).federate.enabled  # off unless asked for

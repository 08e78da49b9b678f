"""A table's sort_by, against real components: the Iceberg sort order it sets, every data file
(of an offload window and of compaction) sorted by it as a whole and marked with the order's
id, rows still exact against the source, and a bad column refused with a precise message."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import Workspace, assert_bars_exact, assert_exact, bars_table, create_bars, trades_table
from pyiceberg.table.sorting import SortDirection
from pyiceberg.transforms import IdentityTransform

from offloader import maintenance
from offloader.iceberg import sorting

SORT_BY = ["symbol", "exchange_timestamp"]


def sorted_table(**overrides: Any) -> dict[str, Any]:
    """Trades partitioned by day of the cursor (a day before the cursor's can be compacted)."""
    return trades_table(partition_by=["day(ingestion_timestamp)"], **overrides)


def live_files(ws: Workspace, target: str = "cold.trades") -> list[Any]:
    return [task.file for task in ws.iceberg_table(target).scan().plan_files()]


def local(path: str) -> str:
    return path.removeprefix("file://").removeprefix("file:")


def sort_key_rows(path: str) -> list[tuple[Any, ...]]:
    """The (symbol, exchange_timestamp) of a data file's rows in file order, read by pyarrow."""
    rows = pq.read_table(local(path), columns=SORT_BY)
    symbols = rows.column("symbol").to_pylist()
    stamps = pc.cast(rows.column("exchange_timestamp"), pa.int64()).to_pylist()
    return list(zip(symbols, stamps, strict=True))


def assert_files_sorted(ws: Workspace, files: list[Any], order_id: int) -> None:
    """Every file is sorted by SORT_BY as a whole, its row groups in key order, and says so in its entry."""
    for data_file in files:
        keys = sort_key_rows(data_file.file_path)
        assert keys == sorted(keys), f"{data_file.file_path} is not sorted by {SORT_BY}"
        assert data_file.sort_order_id == order_id, data_file.file_path
        meta = pq.ParquetFile(local(data_file.file_path)).metadata
        column = meta.schema.names.index("symbol")
        bounds = [(meta.row_group(i).column(column).statistics.min, meta.row_group(i).column(column).statistics.max) for i in range(meta.num_row_groups)]  # fmt: skip
        assert bounds == sorted(bounds), f"{data_file.file_path}: row groups out of order {bounds}"


def test_sort_by_orders_every_file_of_windows_and_of_compaction(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table created without sort_by gets it as its sort order; later windows write several sorted
    runs per partition, compaction merges unsorted and sorted files into sorted files, rows stay exact."""
    monkeypatch.setattr(sorting, "RUN_BYTES", 24 * 1024)  # a few hundred rows: many runs per window
    monkeypatch.setattr(sorting, "ROW_GROUP_ROWS", 200)
    monkeypatch.setattr(sorting, "MERGE_BATCH_ROWS", 64)
    monkeypatch.setattr(sorting, "MAX_FAN_IN", 4)  # the merge takes two passes
    monkeypatch.setattr(maintenance, "CHUNK_BYTES", 8 * 1024)  # compaction reads chunks of ~100 rows: many runs
    ws.tables = [sorted_table()]
    ws.offload = {"batch_size": "4KiB"}  # chunks of about a hundred rows
    ws.create_trades()
    app = ws.app()
    ws.insert_trades(3000, start="2026-01-01 00:00:00", step_us=7_000_000)
    (first,) = app.run_cycle()
    assert first.outcome == "committed", first.reason
    table = ws.iceberg_table("cold.trades")
    assert table.sort_order().is_unsorted
    unsorted = live_files(ws)
    assert {f.sort_order_id for f in unsorted} <= {None, 0}
    app.close()

    ws.tables = [sorted_table(sort_by=SORT_BY)]
    app = ws.app()
    for day in (1, 2):
        ws.insert_trades(3000, start=f"2026-01-0{day} 08:00:00", step_us=3_000_000, first_seq=10_000 * day)
        (result,) = app.run_cycle()
        assert result.outcome == "committed", result.reason
    table = ws.iceberg_table("cold.trades")
    order = table.sort_order()
    assert [table.schema().find_column_name(f.source_id) for f in order.fields] == SORT_BY
    assert all(isinstance(f.transform, IdentityTransform) and f.direction == SortDirection.ASC for f in order.fields)
    written = [f for f in live_files(ws) if f.file_path not in {u.file_path for u in unsorted}]
    assert len(written) > 4, "each window wrote several sorted runs"
    assert_files_sorted(ws, written, order.order_id)
    assert_exact(ws)

    (compact,) = app.maintain(actions=("compact",))
    assert compact.outcome == "ok", compact.detail
    after = live_files(ws)
    added = [f for f in after if f.file_path not in {w.file_path for w in written + unsorted}]
    assert added and compact.files_added == len(added)
    assert_files_sorted(ws, added, order.order_id)
    assert_exact(ws)
    app.close()


def test_sorted_window_killed_before_commit_leaves_rows_exact(ws: Workspace) -> None:
    """A run killed after writing its sorted files, before the commit, leaves nothing; the next run makes Iceberg exact."""
    ws.tables = [sorted_table(sort_by=SORT_BY)]
    ws.create_trades()
    ws.insert_trades(2000, start="2026-01-01 00:00:00", step_us=60_000_000)
    killed = ws.run_once(kill_at="after_write")
    assert killed.returncode == -9, killed.stderr
    done = ws.run_once()
    assert done.returncode == 0, done.stderr
    table = ws.iceberg_table("cold.trades")
    assert_files_sorted(ws, live_files(ws), table.sort_order().order_id)
    assert_exact(ws)


@pytest.mark.parametrize(
    ("sort_by", "message"),
    [
        (["symbol", "venue"], "tables.trades.sort_by: column 'venue' is not in the source table k2.trades"),
        ("symbol", "tables.trades.sort_by = 'symbol': expected a list of identifiers"),
    ],
)
def test_bad_sort_by_fails_with_a_precise_message(ws: Workspace, sort_by: Any, message: str) -> None:
    """A sort_by column missing from the source (at the table's first open), or a sort_by not a list
    (at start-up), fails with a message naming tables.<name>.sort_by and a non-zero exit."""
    ws.tables = [sorted_table(sort_by=sort_by)]
    ws.create_trades()
    ws.insert_trades(10)
    result = ws.run_once()
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_replace_mode_writes_sorted_files_and_stays_exact(ws: Workspace) -> None:
    """In replace mode the rewritten files (the rows kept of a replaced file, and the new rows) are sorted too, and the bars stay exact."""
    ws.tables = [bars_table(sort_by=["symbol", "window_start"])]
    create_bars(ws)
    trades = (
        "INSERT INTO k2.trades SELECT now64(3, 'UTC') - toIntervalSecond(number * 7), now64(6, 'UTC') - toIntervalSecond(number * 7), "
        "{first} + number, ['SOL-USDT', 'BTC-USDT', 'ETH-USDT'][number % 3 + 1], 'buy', 1, toDecimal64(number, 8) FROM numbers(300)"
    )
    ws.engine.command(trades.format(first=0))  # 35 minutes of trades
    app = ws.app()
    app.run_cycle()
    ws.engine.command(  # the open bar changes
        "INSERT INTO k2.trades SELECT now64(3, 'UTC'), now64(6, 'UTC'), 1000 + number, 'ADA-USDT', 'sell', 1, 3 FROM numbers(5)"
    )
    (again,) = app.run_cycle()
    assert again.outcome == "committed", again.reason
    app.close()
    table = ws.iceberg_table("cold.bars")
    for data_file in live_files(ws, "cold.bars"):
        rows = pq.read_table(local(data_file.file_path), columns=["symbol", "window_start"])
        keys = list(zip(rows["symbol"].to_pylist(), pc.cast(rows["window_start"], pa.int64()).to_pylist(), strict=True))
        assert keys == sorted(keys), data_file.file_path
        assert data_file.sort_order_id == table.sort_order().order_id
    assert_bars_exact(ws)

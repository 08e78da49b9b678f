"""The embedded default end to end: `demo seed`, then `once` with no config and no servers."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

from helpers import run_cli

from offloader import demo
from offloader.clickhouse import ChdbEngine


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"OFFLOADER_DATA_DIR": str(data_dir), "OFFLOADER__SOURCE__SAFETY_LAG": "0s"}, timeout=600)


def test_embedded_default_offloads_all_ten_tables_exactly(tmp_path: Path) -> None:
    """With no config, `demo seed` then `once` leaves every one of the 10 Iceberg tables equal to its ClickHouse source."""
    data = tmp_path / "data"
    seeded = run(data, "demo", "seed", "--rows", "30000", "--hours", "3")
    assert seeded.returncode == 0, seeded.stderr
    once = run(data, "once")
    assert once.returncode == 0, once.stderr
    assert len(once.stdout.strip().splitlines()) == 10
    again = run(data, "once")
    assert again.returncode == 0 and "bronze_trades_binance: nothing new" in again.stdout

    engine = ChdbEngine(str(data / "clickhouse"))
    here = os.getcwd()
    os.chdir(data)  # chDB's icebergLocal reads only under the working directory
    try:
        for table in demo.table_configs():
            name = table["name"]
            location = data / "warehouse" / "cold" / name
            if table["mode"] == "append":
                key = "toString(ingestion_timestamp), sequence_number" + (", exchange" if name == "silver_trades" else "")
            else:
                key = (
                    "toString(toDateTime64(window_start, 6, 'UTC')), exchange, symbol, toString(open), toString(high), "
                    "toString(low), toString(close), toString(volume), trade_count"
                )
            source = sorted(engine.rows(f"SELECT {key} FROM {table['source']}"))
            cold = sorted(engine.rows(f"SELECT {key} FROM icebergLocal('{location}')"))
            assert [k for k, n in Counter(cold).items() if n > 1] == [], f"{name}: rows twice"
            assert cold == source, f"{name}: Iceberg differs from ClickHouse"
            assert len(source) > 0
    finally:
        os.chdir(here)
        engine.close()


NASTY_PARAMETERS = [
    "back\\slash",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "nul\0byte",
    "it's",
    "ünïcødé ✓",
    "\\n literal",
    "",
]


def test_nasty_strings_arrive_unchanged_in_the_embedded_engine(tmp_path: Path) -> None:
    """Each value, sent as a {v:String} parameter, comes back from the engine byte for byte."""
    engine = ChdbEngine(str(tmp_path / "ch"))
    try:
        for value in NASTY_PARAMETERS:
            ((back, length),) = engine.rows("SELECT {v:String}, length({v:String})", {"v": value})
            assert (back, length) == (value, len(value.encode())), repr(value)
    finally:
        engine.close()

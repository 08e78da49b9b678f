"""The soak (bench/soak.py) in three minutes: two `offloader run` replicas under the demo's live
feed, SIGKILLed and restarted at random, maintenance every minute; then every key of every
table is in Iceberg exactly once.

The hour-long run and its figures are in docs/benchmarks.md (Soak). No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, clean_env


def test_three_minutes_of_soak_lose_nothing_and_write_nothing_twice(tmp_path: Path) -> None:
    """bench/soak.py --minutes 3 exits 0; its checker found no key lost, duplicated, unexpected or changed in any table; at least one kill, one restart and one maintenance slot happened."""
    out = tmp_path / "soak"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "3", "--kill-every", "0.5", "1.5",
         "--maintenance-every", "1", "--seed-rows", "20000", "--settle", "15", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, env=clean_env(), timeout=540, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (out / "summary.json").exists(), result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    seed = summary["seed"]
    check = summary["check"]
    assert (check["lost"], check["duplicated"], check["unexpected"], check["changed"]) == (0, 0, 0, 0), (seed, check)
    assert check["source_duplicated"] == 0, (seed, check)
    assert len(check["tables"]) == 10 and all(t["source_rows"] > 0 for t in check["tables"].values()), check
    assert summary["kills"] >= 1 and summary["restarts"] >= 1, summary
    assert summary["maintenance_runs"] >= 1, summary
    assert summary["unexpected_exits"] == 0, summary["replicas"]
    assert summary["once_rc"] == 0 and set(summary["sigterm_exit_codes"].values()) == {0}, summary
    assert summary["feed"]["live_rows"] > 0 and summary["feed"]["errors"] == 0, summary["feed"]
    assert (out / "soak.png").stat().st_size > 0
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

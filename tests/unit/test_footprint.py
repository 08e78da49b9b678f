"""The process footprint: pandas left out on request, Arrow and PyIceberg still whole without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_left_out_pandas_cannot_be_imported_and_arrow_and_pyiceberg_work_without_it() -> None:
    done = run(
        """
        import os, sys
        from offloader import footprint
        assert footprint.leave_out_pandas() is True
        import pyarrow as pa, pyarrow.dataset, pyarrow.parquet as pq, io
        import pyiceberg.io.pyarrow  # imports pyarrow.dataset, which imports pandas when it can
        sink = io.BytesIO()
        pq.write_table(pa.table({"n": [1, 2, 3]}), sink)
        assert pq.read_table(io.BytesIO(sink.getvalue())).column("n").to_pylist() == [1, 2, 3]
        try:
            import pandas
        except ModuleNotFoundError as exc:
            print("refused:", exc)
        print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] == "pandas"), flush=True)
        os._exit(0)  # Arrow's own teardown aborts now and then, pandas or not (apache/arrow#34314)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "refused: pandas is left out of this process (the source is remote)" in done.stdout
    assert "loaded: []" in done.stdout


def test_leave_out_pandas_reports_when_it_is_already_loaded() -> None:
    done = run(
        """
        import pandas
        from offloader import footprint
        print(footprint.leave_out_pandas())
        import pandas.api.types  # still importable: nothing was blocked
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"

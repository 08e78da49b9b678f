"""A one-shot command on a terminal is quiet: its result lines, progress, warnings and errors.

`offloader once` runs on a real pseudo-terminal. It prints the result line and its progress,
and no info-level log line; `--log-level info` brings them back. Off a terminal the JSON log
lines stay (the rest of the suite reads them).
"""

from __future__ import annotations

import os
import select
import subprocess

from helpers import Workspace, clean_env, cli_argv, trades_table


def on_a_terminal(ws: Workspace, *args: str) -> tuple[int, str]:
    """Run `offloader ARGS` with stdin, stdout and stderr on one pseudo-terminal; its code and output."""
    ws.release()
    master, slave = os.openpty()
    env = clean_env(OFFLOADER__LOGGING__FORMAT="auto", TERM="xterm", COLUMNS="200")
    proc = subprocess.Popen(
        cli_argv(*args, config=ws.write_config()), stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ws.root, close_fds=True
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_once_on_a_terminal_prints_results_and_progress_but_no_info_logs(ws: Workspace) -> None:
    ws.tables = [trades_table()]
    ws.source.update(max_window_rows=1000)  # three windows: progress to show
    ws.create_trades()
    ws.insert_trades(3000, start="2026-01-01 00:00:00")
    code, text = on_a_terminal(ws, "once")
    assert code == 0, text
    assert "trades: committed 3,000 rows in 3 window(s)" in text, text
    assert "3,000/3,000 rows (100.0%)" in text, text
    assert "offload_committed" not in text and "table_started" not in text and '"event"' not in text, text
    for piece in text.split("\r\033[K"):  # nothing is glued onto a progress line
        for line in piece.split("\n"):
            assert "%)" not in line or line.rstrip("\r").endswith("%)"), repr(piece)

    ws.insert_trades(10, start="2026-01-02 00:00:00", first_seq=5000)
    code, text = on_a_terminal(ws, "--log-level", "info", "once")
    assert code == 0 and "offload_committed" in text and "trades: committed 10 rows" in text, text

"""Benchmark: the idle service's memory and CPU, with a remote and with the embedded source.

Starts `offloader run` (a cycle every 5 s) on one bronze table that is already offloaded,
and samples the process's RSS and CPU time from /proc for --seconds:

- remote: the source is a ClickHouse HTTP endpoint (tests/chhttp.py, a separate process
  serving chDB over HTTP), so offloader's own process holds no ClickHouse engine;
- remote_restarted: the same service started again on the offloaded table, so it has
  nothing to load (the footprint of the code alone, without what the first load left behind);
- embedded: the source is chDB inside offloader's process.

Usage: python bench/bench_service.py [--seconds 60] [--rows 100000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_offload import http_endpoint, save, seed  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / TICKS


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a loopback http URL
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def measure(work: Path, dsn: str, seconds: float, tag: str) -> dict[str, float]:
    """Idle figures of a service whose tables live under ``tag``: a new tag loads first, a used one has nothing to load."""
    port = free_port()
    config = work / f"offloader-{tag}.toml"
    config.write_text(
        f'[source]\ndsn = "{dsn}"\nsafety_lag = "0s"\nmax_window = "1d"\n'
        f'[catalog]\nname = "cold"\ntype = "sql"\nuri = "sqlite:///{work}/catalog-{tag}.db"\nwarehouse = "file://{work}/wh-{tag}"\n'
        f'[state]\ndsn = "sqlite:///{work}/state-{tag}.db"\n[schedule]\ninterval = "5s"\n[server]\nport = {port}\n'
        '[logging]\nlevel = "warning"\n'
        '[[tables]]\nname = "bronze_trades"\nsource = "k2.bronze_trades"\ntarget = "cold.bronze_trades"\n'
        'layer = "bronze"\ncursor = ["ingestion_timestamp", "sequence_number"]\npartition_by = ["day(exchange_timestamp)"]\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "offloader", "--config", str(config), "run"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        time.sleep(10)  # the first cycle (the initial load) is done; from here it is idle
        rss0, cpu0 = sample(proc.pid)
        peak, started = rss0, time.monotonic()
        while time.monotonic() - started < seconds:
            time.sleep(1)
            peak = max(peak, sample(proc.pid)[0])
        rss1, cpu1 = sample(proc.pid)
        elapsed = time.monotonic() - started
        return {
            "idle_rss_mib": round(rss1 / 2**20, 1),
            "idle_peak_rss_mib": round(peak / 2**20, 1),
            "idle_cpu_percent": round(100 * (cpu1 - cpu0) / elapsed, 2),
            "seconds": round(elapsed, 1),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="offloader-bench-service-"))
    chdb_dir = work / "clickhouse"
    seed(chdb_dir, args.rows, 1)
    results: dict[str, object] = {"rows": args.rows, "cycle_interval_seconds": 5}

    with http_endpoint(chdb_dir) as port:
        dsn = f"http://default@127.0.0.1:{port}/k2"
        results["remote"] = measure(work, dsn, args.seconds, "remote")
        results["remote_restarted"] = measure(work, dsn, args.seconds, "remote")
    results["embedded"] = measure(work, f"chdb://{chdb_dir}", args.seconds, "embedded")

    save(results, "service-idle.json")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

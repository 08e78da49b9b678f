"""Soak: two `offloader run` replicas under the demo's live feed, SIGKILLed at random, then a
key-by-key check of every table.

This module owns the soak: the world it builds (the demo's ten tables in a chDB source served
over HTTP by tests/chhttp.py, the SQL catalog and the state in a fresh PostgreSQL database, a
local warehouse), the live feed (``offloader.demo_feed.live_batch`` every second at
``--rate`` trades per second), the two replicas (real ``offloader run`` subprocesses sharing
one config and one state, each SIGKILLed and restarted at random moments from a seeded RNG),
the samples of each process's RSS and open file descriptors from /proc, the checker and the
outputs (``summary.json``, ``soak.png``, ``samples.jsonl`` under ``--out``).

Maintenance is what an operator would configure: the service's own maintenance slot,
``[schedule] maintenance_cron = "*/N * * * *"`` (N = ``--maintenance-every``, default 10
minutes), so each live replica maintains the tables it owns, under the kills.

At the end the feed stops, the replicas catch up and are stopped with SIGTERM, one
``offloader once`` finishes whatever is left, and the checker compares every key of every
table between ClickHouse (over HTTP) and Iceberg (read by DuckDB's ``iceberg_scan``, which
shares no code with offloader's writer): lost (in the source, not in Iceberg), duplicated
(extra copies in Iceberg), unexpected (in Iceberg, not in the source) and, for the gold bars,
changed (the same bar with other values). A table's key is its cursor (the time column and
its tie columns, unique in the demo's bronze and silver tables); a replace-mode bar adds the
view's grouping columns (exchange, symbol). Any nonzero count exits 1.

Usage: python bench/soak.py [--minutes 60] [--seed N] [--rate 300] [--maintenance-every 10] [--retain 7d]
       [--kill-every 1 4] [--out bench/out/soak] [--publish]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20
SAFETY_LAG_S = 10
INTERVAL_S = 10
WARMUP_S = 30.0  # a sample this young is the process starting (imports, the first cycle), not a trend
GOLD_KEY_EXTRA = ("exchange", "symbol")  # the gold views' GROUP BY besides window_start
GOLD_VALUES = ("open", "high", "low", "close", "volume", "trade_count")


# -- the checker (pure) ---------------------------------------------------------------------


def compare(source: Iterable[tuple[Any, ...]], cold: Iterable[tuple[Any, ...]], key_len: int) -> dict[str, int]:
    """Counts of what differs between the source's rows and Iceberg's, by key (the first ``key_len`` fields).

    ``lost``: keys in the source and not in Iceberg; ``duplicated``: copies in Iceberg beyond the
    first of a key; ``unexpected``: keys in Iceberg and not in the source; ``changed``: keys in
    both whose other fields differ (first copy); ``source_duplicated``: keys the source holds
    more than once (then the key is not a key, and the check says so).
    """
    src: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    source_dupes = 0
    for row in source:
        key = tuple(row[:key_len])
        if key in src:
            source_dupes += 1
        else:
            src[key] = tuple(row[key_len:])
    seen: Counter[tuple[Any, ...]] = Counter()
    changed = unexpected = 0
    for row in cold:
        key = tuple(row[:key_len])
        seen[key] += 1
        if seen[key] > 1:
            continue
        if key not in src:
            unexpected += 1
        elif src[key] != tuple(row[key_len:]):
            changed += 1
    lost = sum(1 for key in src if key not in seen)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    return {"source_rows": len(src) + source_dupes, "iceberg_rows": sum(seen.values()), "lost": lost,
            "duplicated": duplicated, "unexpected": unexpected, "changed": changed,
            "source_duplicated": source_dupes}  # fmt: skip


def table_key(table: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(key columns, value columns) of a [[tables]] entry: the cursor, plus a bar's grouping and values."""
    key = list(table["cursor"])
    if table.get("mode") == "replace":
        return key + list(GOLD_KEY_EXTRA), list(GOLD_VALUES)
    return key, []


def rss_slope(
    samples: Sequence[dict[str, Any]], since: float, warmup: float = WARMUP_S, breaks: Sequence[tuple[int, float]] = ()
) -> float | None:
    """RSS growth in MiB per 10 minutes while a process runs: the least-squares slope of RSS on time
    with one intercept per incarnation (a restart starts afresh, and is no growth), over samples
    taken after ``since`` and at least ``warmup`` seconds into their incarnation.

    ``breaks`` ((incarnation, time) pairs, e.g. the end of each maintenance slot) split an
    incarnation into phases with intercepts of their own: a one-time step is then not a trend."""
    groups: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for s in samples:
        if s["t"] >= since and s["age"] >= warmup:
            phase = sum(1 for inc, t in breaks if inc == s["incarnation"] and t <= s["t"])
            groups.setdefault((s["incarnation"], phase), []).append((s["t"], s["rss"] / MiB))
    num = den = 0.0
    for points in groups.values():
        if len(points) < 2:
            continue
        mt = sum(t for t, _ in points) / len(points)
        mr = sum(r for _, r in points) / len(points)
        num += sum((t - mt) * (r - mr) for t, r in points)
        den += sum((t - mt) ** 2 for t, _ in points)
    return None if den == 0 else round(num / den * 600, 2)


# -- processes --------------------------------------------------------------------------------


def proc_sample(pid: int) -> tuple[int, int] | None:
    """(RSS bytes, open file descriptors) of a process from /proc; None once it is gone."""
    try:
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


@dataclass
class Replica:
    """One replica id and its successive `offloader run` processes (incarnations)."""

    id: str
    port: int
    logs: Path
    proc: subprocess.Popen[str] | None = None
    incarnation: int = 0
    started: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)  # start, kill, exit (by itself), in order
    next_kill: float = 0.0
    restart_at: float | None = None

    def start(self, ws: Any, now: float) -> None:
        self.incarnation += 1
        out = (self.logs / f"{self.id}.{self.incarnation}.log").open("w")
        env = {"OFFLOADER__REPLICA__ID": self.id, "OFFLOADER__SERVER__PORT": str(self.port),
               # a lease below the cycle interval, as the service advises: a dead replica's tables move within a cycle
               "OFFLOADER__REPLICA__HEARTBEAT": "2s", "OFFLOADER__REPLICA__LEASE": "8s"}  # fmt: skip
        self.proc = ws.start("run", env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.started = now
        self.events.append({"t": round(now, 1), "replica": self.id, "incarnation": self.incarnation, "kind": "start"})
        self.restart_at = None

    def kill(self, now: float) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=60)
        self.proc = None
        self.events.append({"t": round(now, 1), "replica": self.id, "incarnation": self.incarnation, "kind": "kill"})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_serving(self, timeout: float = 120) -> None:
        """Until its /healthz answers 200 (or it exited): a stop sent then tests the running service, not the interpreter's start."""
        from helpers import http_get

        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            try:
                if http_get(self.port, "/healthz")[0] == 200:
                    return
            except OSError:  # not listening yet
                pass
            time.sleep(0.25)


# -- the soak ---------------------------------------------------------------------------------


class Feed(threading.Thread):
    """The demo's live feed: ``live_batch`` once a second, about ``rate`` trades each, until stopped."""

    def __init__(self, dsn: str, rate: int, rng: random.Random) -> None:
        super().__init__(name="soak-feed", daemon=True)
        self.dsn, self.rate, self.rng = dsn, rate, rng
        self.stop = threading.Event()
        self.rows = 0
        self.batches = 0
        self.errors: list[str] = []

    def run(self) -> None:
        from offloader import demo_feed
        from offloader.clickhouse import HttpEngine
        from offloader.config import SourceConfig

        engine = HttpEngine(SourceConfig(dsn=self.dsn))
        try:
            last = time.monotonic()
            while not self.stop.wait(max(0.0, last + 1.0 - time.monotonic())):
                now = time.monotonic()
                rows = round(self.rng.uniform(0.5, 1.5) * self.rate * (now - last))  # a batch takes time: keep the rate
                last = now
                try:
                    self.rows += demo_feed.live_batch(engine, rows)
                    self.batches += 1
                except Exception as exc:  # a feed error is counted and shown, the soak goes on
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        finally:
            engine.close()


def log_events(folder: Path) -> list[dict[str, Any]]:
    """Every JSON log line of every incarnation of every replica, with the file it came from."""
    out = []
    for path in sorted(folder.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                entry["_file"] = path.name
                out.append(entry)
    return out


def iceberg_location(ws: Any, target: str) -> str:
    table = ws.iceberg_table(target)
    return str(table.metadata_location).removeprefix("file://")


def check_tables(ws: Any, endpoint: Any, tables: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The checker's counts per table: the source over HTTP, Iceberg through DuckDB's iceberg_scan."""
    con = ws.storage.duckdb()
    results: dict[str, dict[str, int]] = {}
    for table in tables:
        key, values = table_key(table)
        time_col, rest = key[0], [*key[1:], *values]
        src_sql = f"SELECT toUnixTimestamp64Micro(toDateTime64({time_col}, 6, 'UTC')), {', '.join(rest)} FROM {table['source']}"
        source = endpoint.rows(src_sql)
        location = iceberg_location(ws, table["target"])
        cold = con.execute(f"SELECT epoch_us({time_col}), {', '.join(rest)} FROM iceberg_scan('{location}')").fetchall()
        results[table["name"]] = compare(source, (tuple(r) for r in cold), len(key))
        del source, cold
    con.close()
    return results


def tamper(ws: Any, table: dict[str, Any]) -> str:
    """The checker's own test (``--tamper``): through PyIceberg, delete one row of ``table`` from
    Iceberg and append a second copy of another, so the check must count one lost and one duplicated."""
    from pyiceberg.expressions import EqualTo

    iceberg = ws.iceberg_table(table["target"])
    rows = iceberg.scan(limit=2).to_arrow()
    tie = table["cursor"][-1]
    gone = rows.column(tie)[0].as_py()
    iceberg.append(rows.slice(1, 1))
    iceberg = ws.iceberg_table(table["target"])
    iceberg.delete(EqualTo(tie, gone))
    return f"{table['name']}: deleted {tie} = {gone}, appended a copy of {tie} = {rows.column(tie)[1].as_py()}"


def run_stats(pg_dsn: str) -> dict[str, Any]:
    """Commits, runs and maintenance actions from the state store."""
    from offloader.config import StateConfig
    from offloader.state import StateStore

    state = StateStore(StateConfig(dsn=pg_dsn))
    try:
        runs = state.runs(limit=10_000_000)
        audits = state.audits(limit=10_000_000)
    finally:
        state.close()
    committed = [r for r in runs if r.outcome == "committed"]
    return {
        "runs": len(runs),
        "runs_by_outcome": dict(Counter(r.outcome for r in runs)),
        "commits": sum(r.windows for r in committed),
        "commits_by_replica": dict(sum((Counter({str(r.replica): r.windows}) for r in committed), Counter())),
        "rows_committed": sum(r.rows_written for r in committed),
        "maintenance_actions": dict(Counter(f"{a.action}:{a.outcome}" for a in audits)),
    }


def summarize_replica(replica: str, samples: list[dict[str, Any]], events: list[dict[str, Any]], half: float) -> dict[str, Any]:
    """One replica's figures: kills, restarts, RSS and fds (start and end past start-up, max), the slopes."""
    mine = [s for s in samples if s["replica"] == replica]
    own = [e for e in events if e["replica"] == replica]
    starts = [e for e in own if e["kind"] == "start"]
    # a slot breaks at its start: its check loads the embedded engine early in the slot
    maintenance = [(e["incarnation"], e["t"] - (e.get("seconds") or 0)) for e in own if e["kind"] == "maintenance"]
    out: dict[str, Any] = {
        "incarnations": len(starts),
        "kills": sum(1 for e in own if e["kind"] == "kill"),
        "restarts": max(0, len(starts) - 1),
        "unexpected_exits": [e for e in own if e["kind"] == "exit"],
        "maintenance_runs": len(maintenance),
        "samples": len(mine),
    }
    if not mine:
        return out
    warm = [s for s in mine if s["age"] >= WARMUP_S] or mine  # start and end: past an incarnation's start-up
    rss = [s["rss"] / MiB for s in mine]
    fds = [s["fds"] for s in mine]
    return out | {
        "rss_mib": {"start": round(warm[0]["rss"] / MiB, 1), "end": round(warm[-1]["rss"] / MiB, 1), "max": round(max(rss), 1)},
        "fds": {"start": warm[0]["fds"], "end": warm[-1]["fds"], "max": max(fds)},
        "incarnation_max_rss_mib": {
            str(i): round(max(s["rss"] for s in mine if s["incarnation"] == i) / MiB, 1)
            for i in sorted({s["incarnation"] for s in mine})
        },
        "rss_slope_second_half_mib_per_10min": rss_slope(mine, half),
        "rss_slope_second_half_between_maintenance_mib_per_10min": rss_slope(mine, half, breaks=maintenance),
        "fd_max_second_half": max((s["fds"] for s in mine if s["t"] >= half), default=None),
    }


def plot(samples: list[dict[str, Any]], events: list[dict[str, Any]], path: Path) -> None:
    """RSS and fds over time per replica (one line per incarnation), kills dotted, maintenance slots marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_fd) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    replicas = sorted({s["replica"] for s in samples} | {e["replica"] for e in events})
    colors = dict(zip(replicas, ("tab:blue", "tab:orange", "tab:purple", "tab:brown"), strict=False))
    for replica in replicas:
        mine = [s for s in samples if s["replica"] == replica]
        for n, inc in enumerate(sorted({s["incarnation"] for s in mine})):
            pts = [s for s in mine if s["incarnation"] == inc]
            t = [s["t"] / 60 for s in pts]
            label = replica if n == 0 else None
            ax_rss.plot(t, [s["rss"] / MiB for s in pts], color=colors[replica], lw=1.2, label=label, marker=".", ms=3)
            ax_fd.plot(t, [s["fds"] for s in pts], color=colors[replica], lw=1.2, marker=".", ms=3)
        for e in events:
            if e["replica"] == replica and e["kind"] == "kill":
                for ax in (ax_rss, ax_fd):
                    ax.axvline(e["t"] / 60, color=colors[replica], ls=":", lw=0.8, alpha=0.7)
            if e["replica"] == replica and e["kind"] == "maintenance":
                ax_rss.plot([e["t"] / 60], [0], marker="^", color=colors[replica], ms=6, clip_on=False)
    ax_rss.set_ylabel("RSS (MiB)")
    ax_rss.set_ylim(bottom=0)
    ax_fd.set_ylabel("open file descriptors")
    ax_fd.set_ylim(bottom=0)
    ax_fd.set_xlabel("minutes (dotted: SIGKILL of that replica; triangles: a maintenance slot it ran)")
    ax_rss.legend(loc="lower right")
    ax_rss.set_title("offloader run, two replicas under the live feed, killed at random: RSS and fds per process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path, publish: bool = False) -> dict[str, Any]:
    """summary.json and soak.png from what a run left in ``out``: run.json, samples.jsonl, events.jsonl."""
    run = json.loads((out / "run.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if line]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line]
    checks = run["check"]["tables"]
    totals = {k: sum(c[k] for c in checks.values()) for k in ("lost", "duplicated", "unexpected", "changed", "source_duplicated")}
    replicas = sorted({e["replica"] for e in events})
    summary = {
        **{k: v for k, v in run.items() if k != "check"},
        "rows_fed": run["feed"]["seeded_rows"] + run["feed"]["live_rows"],
        "kills": sum(1 for e in events if e["kind"] == "kill"),
        "restarts": sum(1 for e in events if e["kind"] == "start") - len(replicas),
        "unexpected_exits": sum(1 for e in events if e["kind"] == "exit"),
        "maintenance_runs": sum(1 for e in events if e["kind"] == "maintenance"),
        "replicas": {r: summarize_replica(r, samples, events, run["fed_seconds"] / 2) for r in replicas},
        "check": {"tables": checks, **totals},
    }
    summary["ok"] = all(v == 0 for v in totals.values()) and run["once_rc"] == 0
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(samples, events, out / "soak.png")
    if publish:
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "soak.png", ROOT / "docs" / "img" / "soak.png")
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the feed and the kills run")
    parser.add_argument("--seed", type=int, default=None, help="the RNG seed of kills, restarts and feed sizes (printed)")
    parser.add_argument("--rate", type=int, default=300, help="trades per second fed (each second: rate/2 to 3*rate/2)")
    parser.add_argument("--seed-rows", type=int, default=200_000, help="history seeded before the replicas start")
    parser.add_argument("--maintenance-every", type=int, default=10, help="minutes between maintenance slots (a cron step)")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN", "MAX"),
                        help="minutes between kills of one replica, uniform in [MIN, MAX]")  # fmt: skip
    parser.add_argument("--restart-after", type=float, nargs=2, default=(1.0, 10.0), metavar=("MIN", "MAX"),
                        help="seconds from a kill to the restart, uniform in [MIN, MAX]")  # fmt: skip
    parser.add_argument("--retain", default=None, help="[maintenance] retain, e.g. 5m: the history a table keeps (default 7d)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between /proc samples")
    parser.add_argument("--settle", type=float, default=SAFETY_LAG_S + 3 * INTERVAL_S,
                        help="seconds the replicas get to catch up after the feed stops, before `offloader once`")  # fmt: skip
    parser.add_argument("--report", action="store_true", help="only redo summary.json and soak.png from what a run left in --out")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "soak")
    parser.add_argument("--publish", action="store_true", help="copy the plot to docs/img/soak.png")
    parser.add_argument(
        "--tamper", action="store_true", help="test the checker: lose one row and duplicate another before it runs"
    )
    parser.add_argument("--keep", action="store_true", help="keep the workspace (source, warehouse, logs) under --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return 0 if report(args.out, args.publish)["ok"] else 1
    sys.path.insert(0, str(ROOT / "tests"))
    from endpoint import Endpoint
    from helpers import Workspace, fresh_pg_database, run_cli
    from storage import free_port

    from offloader import demo, demo_feed

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"soak: seed {seed}, {args.minutes} min, ~{args.rate} trades/s, maintenance every {args.maintenance_every} min",
          flush=True)  # fmt: skip
    rng = random.Random(seed)  # noqa: S311 - a repeatable kill schedule, not a secret
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.out))
    samples_path = args.out / "samples.jsonl"
    samples: list[dict[str, Any]] = []
    status = 1
    with fresh_pg_database("offloader_soak") as pg_dsn:
        ws = Workspace(root=work, pg_dsn=pg_dsn)
        ws.tables = demo.table_configs()
        ws.source = {"safety_lag": f"{SAFETY_LAG_S}s", "max_window": "1h"}
        ws.schedule = {"interval": f"{INTERVAL_S}s", "maintenance_cron": f"*/{args.maintenance_every} * * * *",
                       "shutdown_timeout": "60s"}  # fmt: skip
        if args.retain:  # snapshots kept: the default 7 days, or less so a short run reaches its steady history
            ws.maintenance["retain"] = args.retain
        demo.ensure_schema(ws.engine)
        seeded = demo_feed.seed(ws.engine, args.seed_rows, hours=1.0, seed=seed) if args.seed_rows else 0
        ws.release()
        endpoint = Endpoint(ws)
        endpoint.start()
        catalog = ws.storage.catalog()  # the SQL catalog creates its tables before the replicas race for them
        if hasattr(catalog, "engine"):
            catalog.engine.dispose()
        logs = work / "logs"
        logs.mkdir()
        replicas = [Replica(id=f"soak-{i}", port=free_port(), logs=logs) for i in range(2)]
        feed = Feed(endpoint.dsn, args.rate, random.Random(seed + 1))  # noqa: S311
        t0 = time.monotonic()
        wall0 = time.time()
        try:
            for rep in replicas:
                rep.start(ws, 0.0)
                rep.next_kill = rng.uniform(*args.kill_every) * 60
            feed.start()
            next_sample = 0.0
            end = args.minutes * 60
            with samples_path.open("w") as sample_file:
                while (now := time.monotonic() - t0) < end:
                    for rep in replicas:
                        if rep.proc is not None and rep.proc.poll() is not None:  # died without our SIGKILL: a finding
                            rep.events.append({"t": round(now, 1), "replica": rep.id, "incarnation": rep.incarnation,
                                               "kind": "exit", "rc": rep.proc.returncode})  # fmt: skip
                            print(f"soak: {rep.id} incarnation {rep.incarnation} exited by itself, rc {rep.proc.returncode}")
                            rep.proc = None
                            rep.restart_at = now + 1
                        if rep.proc is not None and now >= rep.next_kill:
                            rep.kill(now)
                            rep.restart_at = now + rng.uniform(*args.restart_after)
                            rep.next_kill = rep.restart_at + rng.uniform(*args.kill_every) * 60
                            print(f"soak: {now / 60:6.2f} min: SIGKILL {rep.id} (incarnation {rep.incarnation})", flush=True)
                        if rep.proc is None and rep.restart_at is not None and now >= rep.restart_at:
                            rep.start(ws, now)
                    if now >= next_sample:
                        next_sample += args.sample_every
                        for rep in replicas:
                            got = proc_sample(rep.proc.pid) if rep.alive() else None  # type: ignore[union-attr]
                            if got is not None:
                                sample = {"t": round(now, 1), "replica": rep.id, "incarnation": rep.incarnation,
                                          "age": round(now - rep.started, 1), "rss": got[0], "fds": got[1]}  # fmt: skip
                                samples.append(sample)
                                sample_file.write(json.dumps(sample) + "\n")
                        sample_file.flush()
                    time.sleep(0.25)
            feed.stop.set()
            feed.join(timeout=120)
            fed_at = time.monotonic() - t0
            print(f"soak: feed stopped after {feed.rows:,} live rows; catching up", flush=True)
            time.sleep(args.settle)
            for rep in replicas:
                if rep.proc is None:
                    rep.start(ws, time.monotonic() - t0)
            for rep in replicas:
                rep.wait_serving()
            stops = {}
            for rep in replicas:
                assert rep.proc is not None
                rep.proc.send_signal(signal.SIGTERM)
            for rep in replicas:
                assert rep.proc is not None
                try:
                    stops[rep.id] = rep.proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    rep.proc.kill()
                    stops[rep.id] = "timeout, killed"
                rep.proc = None
            once = run_cli("once", config=ws.config_path, cwd=work, timeout=900)
            print(f"soak: offloader once: rc {once.returncode}", flush=True)
            if args.tamper:
                print(f"soak: --tamper: {tamper(ws, ws.tables[0])}", flush=True)
            checks = check_tables(ws, endpoint, ws.tables)
            stats = run_stats(pg_dsn)
        finally:
            feed.stop.set()
            for rep in replicas:
                if rep.proc is not None and rep.proc.poll() is None:
                    rep.proc.kill()
                    rep.proc.wait()
            endpoint.kill()
        entries = log_events(logs)
        events = [*(e for r in replicas for e in r.events), *(
            {"t": round(_event_t(e, wall0), 1), "replica": e["replica"], "incarnation": int(e["_file"].split(".")[-2]),
             "kind": "maintenance", "seconds": e.get("seconds")}
            for e in entries if e.get("event") == "maintenance_finished"
        )]  # fmt: skip
        (args.out / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in sorted(events, key=lambda e: e["t"])))
        loud = Counter(
            f"{e.get('level')}:{e.get('event')}" for e in entries if e.get("level") in {"warning", "error", "critical"}
        )
        run = {
            "seed": seed,
            "minutes": args.minutes,
            "started": datetime.fromtimestamp(wall0, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "fed_seconds": round(fed_at, 1),
            "feed": {
                "rate_per_s": args.rate,
                "seeded_rows": seeded,
                "live_rows": feed.rows,
                "batches": feed.batches,
                "errors": len(feed.errors),
                "first_errors": feed.errors[:5],
            },  # fmt: skip
            "maintenance_crashed": sum(1 for e in entries if e.get("event") == "maintenance_crashed"),
            "sigterm_exit_codes": stops,
            "once_rc": once.returncode,
            **stats,
            "loud_log_lines": dict(loud.most_common()),
            "check": {"tables": checks},
        }
        (args.out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        summary = report(args.out, args.publish)
        status = 0 if summary["ok"] else 1
        if status == 0 and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    totals = {k: summary["check"][k] for k in ("lost", "duplicated", "unexpected", "changed")}
    print(
        json.dumps({k: summary[k] for k in ("rows_fed", "commits", "kills", "restarts", "maintenance_runs")} | totals, indent=2)
    )
    print(f"soak: {'OK' if status == 0 else 'FAILED'} (seed {seed}); {args.out / 'summary.json'}")
    return status


def _event_t(entry: dict[str, Any], wall0: float) -> float:
    """Seconds since the soak's start of a log entry (its ISO timestamp); 0 when unreadable."""
    try:
        return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp() - wall0
    except (KeyError, ValueError):
        return 0.0


if __name__ == "__main__":
    sys.exit(main())

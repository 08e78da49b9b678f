"""Replicas: which `offloader run` processes are live, and which of them owns each table.

Several `offloader run` processes on one config share the tables on purpose. Each one
registers in the state store (``offloader_replicas``) and refreshes its row every
``[replica] heartbeat``; a replica is live while its last heartbeat is within
``[replica] lease``, and a clean shutdown deletes its row at once. At every cycle a replica
runs the tables it owns and leaves the others alone. The owner of a table is the live
replica with the highest rendezvous hash of (replica, table): every replica computes the
same owners from the same live set, the tables spread evenly, and when a replica joins or
leaves only the tables it gains or held move.

Ownership only spreads the work; exactly-once never depends on it. Every run still takes the
table's runner lock (``job.guarded``), owner or not: two replicas that briefly disagree on
who is live (a lease just ran out, a replica just joined) meet at the lock, and the one that
finds it taken logs ``table_held_elsewhere`` at info level and leaves the table to the next
cycle. One-shot commands (``once``, ``maintain``, ``check``, ``reset``) never register: they
take every table they are asked to, with the lock.

A dependent table (``depends_on``) whose upstream another replica owns waits, up to
``[replica] upstream_wait``, while that upstream's lock is held (:func:`wait_for_upstreams`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from offloader import __version__
from offloader.config import ReplicaConfig, TableConfig
from offloader.errors import OffloaderError
from offloader.ports import ReplicaRecord, StateStore

FORGET_AFTER_LEASES = 20  # a replica silent for this many leases is dropped from the table (killed, never back)
POLL_SECONDS = 0.5


def score(replica: str, table: str) -> int:
    """The rendezvous weight of ``replica`` for ``table``: a stable 64-bit hash of both."""
    return int.from_bytes(hashlib.sha256(f"{replica}\x00{table}".encode()).digest()[:8], "big")


def owner(table: str, replicas: Iterable[str]) -> str | None:
    """The replica that owns ``table``: the highest weight (ties, which never happen, by id); None without replicas."""
    return max(replicas, key=lambda r: (score(r, table), r), default=None)


def assign(tables: Iterable[str], replicas: Collection[str]) -> dict[str, str | None]:
    """The owner of each table among ``replicas``."""
    return {table: owner(table, replicas) for table in tables}


def live_of(records: Iterable[ReplicaRecord], now: float, lease: float) -> list[ReplicaRecord]:
    """The replicas whose last heartbeat is within ``lease`` of ``now``."""
    return [r for r in records if now - r.heartbeat_at <= lease]


@dataclass(frozen=True)
class Share:
    """One cycle's split of tables: those this replica runs, and the owner of each of the others."""

    mine: list[TableConfig]
    elsewhere: dict[str, str]  # table name -> the live replica that owns it
    live: list[str]


class Membership:
    """This process as one replica among the live ones: its heartbeat row and its share of the tables."""

    def __init__(
        self, state: StateStore, config: ReplicaConfig, *, clock: Callable[[], float] = time.time,
        host: str | None = None, pid: int | None = None,
    ) -> None:  # fmt: skip
        self.state = state
        self.config = config
        self.id = config.id
        self.clock = clock
        self.host = host or socket.gethostname()
        self.pid = pid or os.getpid()
        self.started_at = clock()
        self.log = structlog.get_logger("offloader")

    def beat(self) -> None:
        """Refresh this replica's row (inserting it on the first beat, or after it was pruned);
        forget replicas silent for ``FORGET_AFTER_LEASES`` leases."""
        now = self.clock()
        self.state.beat_replica(ReplicaRecord(self.id, self.host, self.pid, __version__, self.started_at, now))
        self.state.prune_replicas(now - FORGET_AFTER_LEASES * self.config.lease)

    def leave(self) -> None:
        """Delete this replica's row (a clean shutdown): its tables move at the others' next cycle."""
        self.state.remove_replica(self.id)

    def live(self) -> list[ReplicaRecord]:
        """The replicas whose heartbeat is within the lease; this one always among them."""
        now = self.clock()
        rows = live_of(self.state.replicas(), now, self.config.lease)
        if all(r.replica_id != self.id for r in rows):  # our own heartbeat late: we are alive all the same
            rows.append(ReplicaRecord(self.id, self.host, self.pid, __version__, self.started_at, now))
        return sorted(rows, key=lambda r: r.replica_id)

    def share(self, tables: Iterable[TableConfig]) -> Share:
        """The tables this replica owns now. When the state store does not answer, every table
        (the lock still guards each run), with a warning."""
        chosen = list(tables)
        try:
            live = [r.replica_id for r in self.live()]
        except OffloaderError as exc:
            self.log.warning("replicas_unreadable", error=str(exc), hint="running every table; the table locks guard them")
            return Share(chosen, {}, [self.id])
        owners = assign([t.name for t in chosen], live)
        elsewhere = {name: who for name, who in owners.items() if who is not None and who != self.id}
        return Share([t for t in chosen if t.name not in elsewhere], elsewhere, live)


def holder(state: StateStore, table: str, me: str) -> str | None:
    """Who holds ``table``'s lock, if the run history says: the replica of its newest run still running."""
    try:
        runs = state.runs(table, limit=1)
    except OffloaderError:
        return None
    if runs and runs[0].outcome == "running" and runs[0].replica and runs[0].replica != me:
        return runs[0].replica
    return None


def wait_for_upstreams(
    state: StateStore, table: TableConfig, elsewhere: Mapping[str, str], wait: float, stop: threading.Event, log: Any,
    *, clock: Callable[[], float] = time.monotonic,
) -> None:  # fmt: skip
    """Wait, up to ``wait`` seconds in all, while an upstream of ``table`` that another replica
    owns is being offloaded (its runner lock is held), so the dependent follows it as it would
    in one replica's cycle. Past the bound the dependent runs anyway: it is never skipped for it."""
    deadline = clock() + wait
    for upstream in (d for d in table.depends_on if d in elsewhere):
        waited = False
        try:
            while state.held(upstream):
                if not waited:
                    log.info("upstream_held_elsewhere", table=table.name, upstream=upstream, holder=elsewhere[upstream])
                    waited = True
                if clock() >= deadline:
                    log.info("upstream_wait_expired", table=table.name, upstream=upstream, wait_seconds=wait)
                    return
                if stop.wait(POLL_SECONDS):
                    return
        except OffloaderError as exc:  # the state store down: the run itself will say so
            log.warning("upstream_unreadable", table=table.name, upstream=upstream, error=str(exc))
            return
        if waited:
            log.info("upstream_released", table=table.name, upstream=upstream)

"""How far behind the source replica is: ``system.replicas`` of the table offloader reads.

A replica of a ReplicatedMergeTree table that lags has not yet received the newest parts;
a window ending at ``now() - safety_lag`` would then commit past rows that arrive later.
:func:`replica_delay` reads the replica's ``absolute_delay`` (and whether it lost its Keeper
session or went read-only, when it cannot know what it misses) before each run:

- a table of another engine has no row in ``system.replicas``: delay 0;
- a replicated table: the row of the replica offloader is connected to;
- a ``Distributed`` table: the rows of the local table named in its engine arguments, on
  every replica of its cluster (``clusterAllReplicas``), the greatest delay of them all (any
  of them may serve a read). A Distributed table over another Distributed table, a view or
  a ``Merge`` table is not followed: what such a table reads is not looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from offloader.config import format_duration
from offloader.errors import ReplicaLagError
from offloader.ports import Engine

_COLUMNS = "count(), max(absolute_delay), max(is_readonly), max(is_session_expired), max(queue_size)"
_ARG = r"\s*('(?:[^'\\]|\\.)*'|[A-Za-z_][A-Za-z0-9_]*)\s*"
_DISTRIBUTED = re.compile(rf"^Distributed\({_ARG},{_ARG},{_ARG}[,)]")


@dataclass(frozen=True)
class ReplicaDelay:
    """What ``system.replicas`` said of the source table's replicas (no row: not replicated)."""

    seconds: float
    replicas: int
    read: str  # which rows were read, for messages
    readonly: bool = False
    session_expired: bool = False
    queue_size: int = 0

    def check(self, table: str, limit: float, setting: str) -> None:
        """Refuse to move ``table`` when the delay is above ``limit`` or cannot be known."""
        if self.session_expired or self.readonly:
            state = "lost its Keeper session" if self.session_expired else "is read-only"
            raise ReplicaLagError(
                f"{table}: a source replica ({self.read}) {state}, so its delay cannot be known; the table does not move "
                f"until it recovers (retried next cycle)"
            )
        if self.seconds > limit:
            raise ReplicaLagError(
                f"{table}: the source replica lags {format_duration(self.seconds)} ({self.read}, absolute_delay), above "
                f"{setting} = {format_duration(limit)}; the table does not move until the replica catches up (retried next cycle)"
            )


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _unquote(arg: str) -> str:
    return re.sub(r"\\(.)", r"\1", arg[1:-1]) if arg.startswith("'") else arg


def replica_delay(engine: Engine, database: str, table: str) -> ReplicaDelay:
    """The delay of the replicas a read of ``database.table`` may be served by."""
    rows = engine.rows(
        "SELECT engine, engine_full FROM system.tables WHERE database = {db:String} AND name = {tbl:String}",
        {"db": database, "tbl": table},
    )
    params = {"db": database, "tbl": table}
    source = f"system.replicas of {database}.{table}"
    if rows and rows[0][0] == "Distributed":
        match = _DISTRIBUTED.match(str(rows[0][1]))
        if match is None:
            raise ReplicaLagError(
                f"{database}.{table} is a Distributed table whose engine arguments offloader cannot read "
                f"({str(rows[0][1])[:200]}), so the delay of the replicas it reads cannot be known"
            )
        cluster, local_db, local_table = (_unquote(arg) for arg in match.groups())
        params = {"db": local_db, "tbl": local_table}
        source = f"clusterAllReplicas({_literal(cluster)}, system.replicas) of {local_db}.{local_table}"
        relation = f"clusterAllReplicas({_literal(cluster)}, system.replicas)"
    else:
        relation = "system.replicas"
    ((count, delay, readonly, expired, queue),) = engine.rows(
        f"SELECT {_COLUMNS} FROM {relation} WHERE database = {{db:String}} AND table = {{tbl:String}}", params
    )
    return ReplicaDelay(
        seconds=float(delay or 0), replicas=int(count), read=source, readonly=bool(readonly),
        session_expired=bool(expired), queue_size=int(queue or 0),
    )  # fmt: skip

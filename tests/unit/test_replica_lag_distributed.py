"""Which rows of system.replicas offloader reads for a Distributed source (pure logic: chDB has no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from offloader.errors import ReplicaLagError
from offloader.replica_lag import ReplicaDelay, replica_delay


class Answers:
    """An engine that answers system.tables with one engine row and records the replica query."""

    def __init__(self, engine: str, engine_full: str, replicas: tuple[Any, ...] = (2, 42, 0, 0, 5)) -> None:
        self.table_row = (engine, engine_full)
        self.replicas = replicas
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        self.sent.append((sql, dict(params or {})))
        return [self.table_row] if "system.tables" in sql else [self.replicas]


def test_a_distributed_table_reads_its_local_tables_on_every_replica() -> None:
    """Distributed('c', 'db', 'local', rand()) is read as clusterAllReplicas('c', system.replicas) of db.local."""
    engine = Answers("Distributed", "Distributed('main\\'s', 'k2_local', trades_local, rand())")
    delay = replica_delay(engine, "k2", "trades")  # type: ignore[arg-type]
    sql, params = engine.sent[-1]
    assert "FROM clusterAllReplicas('main\\'s', system.replicas)" in sql
    assert params == {"db": "k2_local", "tbl": "trades_local"}
    assert (delay.seconds, delay.replicas, delay.queue_size) == (42.0, 2, 5)


def test_a_distributed_table_it_cannot_read_is_refused() -> None:
    """Engine arguments that are expressions (not names) refuse the run rather than guess."""
    engine = Answers("Distributed", "Distributed('c', currentDatabase(), 't')")
    with pytest.raises(ReplicaLagError, match="cannot read"):
        replica_delay(engine, "k2", "trades")  # type: ignore[arg-type]


def test_a_replica_without_keeper_is_refused_whatever_its_delay() -> None:
    """A replica that lost its Keeper session cannot know its delay: the table does not move."""
    with pytest.raises(ReplicaLagError, match="lost its Keeper session"):
        ReplicaDelay(0.0, 1, "system.replicas of k2.t", session_expired=True).check("t", 3600, "source.max_replica_delay")
    ReplicaDelay(3600.0, 1, "system.replicas of k2.t").check("t", 3600, "source.max_replica_delay")  # at the limit: moves

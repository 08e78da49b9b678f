"""Replicas: the rendezvous assignment of tables to live replicas, and the [replica] config section."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sample_config import MINIMAL, write

from offloader.config import ConfigError
from offloader.config_loader import load_config
from offloader.replicas import assign, owner

TABLES = [f"table_{i}" for i in range(200)]
REPLICAS = ["pod-a", "pod-b", "pod-c"]


def test_the_owner_is_the_same_whatever_the_order_of_the_replicas() -> None:
    """Every replica computes the same owner of each table, whichever order it read the live set in."""
    first = assign(TABLES, REPLICAS)
    assert assign(TABLES, list(reversed(REPLICAS))) == first
    assert assign(TABLES, sorted(REPLICAS, key=lambda r: r[-1])) == first
    assert set(first.values()) <= set(REPLICAS)


def test_tables_spread_over_the_replicas() -> None:
    """Two hundred tables over three replicas: each replica owns a fair share (a third, give or take)."""
    counts = Counter(assign(TABLES, REPLICAS).values())
    assert set(counts) == set(REPLICAS)
    for replica, owned in counts.items():
        assert 40 <= owned <= 95, (replica, counts)


def test_a_dead_replica_moves_only_its_own_tables() -> None:
    """When a replica leaves, only the tables it owned move, and they spread over the others; a joining replica takes tables only to itself."""
    before = assign(TABLES, REPLICAS)
    after = assign(TABLES, ["pod-a", "pod-c"])
    moved = {t for t in TABLES if before[t] != after[t]}
    assert moved == {t for t in TABLES if before[t] == "pod-b"}
    assert {after[t] for t in moved} == {"pod-a", "pod-c"}
    joined = assign(TABLES, [*REPLICAS, "pod-d"])
    assert all(joined[t] in (before[t], "pod-d") for t in TABLES)
    assert any(joined[t] == "pod-d" for t in TABLES)


def test_one_replica_owns_everything_and_none_owns_nothing() -> None:
    """A lone replica owns every table; with no replica live no table has an owner."""
    assert set(assign(TABLES, ["solo"]).values()) == {"solo"}
    assert owner("t", []) is None


def test_replica_defaults(tmp_path: Path) -> None:
    """Without [replica] the id is <hostname>-<pid>, the heartbeat 5 s, the lease 30 s, the upstream wait 5 min."""
    import os
    import socket

    config = load_config(write(tmp_path), env={})
    assert config.replica.id == f"{socket.gethostname()}-{os.getpid()}"
    assert (config.replica.heartbeat, config.replica.lease, config.replica.upstream_wait) == (5.0, 30.0, 300.0)


def test_replica_id_from_the_environment(tmp_path: Path) -> None:
    """OFFLOADER__REPLICA__ID (a pod name, in Kubernetes) sets the id."""
    config = load_config(write(tmp_path), env={"OFFLOADER__REPLICA__ID": "offloader-7d9f-x2k"})
    assert config.replica.id == "offloader-7d9f-x2k"


@pytest.mark.parametrize(
    "section, problem",
    [
        ('lease = "10s"\nheartbeat = "5s"', "replica.lease = '10s': must be more than twice replica.heartbeat (5s)"),
        ('heartbeat = "20s"', "replica.lease = '30s': must be more than twice replica.heartbeat (20s)"),
        ('id = ""', "replica.id = '': expected 1 to 128 printable characters"),
        ('id = " pod"', "replica.id = ' pod': expected 1 to 128 printable characters"),
        ('id = "a\\nb"', "replica.id = 'a\\nb': expected 1 to 128 printable characters"),
        (f'id = "{"x" * 129}"', "replica.id = 'xxxx"),
        ("id = 7", "replica.id = 7: expected 1 to 128 printable characters"),
        ('lease = "soon"', "replica.lease = 'soon': expected a duration"),
        ('leader = "me"', "replica.leader = 'me': unknown key; accepted: heartbeat, id, lease, upstream_wait"),
    ],
)
def test_a_bad_replica_section_names_the_key(tmp_path: Path, section: str, problem: str) -> None:
    """A bad [replica] value fails at load time with a line naming the key, the value and what is accepted."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + "[replica]\n" + section + "\n"), env={})
    assert problem in str(info.value), str(info.value)

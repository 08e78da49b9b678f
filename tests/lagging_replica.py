"""``offloader`` on an embedded source whose ``system.replicas`` reports a chosen delay (tests only)::

    python tests/lagging_replica.py DELAY_SECONDS [offloader arguments ...]

This is NOT a real replica: chDB cannot run a ReplicatedMergeTree table (it has no Keeper,
and no interserver endpoint to fetch parts from). The real chDB engine runs every query,
offloader's own replica query included; only the relation ``system.replicas`` in it is
swapped for a stand-in of the same columns in which every existing table is a replica with
``absolute_delay = DELAY_SECONDS`` and a queue of 3 entries.
"""

from __future__ import annotations

import sys
from typing import Any

from offloader import cli, clickhouse

STAND_IN = (
    "(SELECT database, name AS table, toUInt64({delay}) AS absolute_delay, toUInt8(0) AS is_readonly,"
    " toUInt8(0) AS is_session_expired, toUInt32(3) AS queue_size FROM system.tables)"
)


def lagging(delay: int) -> None:
    """Make every embedded engine of this process answer ``system.replicas`` with ``delay``."""
    real = clickhouse.ChdbEngine._query

    def query(self: clickhouse.ChdbEngine, sql: str, fmt: str, params: dict[str, Any] | None) -> Any:
        return real(self, sql.replace("FROM system.replicas", "FROM " + STAND_IN.format(delay=int(delay))), fmt, params)

    clickhouse.ChdbEngine._query = query  # type: ignore[method-assign]


if __name__ == "__main__":
    lagging(int(sys.argv[1]))
    sys.exit(cli.main(sys.argv[2:]))

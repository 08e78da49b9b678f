"""Corrections that reach the cold tier: ``corrections = "mutations"`` (docs/corrections.md).

Each offload run of such a table, under its lock and before its new windows, reads the source's
mutations (``mutations.listed``) after the last one applied, in ClickHouse's order, and stops
at the first one not done yet (ClickHouse applies them in that order too). For each:

1. what it can have changed (``mutations.touched``): nothing (``MATERIALIZE TTL``, indexes …),
   or a time range read from its ``WHERE`` — unbounded sides become the whole retained range;
2. that range clipped to what Iceberg holds and the source still retains: from the oldest row
   the source's TTL keeps for an hour more (rows TTL deleted stay in Iceberg) up to the
   committed cursor (rows above it are read, corrected, by the next windows);
3. ``Windows.replace`` of the range: ONE copy-on-write commit, verified like a window, whose
   marker carries the mutation as the last one applied (``offloader.corrections``), so that a
   crash neither skips it nor, after its commit, applies it again. Every later commit carries
   that key forward (``Windows.carry``).

Two signals stand in for what ``system.mutations`` cannot say. A lightweight ``UPDATE``
leaves patch parts only (``mutations.newest_patch``): a patch newer than the last one seen
replaces the whole retained range. The last mutation applied missing from the list (it
keeps ``finished_mutations_to_keep`` finished ones) means some may have been dropped unseen:
the whole retained range once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Protocol

from offloader import mutations
from offloader.cursor import Cursor, time_key
from offloader.job import TableJob
from offloader.mutations import Mutation, Touched
from offloader.ports import CORRECTIONS_KEY, SinkTable
from offloader.results import WindowResult
from offloader.source import Source

FAR_PAST = "1900-01-01 00:00:00.000000"
GRACE = 3600.0  # a row the TTL deletes within this many seconds is treated as deleted already


@dataclass(frozen=True)
class Position:
    """The last correction applied: a mutation (its creation time and id) and the newest patch block seen."""

    created: str | None = None
    mutation_id: str | None = None
    patch: int = 0

    @classmethod
    def from_json(cls, text: str | None) -> Position:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(data.get("created"), data.get("mutation_id"), int(data.get("patch", 0)))

    def to_json(self) -> str:
        return json.dumps({"created": self.created, "mutation_id": self.mutation_id, "patch": self.patch}, sort_keys=True)

    def after(self, mutation: Mutation) -> bool:
        """Whether ``mutation`` comes after this position."""
        if self.created is None or self.mutation_id is None:
            return True
        return mutation.order > Mutation(self.mutation_id, self.created, "", True).order

    def at(self, mutation: Mutation) -> Position:
        return replace(self, created=mutation.created, mutation_id=mutation.mutation_id)


class RangeWriter(Protocol):
    """What a correction needs of ``window.Windows`` (the layer beside this one)."""

    source: Source
    table: SinkTable

    def carry(self) -> dict[str, str]: ...
    def marker(self, cursor: list[Any], rows: int, hi: str, **extra: str) -> dict[str, str]: ...
    def replace(
        self, start: str, end: str, marker: dict[str, str], *, read: bool = True, advance: bool = False
    ) -> WindowResult | None: ...


def apply(job: TableJob, windows: RangeWriter, cursor: Cursor | None, log: Any) -> list[WindowResult]:
    """The corrections the source made since the last one applied, each in one commit (none
    unless the table has ``corrections = "mutations"``)."""
    if job.table.corrections != "mutations":
        return []
    return Corrections(job, windows, log).run(cursor)


class Corrections:
    """One run's corrections of one table."""

    def __init__(self, job: TableJob, windows: RangeWriter, log: Any) -> None:
        self.job, self.windows, self.log = job, windows, log
        self.time_column = job.table.cursor[0]
        self._floor: tuple[str | None] | None = None
        self.complete_to: str | None = None  # the marker's window end: a correction leaves Iceberg complete up to it

    def run(self, cursor: Cursor | None) -> list[WindowResult]:
        t, engine = self.job.table, self.windows.source.engine
        at = Position.from_json(self.windows.carry().get(CORRECTIONS_KEY))
        marker = self.windows.table.marker()
        self.complete_to = marker.window_hi if marker is not None else None
        listed = mutations.listed(engine, t.source_database, t.source_table)
        pending: list[Mutation] = []
        for m in (m for m in listed if at.after(m)):
            if not m.done:
                self.log.warning(
                    "mutation_pending", mutation=m.mutation_id, command=m.command[:200], fail_reason=m.fail_reason[:200]
                )
                break
            pending.append(m)
        todo: list[tuple[Position, Touched, str]] = []
        gone = at.mutation_id is not None and not any((m.mutation_id, m.created) == (at.mutation_id, at.created) for m in listed)
        if pending and gone:
            why = f"mutation {at.mutation_id}, the last applied, is no longer listed: some after it may be gone unseen"
            todo.append((at.at(pending[-1]), Touched(True, how=why), f"{pending[0].mutation_id}..{pending[-1].mutation_id}"))
        elif pending:
            steps, utc = mutations.derived(engine, t.source_database, t.source_table, self.time_column)
            todo += [(at.at(m), mutations.touched(m.command, self.time_column, steps, utc=utc), m.mutation_id) for m in pending]
        patch = mutations.newest_patch(engine, t.source_database, t.source_table)
        if patch > at.patch:
            last = todo[-1][0] if todo else at
            why = "a lightweight UPDATE (patch part) names no range: the whole retained range"
            todo.append((replace(last, patch=patch), Touched(True, how=why), f"patch block {patch}"))
        done = []
        for position, touched, label in todo:
            committed = self._correct(cursor, position, touched, label)
            if committed is not None:
                done.append(committed)
                cursor = Cursor.from_json(committed.cursor)
        return done

    def _correct(self, cursor: Cursor | None, position: Position, touched: Touched, label: str) -> WindowResult | None:
        """Replace the range one correction touched, its position in the same commit; None when there is nothing to replace."""
        key = {CORRECTIONS_KEY: position.to_json()}
        bounds = None if cursor is None or not touched.rows else self._clip(touched, cursor)
        if bounds is None:
            # nothing changed, nothing offloaded yet, or only rows above the cursor (the windows read
            # them corrected) or below what the source retains: the next commit records it as applied
            self.windows.carry().update(key)
            self.log.info("correction_skipped", mutation=label, reason=touched.how, cursor=cursor.to_json() if cursor else None)
            return None
        assert cursor is not None
        lo, hi = bounds
        marker = self.windows.marker(cursor.to_json(), 0, self.complete_to or hi, **key, **{"offloader.operation": "correction"})
        committed = self.windows.replace(lo, hi, marker, advance=True)
        self.windows.carry().update(key)
        self.log.info(
            "correction_applied", mutation=label, lo=lo, hi=hi, how=touched.how,
            rows=committed.rows if committed else 0, snapshot_id=committed.snapshot_id if committed else None,
        )  # fmt: skip
        return committed

    def _clip(self, touched: Touched, cursor: Cursor) -> tuple[str, str] | None:
        """The touched range within [the oldest row the source retains, the cursor's time], if any of it is left."""
        floor = self.floor()
        if floor is None:
            return None
        lo = max(touched.lo or FAR_PAST, floor, key=time_key)
        hi = min(touched.hi or cursor.time, cursor.time, key=time_key)
        return (lo, hi) if time_key(lo) <= time_key(hi) else None

    def floor(self) -> str | None:
        """The oldest time a correction may replace: the oldest row the TTL keeps for ``GRACE``
        more (FAR_PAST without a TTL), None when a TTL keeps nothing."""
        if self._floor is None:
            oldest, has_ttl = self.windows.source.oldest_kept(GRACE)
            self._floor = (oldest if has_ttl else FAR_PAST,)
        return self._floor[0]

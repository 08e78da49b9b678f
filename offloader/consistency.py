"""Warm/cold consistency: compare ClickHouse and Iceberg per time bucket, and repair.

The compared range runs from the oldest time ClickHouse still fully holds (its TTL leaves
the rows there for at least one more bucket; ``--since`` narrows it) up to the committed
cursor. Each bucket (``maintenance.check_bucket``, an hour by default) is compared by row
count and by an order-independent checksum: the wrapping sum of ``cityHash64`` over the key
columns (``check_columns``, or the cursor). Both sides are computed by the ClickHouse
engine with the same expressions: the source side by the source server, the Iceberg side by
the embedded engine over the Arrow batches PyIceberg reads, so a checksum never depends on
a Python re-implementation of a ClickHouse function.

``repair`` rewrites each differing bucket behind the cursor in ONE commit that replaces
Iceberg's rows of that bucket by ClickHouse's (rows ClickHouse deleted inside the range go
too), carrying the offload marker forward; the cursor does not move. Running it again finds
nothing to do.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import pyarrow as pa

from offloader.cursor import from_micros, micros
from offloader.errors import ConfigError, OffloaderError
from offloader.job import TableJob, finish_action, guarded
from offloader.ports import ArrowQuery
from offloader.replacing import unchecked
from offloader.results import ActionResult
from offloader.source import Source, quote
from offloader.window import Windows

MASK = 2**64 - 1
BATCH_ROWS = 1_000_000


@dataclass
class Bucket:
    start: str
    source_rows: int = 0
    iceberg_rows: int = 0
    source_sum: int = 0
    iceberg_sum: int = 0

    @property
    def differs(self) -> bool:
        return self.source_rows != self.iceberg_rows or self.source_sum != self.iceberg_sum


@dataclass
class CheckResult:
    """The comparison of one table, and the repair when asked for."""

    table: str
    outcome: str = "ok"  # ok | differs | repaired | failed | skipped
    lo: str | None = None
    hi: str | None = None
    buckets: int = 0
    differing: list[Bucket] = field(default_factory=list)
    repaired: int = 0
    error: OffloaderError | None = None
    detail: str = ""

    @property
    def missing_rows(self) -> int:
        return sum(max(b.source_rows - b.iceberg_rows, 0) for b in self.differing)

    @property
    def extra_rows(self) -> int:
        return sum(max(b.iceberg_rows - b.source_rows, 0) for b in self.differing)

    @property
    def ratio(self) -> float:
        return len(self.differing) / self.buckets if self.buckets else 0.0


_HASHED = {
    "timestamp": "toUnixTimestamp64Micro(toDateTime64({}, 6, 'UTC'))",
    "date": "toInt32(toDate32({}))",
    "integer": "toInt64({})",
    "boolean": "toUInt8({})",
    "text": "toString({})",
}


def canonical(kind: str, column: str) -> str:
    """The ClickHouse expression a key column of ``kind`` is hashed as, the same on both sides."""
    name = quote(column)
    if kind in _HASHED:
        expr = _HASHED[kind].format(name)
    else:
        raise ConfigError(
            f"check_columns: column {column!r} is {kind} in Iceberg, which the checksum does not take; "
            "use time, date, integer, boolean, float, decimal or string columns"
        )
    return f"ifNull(toString({expr}), ''), isNull({name})"


class Check:
    """Compares one table's cold copy with ClickHouse; repairs the buckets that differ."""

    def __init__(self, job: TableJob) -> None:
        self.job = job
        self.table = job.table
        self.bucket_us = int(job.config.maintenance.check_bucket * 1_000_000)
        self.log = job.log

    def run(self, since: str | None = None, repair: bool = False) -> CheckResult:
        result = CheckResult(self.table.name)
        started = self.job.clock()

        def body() -> None:
            if self.table.corrections == "replacing":  # the daily check skips it; nothing fails
                result.outcome, result.detail = "skipped", unchecked(self.table)
                return
            self._compare(result, since)
            if repair and result.differing:
                self._repair(result)

        wait = self.job.config.maintenance.lock_wait
        outcome = guarded(self.job, body, self.log, wait=wait, crashed="check_crashed", stopped="skipped")
        if not outcome.ok:
            result.outcome, result.detail = outcome.outcome, outcome.detail
            result.error = outcome.error if outcome.outcome == "failed" else None
        self._record(result, started, repair)
        return result

    # -- comparing -----------------------------------------------------------------------

    def _compare(self, result: CheckResult, since: str | None) -> None:
        sink_table = self.job.sink.load(self.table, writable=False)
        marker = sink_table.marker() if sink_table is not None else None
        if sink_table is None or marker is None:
            result.detail = "nothing offloaded yet"
            return
        source = self.job.source()
        source.columns()
        hi = str(marker.cursor[0])
        lo = self._low(source, since)
        if lo is None or micros(lo) > micros(hi):
            result.detail = "ClickHouse holds no complete bucket behind the cursor"
            return
        result.lo, result.hi = lo, hi
        kinds = sink_table.column_kinds()
        keys = list(self.table.key_columns)
        missing = [k for k in keys if k not in kinds]
        if missing:
            raise ConfigError(f"tables.{self.table.name}.check_columns: {', '.join(missing)} not in {self.table.target}")
        time_col = quote(self.table.cursor[0])
        moment = f"toUnixTimestamp64Micro(toDateTime64({time_col}, 6, 'UTC'))"
        bucket = f"intDiv({moment}, {self.bucket_us}) - ({moment} % {self.bucket_us} < 0)"
        hashed = ", ".join(canonical(kinds[k], k) for k in keys)
        select = f"{bucket} AS bucket, count(), sum(cityHash64({hashed}))"
        buckets: dict[int, Bucket] = {}
        for index, rows, checksum in source.bucket_sums(select, lo, hi):
            entry = buckets.setdefault(int(index), Bucket(from_micros(int(index) * self.bucket_us)))
            entry.source_rows, entry.source_sum = int(rows), int(checksum) & MASK
        columns = list(dict.fromkeys([self.table.cursor[0], *keys]))
        pending: list[pa.RecordBatch] = []
        size = 0
        with self.job.arrow_engine() as query:
            for batch in sink_table.scan_batches(columns, self.table.cursor[0], micros(lo), micros(hi)):
                self.job.check_stop("the service is stopping; the check was abandoned")
                pending.append(batch)
                size += batch.num_rows
                if size >= BATCH_ROWS:
                    self._add_iceberg(buckets, select, query, pending)
                    pending, size = [], 0
            if pending:
                self._add_iceberg(buckets, select, query, pending)
        result.buckets = len(buckets)
        result.differing = [buckets[k] for k in sorted(buckets) if buckets[k].differs]
        result.outcome = "differs" if result.differing else "ok"
        result.detail = f"{len(result.differing)} of {len(buckets)} buckets differ between {lo} and {hi}"

    def _add_iceberg(self, buckets: dict[int, Bucket], select: str, query: ArrowQuery, batches: list[pa.RecordBatch]) -> None:
        table = pa.Table.from_batches(batches)
        for index, rows, checksum in query(f"SELECT {select} FROM Python(arrow_input) GROUP BY bucket", table):
            entry = buckets.setdefault(int(index), Bucket(from_micros(int(index) * self.bucket_us)))
            entry.iceberg_rows += int(rows)
            entry.iceberg_sum = (entry.iceberg_sum + int(checksum)) & MASK

    def _low(self, source: Source, since: str | None) -> str | None:
        """The first bucket boundary from which ClickHouse holds every row (and ``since``)."""
        grace = max(self.job.config.maintenance.check_bucket, 3600.0)
        oldest, has_ttl = source.oldest_kept(grace)
        if oldest is None:
            return None
        start = micros(oldest)
        if has_ttl:  # the bucket of the oldest kept row may have lost rows already
            start = -(-start // self.bucket_us) * self.bucket_us
        else:
            start = (start // self.bucket_us) * self.bucket_us
        if since is not None:
            start = max(start, (micros(since) // self.bucket_us) * self.bucket_us)
        return from_micros(start)

    # -- repairing -----------------------------------------------------------------------

    def _repair(self, result: CheckResult) -> None:
        windows = Windows(self.job, uuid.uuid4().hex, self.log)
        hi = result.hi or ""
        for bucket in result.differing:
            self.job.check_stop("the service is stopping; the repair was abandoned between buckets")
            start = micros(bucket.start)
            end = min(start + self.bucket_us - 1, micros(hi))
            # the inclusive end: the last nanosecond before the next bucket, or the cursor itself
            end_text = hi if end == micros(hi) else from_micros(end) + "999"
            windows.replace(bucket.start, end_text, windows.table.carried_marker("repair"))
            result.repaired += 1
            self.log.info(
                "bucket_repaired", bucket=bucket.start, source_rows=bucket.source_rows, iceberg_rows=bucket.iceberg_rows
            )
        result.outcome = "repaired"
        result.detail += f"; repaired {result.repaired} buckets"

    # -- records -------------------------------------------------------------------------

    def _record(self, result: CheckResult, started: float, repair: bool) -> None:
        failed = result.outcome == "failed"
        check = ActionResult(
            self.table.name, "check", outcome="failed" if failed else "skipped" if result.outcome == "skipped" else "ok",
            detail=result.detail, duration=self.job.clock() - started, error=result.error,
        )  # fmt: skip
        healed = result.outcome == "repaired"  # what the cold tier looks like now
        check.extra.update(
            compared=result.outcome not in {"failed", "skipped"}, ratio=0.0 if healed else result.ratio,
            missing_rows=0 if healed else result.missing_rows, extra_rows=0 if healed else result.extra_rows,
        )  # fmt: skip
        check.detail = json.dumps(
            {
                "summary": result.detail, "lo": result.lo, "hi": result.hi, "buckets": result.buckets,
                "differing": [[b.start, b.source_rows, b.iceberg_rows] for b in result.differing[:100]],
                "found": {"missing_rows": result.missing_rows, "extra_rows": result.extra_rows, "ratio": result.ratio},
                # the state of the cold tier after this run (after the repair, if any)
                "missing_rows": check.extra["missing_rows"], "extra_rows": check.extra["extra_rows"],
                "ratio": check.extra["ratio"], "repaired": result.repaired,
            }
        )  # fmt: skip
        finish_action(
            self.job, check, started, self.log, "check_finished", outcome=result.outcome, buckets=result.buckets,
            differing=len(result.differing), missing_rows=result.missing_rows, extra_rows=result.extra_rows,
            repaired=result.repaired, detail=result.detail,
        )  # fmt: skip
        if repair and result.differing:
            fixed = ActionResult(
                self.table.name, "repair", outcome="failed" if failed else "ok", duration=self.job.clock() - started,
                detail=f"repaired {result.repaired} of {len(result.differing)} differing buckets"
                + (f": {result.detail}" if failed else ""),
            )  # fmt: skip
            finish_action(self.job, fixed, started, self.log, "repair_finished", outcome=fixed.outcome, detail=fixed.detail)

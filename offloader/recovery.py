"""Registering tables the catalog has lost: ``offloader catalog recover``.

The catalog database can be lost, or restored from a backup older than the last commits. The
warehouse still holds every table's metadata files; for each table this registers again the
newest one known to have landed (``iceberg/recovery.py`` says how it is known, and when it
refuses), under the table's runner lock so that no commit moves the table meanwhile. The
snapshots that successful runs recorded in the state database, when it survived, count as
landed too. The table's mirror is forgotten, so that the next run takes the cursor from the
marker of the registered file; the recovery is audited.
"""

from __future__ import annotations

from offloader.errors import OffloaderError
from offloader.job import TableJob, finish_action, guarded
from offloader.ports import Recovered
from offloader.results import ActionResult


def landed_snapshots(job: TableJob) -> set[int]:
    """Snapshot ids the state database says were committed: the mirror's and the runs'."""
    try:
        mirror = job.state.mirror(job.table.name)
        runs = job.state.runs(job.table.name, limit=200)
    except OffloaderError:  # a lost state database says nothing, which is fine
        return set()
    ids = {run.snapshot_id for run in runs if run.snapshot_id is not None and run.outcome == "committed"}
    return ids | ({mirror.snapshot_id} if mirror is not None and mirror.snapshot_id is not None else set())


def recover(job: TableJob, *, location: str | None, metadata: str | None, dry_run: bool) -> Recovered:
    """Register ``job``'s table again; raises what stopped it, after auditing it."""
    started = job.clock()
    action = ActionResult(job.table.name, "recover", dry_run=dry_run)
    done: list[Recovered] = []

    def body() -> None:
        found = job.sink.recover(
            job.table, location=location, metadata=metadata, snapshot_ids=landed_snapshots(job), dry_run=dry_run
        )
        if found.action == "registered":
            job.state.delete_mirror(job.table.name)
        done.append(found)

    outcome = guarded(job, body, job.log, wait=job.config.maintenance.lock_wait, crashed="recover_crashed")
    action.duration = job.clock() - started
    if done:
        found = done[0]
        action.snapshot_id = found.snapshot_id
        action.detail = f"{found.action} {found.metadata_location} (cursor {found.cursor})"
        if found.passed_over:
            action.detail += f"; passed over {', '.join(found.passed_over)}"
    else:
        action.outcome, action.error, action.detail = "failed", outcome.error, outcome.detail
    if done and done[0].action == "current":
        action.outcome = "nothing_to_do"
    finish_action(job, action, started, job.log, "recover_finished", outcome=action.outcome, detail=action.detail)
    if outcome.error is not None:
        raise outcome.error
    return done[0]

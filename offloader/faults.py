"""Named points of an offload cycle where a test can kill the process for real.

``OFFLOADER_KILL_AT=<point>`` makes the process SIGKILL itself when it reaches that point
(optionally ``<point>:<n>`` for the n-th time). The points are the moments at which a crash
is most interesting for exactly-once: after the window was read, after its files were
written, after the catalog took the commit but before its landed record was written
(``iceberg/recovery.py``), after the Iceberg commit, after the state mirror was updated; and, for
``offloader rollback``, after its commit and before the mirror records the snapshot and the
federated view follows it (``after_rollback``). Unset, a checkpoint costs two dictionary lookups.

``OFFLOADER_SLOW_AT=<point>:<seconds>`` makes the process sleep that long each time it reaches
that point, so that a test can signal a run while windows are certainly still left, or the
service while it is still ``starting`` (set up, its stop handler not yet installed).

``OFFLOADER_LOSE_COMMIT_REPLY=before|after`` makes the commit's reply go missing, as when the
catalog connection dies mid-commit: ``before`` the commit is sent (it never lands), or ``after``
it landed. Either way the offload must settle the outcome from the snapshot history.

``OFFLOADER_FAULT=internal_error:<point>[:<n>]`` raises a plain RuntimeError, as a bug would,
at one of ``FAIL_POINTS`` (the n-th time it is reached): points where a secret is a local
variable of the raising frame, so that a test can show no traceback in the logs carries it.

- ``source_connect``: the HTTP engine's connection arguments hold the ClickHouse password
  (reached when a table run first needs the source);
- ``state_connect``: the state store's connection URL holds the PostgreSQL password
  (reached when the process starts);
- ``catalog_connect``: the Iceberg catalog's properties hold the catalog password, the S3
  secret key and the REST credential, revealed (reached when the process starts, before the
  catalog is connected to).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

POINTS = ("after_read", "after_write", "before_landed_record", "after_commit", "after_state")  # the points of an offload cycle
ROLLBACK_POINT = "after_rollback"
ENV = "OFFLOADER_KILL_AT"
SLOW_ENV = "OFFLOADER_SLOW_AT"
LOSE_REPLY_ENV = "OFFLOADER_LOSE_COMMIT_REPLY"
FAULT_ENV = "OFFLOADER_FAULT"
FAIL_POINTS = ("source_connect", "state_connect", "catalog_connect")
_seen: Counter[str] = Counter()


def checkpoint(point: str) -> None:
    """SIGKILL this process if the environment asks for a crash at ``point`` (or sleep, if for a slow point)."""
    slow, _, seconds = os.environ.get(SLOW_ENV, "").partition(":")
    if slow == point:
        time.sleep(float(seconds or 1))
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    _seen[point] += 1
    if _seen[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def reply_lost(moment: str) -> bool:
    """Whether the environment asks for the commit's reply to be lost at ``moment`` (before/after)."""
    return os.environ.get(LOSE_REPLY_ENV) == moment


def fail(point: str) -> None:
    """Raise a RuntimeError (an internal error) if the environment asks for one at ``point``."""
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    kind, _, rest = wanted.partition(":")
    name, _, nth = rest.partition(":")
    if kind != "internal_error" or name != point:
        return
    _seen[f"internal_error:{point}"] += 1
    if _seen[f"internal_error:{point}"] >= int(nth or 1):
        raise RuntimeError(f"internal error injected at {point} ({FAULT_ENV})")

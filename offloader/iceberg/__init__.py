"""The Iceberg adapter: the catalog, the tables offloader owns, their files and commits.

The only package that imports PyIceberg; its modules are ``catalog``, ``table``, ``write``,
``files``, ``evolution``, ``failures``, ``mapping`` (the ClickHouse to Iceberg types) and
``internals`` (every call into PyIceberg's private API, each pinned by a test).

Everything PyIceberg lives here. A :class:`SinkTable` is one destination table: created on
first use from config (format version 2, zstd level 3, PyIceberg's blind commit retry off),
its progress marker read from the snapshot history, its schema evolved inside the same
transaction as the first rows that need it, and its data files written first and committed
together as ONE snapshot whose summary carries the marker (cursor, run id, commit id,
source row count).

Library errors are translated once, here: :class:`AuthenticationError` when the catalog or
the object storage refused offloader's credentials (REST 401/403 and OAuth errors, S3
AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch; never retried), else
:class:`CatalogError`. At commit: :class:`CommitConflictError` when another writer got there
first (nothing of ours landed), :class:`AuthenticationError` when the commit was refused
(nothing landed either), :class:`CommitUnknownError` for any other failure, whose outcome
cannot be known from the reply (a 5xx, a reset: settle it with :meth:`SinkTable.find_commit`,
never by retrying).
"""

from __future__ import annotations

from offloader.iceberg.catalog import Sink
from offloader.iceberg.evolution import plan_evolution
from offloader.iceberg.table import SinkTable
from offloader.iceberg.write import WindowWrite

__all__ = ["Sink", "SinkTable", "WindowWrite", "plan_evolution"]

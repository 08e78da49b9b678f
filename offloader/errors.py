"""The one exception tree of offloader.

Every adapter catches its library's errors once and re-raises one of these ``from exc``.
``retryable`` tells the scheduler whether trying the same table again later can help.

    OffloaderError
    ├── ConfigError                  bad configuration; one line per problem
    ├── SourceError                  ClickHouse failed or is unreachable (retryable)
    │   └── ReplicaLagError          the source replica lags more than source.max_replica_delay (retryable)
    ├── SchemaError                  a source schema offloader cannot map or evolve
    │   └── UnsupportedTypeError     a ClickHouse type with no faithful Iceberg type
    ├── DataError                    a value that cannot be stored without changing it
    │   └── ValueOutOfRangeError     e.g. a UInt64 above the signed maximum
    ├── WindowMismatchError          rows written differ from count() of the window
    ├── CatalogError                 the Iceberg catalog or its storage failed (retryable)
    │   ├── CommitConflictError      another writer committed first: reload, then decide
    │   └── CommitUnknownError       the commit outcome is unknown: reconcile, never retry blindly
    ├── StateError                   offloader's own state store failed (retryable)
    │   └── MirrorAheadError         the state mirror is ahead of Iceberg: stop the table
    ├── AuthenticationError          a server refused offloader's credentials (never retried)
    ├── LockBusyError                another runner holds this table
    ├── WorkerError                  a backfill worker failed, or was lost too often (retryable)
    ├── ShutdownRequested            the service is stopping; work abandoned before its commit
    └── InternalError                a bug: an unexpected exception, caught so one table cannot stop others
"""

from __future__ import annotations

# The exit codes of the command line: done, failed (the messages say why), a usage error, a bug.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70


def first_line(exc: BaseException) -> str:
    """The first line of a library error's text (bounded), for one-line messages."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


_NETWORK = (
    ("connection refused", "connection refused"),
    ("name or service not known", "host not found"),
    ("temporary failure in name resolution", "host not found"),
    ("nodename nor servname", "host not found"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("connection reset", "connection reset"),
    ("remotedisconnected", "connection closed by the server"),
    ("connection aborted", "connection reset"),
    ("timed out", "timed out"),
)


def network_reason(exc: BaseException) -> str | None:
    """What went wrong on the network, in a few words ("connection refused"), from a library
    error and its causes; None when the failure is not a network one."""
    seen: BaseException | None = exc
    texts: list[str] = []
    while seen is not None and len(texts) < 10:
        texts.append(f"{type(seen).__name__} {seen}".lower())
        seen = seen.__cause__ or seen.__context__
    text = " ".join(texts)
    return next((reason for pattern, reason in _NETWORK if pattern in text), None)


class OffloaderError(Exception):
    """Base of every error offloader raises on purpose."""

    retryable: bool = False

    @property
    def kind(self) -> str:
        """A stable, label-friendly name of the error class (used in metrics and run history)."""
        name = type(self).__name__
        return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class ConfigError(OffloaderError):
    """The configuration is invalid. ``problems`` holds one line per problem."""

    header = "invalid configuration"

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(f"{self.header}:\n" + "\n".join(f"  - {p}" for p in self.problems))


class UsageError(ConfigError):
    """A command-line argument is wrong (exit code 2, like a bad config)."""

    header = "invalid argument"


class SourceError(OffloaderError):
    """ClickHouse failed to answer a query, or cannot be reached."""

    retryable = True


class ReplicaLagError(SourceError):
    """The source replica lags more than ``max_replica_delay``: the table does not move until it catches up."""


class SchemaError(OffloaderError):
    """The source schema cannot be mapped to, or evolved into, the Iceberg schema."""


class UnsupportedTypeError(SchemaError):
    """A ClickHouse type has no faithful Iceberg type under the current options."""


class DataError(OffloaderError):
    """A source value cannot be written without silently changing it."""


class ValueOutOfRangeError(DataError):
    """A value does not fit the Iceberg type its column maps to."""


class WindowMismatchError(OffloaderError):
    """The rows written for a window differ from count() of the same window in ClickHouse."""

    retryable = True


class CatalogError(OffloaderError):
    """The Iceberg catalog or its file storage failed."""

    retryable = True


class CommitConflictError(CatalogError):
    """Another writer committed to the table first; reload and re-read the cursor."""


class CommitUnknownError(CatalogError):
    """The commit may or may not have landed; settle it from the snapshot history."""


class RecoveryError(CatalogError):
    """The warehouse does not say which metadata file is the table: recovery names the candidates."""

    retryable = False


class StateError(OffloaderError):
    """offloader's own state store (watermark mirror, run history) failed."""

    retryable = True


class MirrorAheadError(StateError):
    """The state mirror claims more than Iceberg holds; running on would lose rows."""

    retryable = False


class AuthenticationError(OffloaderError):
    """A server (ClickHouse, the catalog, object storage) refused the credentials offloader sent.

    Trying again with the same credentials cannot help, so it is never retried; the message
    starts with "authentication failed" and names the server.
    """


class LockBusyError(OffloaderError):
    """Another runner holds the lock of this table."""


class WorkerError(OffloaderError):
    """A backfill worker failed on its slice, or its process was lost more often than allowed."""

    retryable = True


class ShutdownRequested(OffloaderError):
    """The service is stopping; the table's work was abandoned before its commit."""


class InternalError(OffloaderError):
    """An unexpected exception inside offloader (a bug), reported per table."""

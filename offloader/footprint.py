"""The long-running process's memory footprint: what it never loads, and what it hands back.

- **Left out.** pandas is in the environment only for the embedded engine (chDB needs it).
  PyArrow's dataset module imports it when it is installed, whether or not it is used, and
  that costs an idle service about 40 MiB. A service whose source is a remote ClickHouse
  never touches pandas, so :func:`leave_out_pandas` makes it unimportable before anything
  loads PyArrow; PyArrow and clickhouse-connect treat pandas as optional and carry on.
- **Handed back.** :func:`give_back_memory` returns what a cycle's Arrow buffers and the
  C heap freed to the system, so the idle process stays as small as its code.
- **Measured.** :func:`peak_rss` is the process's own high-water mark (a backfill worker
  reports it with each slice).
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from typing import Any

LEFT_OUT = ("pandas",)


class _LeaveOut(importlib.abc.MetaPathFinder):
    """Makes ``import pandas`` (and its submodules) fail as if it were not installed."""

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: Any = None) -> None:
        if name.split(".", 1)[0] in LEFT_OUT:
            raise ModuleNotFoundError(f"{name} is left out of this process (the source is remote)", name=name)
        return None


def leave_out_pandas() -> bool:
    """Keep pandas out of this process from now on; False if something had already loaded it."""
    if any(name in sys.modules for name in LEFT_OUT):
        return False
    if not any(isinstance(finder, _LeaveOut) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LeaveOut())
    return True


def give_back_memory() -> None:
    """Return the memory a cycle's Arrow buffers used to the system, so an idle service stays small."""
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    try:  # glibc keeps freed heap in its arenas; hand it back (Linux only, harmless elsewhere)
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss() -> int:
    """The peak resident set of this process in bytes (VmHWM; 0 where /proc is not there)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0

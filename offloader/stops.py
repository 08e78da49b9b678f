"""How a process stops: SIGTERM and SIGINT from its first moment until a command takes them
over, and a child process's end when its parent dies.

The service and the writing commands install their own handlers only after their imports and
set-up, a second or more. A stop sent in that window, say by an orchestrator that starts a
replica and stops it at once, would otherwise end the process by the signal's default action
(exit -15), unlogged. The entry point calls :func:`hold` before anything else: a signal that
arrives then is kept. :func:`take_over` installs a command's handler and hands it what was
kept; :func:`release` gives the other commands the default behaviour back and delivers what
was kept to it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

Handler = Callable[[int, Any], None]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_held: list[int] = []


def _keep(signum: int, _frame: Any) -> None:
    _held.append(signum)


def hold() -> None:
    """Keep SIGTERM and SIGINT until a command takes them over or releases them."""
    for sig in _SIGNALS:
        signal.signal(sig, _keep)


def _kept() -> list[int]:
    """The signals kept so far, forgotten here (the caller delivers them)."""
    kept, _held[:] = list(_held), []
    return kept


def take_over(handler: Handler) -> None:
    """Install ``handler`` for SIGTERM and SIGINT, then call it with each signal kept so far."""
    for sig in _SIGNALS:
        signal.signal(sig, handler)
    for signum in _kept():
        handler(signum, None)


def release() -> None:
    """Back to Python's defaults (SIGTERM ends the process, SIGINT raises KeyboardInterrupt); a kept signal acts now.
    Without :func:`hold` (``main`` called in-process), the handlers are left as they are."""
    if signal.getsignal(signal.SIGTERM) is not _keep:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in _kept():
        signal.raise_signal(signum)


def die_with_parent(parent: int) -> None:
    """In a child process: exit when ``parent`` dies. A SIGKILLed parent must not leave its children
    behind, waiting on its pipes forever and holding them open."""
    try:  # Linux: the kernel sends SIGKILL when the parent goes
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere, and if the parent went before prctl: poll for it
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="offloader-parent-watch", daemon=True).start()

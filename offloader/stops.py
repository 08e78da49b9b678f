"""Stop requests (SIGTERM, SIGINT) from the process's first moment until a command takes them over.

The service and the writing commands install their own handlers only after their imports and
set-up, a second or more. A stop sent in that window, say by an orchestrator that starts a
replica and stops it at once, would otherwise end the process by the signal's default action
(exit -15), unlogged. The entry point calls :func:`hold` before anything else: a signal that
arrives then is kept. :func:`take_over` installs a command's handler and hands it what was
kept; :func:`release` gives the other commands the default behaviour back and delivers what
was kept to it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

Handler = Callable[[int, Any], None]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_held: list[int] = []
_holding = False


def _keep(signum: int, _frame: Any) -> None:
    _held.append(signum)


def hold() -> None:
    """Keep SIGTERM and SIGINT until a command takes them over or releases them."""
    global _holding
    _holding = True
    for sig in _SIGNALS:
        signal.signal(sig, _keep)


def take_over(handler: Handler) -> None:
    """Install ``handler`` for SIGTERM and SIGINT, then call it with each signal kept so far."""
    global _holding
    for sig in _SIGNALS:
        signal.signal(sig, handler)
    _holding = False
    kept, _held[:] = list(_held), []
    for signum in kept:
        handler(signum, None)


def release() -> None:
    """Back to Python's defaults (SIGTERM ends the process, SIGINT raises KeyboardInterrupt); a kept signal acts now."""
    global _holding
    if not _holding:
        return
    _holding = False
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    kept, _held[:] = list(_held), []
    for signum in kept:
        signal.raise_signal(signum)

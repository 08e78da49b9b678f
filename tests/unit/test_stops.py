"""Stops held from the process's first moment: kept, handed to the command that takes them over, or delivered on release."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from offloader import stops


@pytest.fixture(autouse=True)
def _restore_handlers() -> Iterator[None]:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    stops.release()
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_a_stop_held_before_the_command_is_handed_to_its_handler() -> None:
    """A SIGTERM while held does not end the process; take_over calls the handler with it, and later ones go straight to it."""
    stops.hold()
    signal.raise_signal(signal.SIGTERM)  # by default this would end the test process
    got: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        got.append(signum)

    stops.take_over(handler)
    assert got == [signal.SIGTERM]
    signal.raise_signal(signal.SIGINT)
    assert got == [signal.SIGTERM, signal.SIGINT]


def test_release_gives_the_default_back_and_delivers_what_was_held() -> None:
    """A SIGINT held for a command that does not take stops over raises KeyboardInterrupt on release, as Python's default does."""
    stops.hold()
    signal.raise_signal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        stops.release()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_release_without_hold_leaves_the_handlers_alone() -> None:
    """Called in-process (no entry point held anything), release changes nothing."""
    mine = lambda signum, frame: None  # noqa: E731
    signal.signal(signal.SIGTERM, mine)
    stops.release()
    assert signal.getsignal(signal.SIGTERM) is mine


def test_a_child_dies_with_its_parent_even_while_busy() -> None:
    """A child that called die_with_parent and is busy (not reading its pipe, as in a long query)
    is gone within seconds of its parent's SIGKILL; it would otherwise sleep for ten minutes."""
    import os
    import subprocess
    import sys
    import time

    child = "from offloader import stops; import os, time; stops.die_with_parent(os.getppid()); print('ready', flush=True); time.sleep(600)"
    parent = (
        "import subprocess, sys; "
        f"c = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True); "
        "print(c.pid, flush=True); print(c.stdout.readline().strip(), flush=True); c.wait()"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child_pid = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        if open(f"/proc/{child_pid}/stat").read().split(") ")[1].startswith("Z"):
            return  # dead, awaiting its reaper
        time.sleep(0.05)
    os.kill(child_pid, signal.SIGKILL)
    raise AssertionError("the child outlived its parent by 10 s")

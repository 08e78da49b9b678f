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

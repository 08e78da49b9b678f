"""Where a backfill's slices are written: in this process, in local worker processes, or on Ray.

The backfill driver hands each slice to a :class:`Workers` pool as a task (a picklable
function and its arguments) under an integer key, and collects ``(key, outcome)`` pairs, the
outcome being the task's return value or the :class:`OffloaderError` it ended with. A lost
worker is the pool's business: its slice is taken again, up to ``attempts`` times in all,
after which the outcome is a :class:`WorkerError` naming the slice.

- :class:`InProcess` runs each task when it is submitted (one worker; the embedded engine,
  whose data directory opens in one process only);
- :class:`Processes` runs them in ``n`` local processes (``spawn``: a clean interpreter each,
  no forked threads or engine handles). A killed process breaks the whole executor: it is
  built again and every task in flight is submitted again;
- :class:`RayTasks` runs them as Ray tasks (``offloader[ray]``), on the cluster at
  ``address`` or on a local instance (``local``); Ray itself takes the task of a dead worker
  again (``max_retries``).

This module is the only one that imports ``concurrent.futures`` process pools and ``ray``.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from offloader import stops
from offloader.errors import ConfigError, OffloaderError, WorkerError, first_line

ATTEMPTS = 3  # tries of one slice when its worker is lost


def _failure(key: int, exc: BaseException) -> OffloaderError:
    """What a task raised, as the backfill reports it."""
    if isinstance(exc, OffloaderError):
        return exc
    return WorkerError(f"slice {key}: its worker failed: {type(exc).__name__}: {first_line(exc)}")


class InProcess:
    """One worker: this process, each task run as it is submitted."""

    size = 1

    def __init__(self) -> None:
        self._done: list[tuple[int, Any]] = []

    def submit(self, key: int, task: Callable[..., Any], *args: Any) -> None:
        try:
            self._done.append((key, task(*args)))
        except OffloaderError as exc:
            self._done.append((key, exc))

    def next_done(self, timeout: float) -> list[tuple[int, Any]]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        self._done = []


class Processes:
    """``n`` local worker processes; a lost one is replaced and its slice taken again."""

    def __init__(self, n: int, attempts: int = ATTEMPTS) -> None:
        self.size = n
        self.attempts = attempts
        self._executor = self._new()
        self._running: dict[Future[Any], tuple[int, Callable[..., Any], tuple[Any, ...]]] = {}
        self._tries: dict[int, int] = {}
        self._settled: list[tuple[int, Any]] = []  # outcomes found while submitting, for the next look

    def _new(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.size, mp_context=context, initializer=stops.die_with_parent, initargs=(os.getpid(),))

    def submit(self, key: int, task: Callable[..., Any], *args: Any) -> None:
        self._tries[key] = self._tries.get(key, 0) + 1
        try:
            future = self._executor.submit(task, *args)
        except BrokenProcessPool:  # a worker died since the last look: rebuild, then submit to the new pool
            self._settled += self._rebuild()
            future = self._executor.submit(task, *args)
        self._running[future] = (key, task, args)

    def next_done(self, timeout: float) -> list[tuple[int, Any]]:
        out, self._settled = self._settled, []
        if not self._running:
            return out
        finished, _ = wait(list(self._running), timeout=0 if out else timeout, return_when=FIRST_COMPLETED)
        broken = False
        for future in finished:
            key, task, args = self._running[future]
            try:
                value = future.result()
            except (BrokenProcessPool, CancelledError):  # its worker died: the task is taken again
                broken = True
                continue
            except BaseException as exc:  # noqa: BLE001 - the task's own failure is its slice's outcome
                value = _failure(key, exc)
            del self._running[future]
            out.append((key, value))
        if broken:
            out += self._rebuild()
        return out

    def _rebuild(self) -> list[tuple[int, Any]]:
        """A worker process died: a new executor, and every task in flight submitted again."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new()
        again, self._running = list(self._running.values()), {}
        out: list[tuple[int, Any]] = []
        for key, task, args in again:
            if self._tries[key] >= self.attempts:
                out.append((key, WorkerError(f"slice {key}: its worker process was lost {self._tries[key]} times")))
            else:
                self.submit(key, task, *args)
        logging.getLogger("offloader").debug("worker processes rebuilt; %d tasks taken again", len(again))
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._running.clear()


class RayTasks:
    """Ray tasks on the cluster at ``address`` (``local``: a local instance of ``n`` CPUs)."""

    def __init__(self, address: str, n: int, attempts: int = ATTEMPTS) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--ray needs Ray installed beside offloader: pip install 'offloader[ray]'") from None
        self._ray = ray
        self.size = n
        self.attempts = attempts
        local = address == "local"
        try:
            ray.init(
                address=None if local else address, num_cpus=n if local else None, include_dashboard=False,
                log_to_driver=False, logging_level=logging.WARNING, ignore_reinit_error=True,
            )  # fmt: skip
        except Exception as exc:
            raise WorkerError(f"cannot join the Ray cluster at {address!r}: {first_line(exc)}") from exc
        self._remote: dict[Callable[..., Any], Any] = {}
        self._running: dict[Any, int] = {}

    def submit(self, key: int, task: Callable[..., Any], *args: Any) -> None:
        function = task
        if isinstance(task, functools.partial):  # Ray takes functions: the bound arguments go with each call
            function, args = task.func, (*task.args, *args)
        if function not in self._remote:
            self._remote[function] = self._ray.remote(num_cpus=1, max_retries=self.attempts - 1)(function)
        self._running[self._remote[function].remote(*args)] = key

    def next_done(self, timeout: float) -> list[tuple[int, Any]]:
        if not self._running:
            return []
        finished, _ = self._ray.wait(list(self._running), num_returns=1, timeout=timeout)
        out: list[tuple[int, Any]] = []
        for ref in finished:
            key = self._running.pop(ref)
            try:
                out.append((key, self._ray.get(ref)))
            except self._ray.exceptions.RayTaskError as exc:
                out.append((key, _failure(key, exc.cause if exc.cause is not None else exc)))
            except Exception as exc:  # the worker died more often than max_retries allows
                out.append((key, WorkerError(f"slice {key}: its Ray worker was lost: {first_line(exc)}")))
        return out

    def close(self) -> None:
        for ref in self._running:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: S112 - cancelling is best effort
                continue
        self._running.clear()
        self._ray.shutdown()

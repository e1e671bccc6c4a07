"""Pure work spread over spawned processes, results in order: the one way flywheel steps use cores.

``ordered_map(function, items, workers)`` is ``map(function, items)``; with ``workers`` > 1 it runs
in a pool of that many spawned processes (never forked: the caller may hold threads and database
connections), with at most two items per worker in flight, so memory stays bounded whatever the
length of ``items``. ``function`` must be picklable (a module-level function, or a
``functools.partial`` of one) and pure: the same item gives the same result in any process.

``WORKERS_FROM`` is the size from which a step uses the pool: below it, starting the processes
(each imports the flywheel and loads what it needs) costs more than it saves.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.pool import AsyncResult
from typing import TypeVar

__all__ = ["WORKERS_FROM", "default_workers", "ordered_map", "workers_for"]

T = TypeVar("T")
R = TypeVar("R")

WORKERS_FROM = 100_000
"""Items (entries) from which ``workers_for`` allows more than one process."""


def default_workers() -> int:
    """One process per CPU."""
    return os.cpu_count() or 1


def workers_for(size: int, workers: int) -> int:
    """``workers`` for a step over ``size`` items, or 1 when the step is too small to gain from it."""
    return workers if size >= WORKERS_FROM else 1


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``function`` of each item, in the order of ``items``: here when ``workers`` <= 1, else in a
    pool of ``workers`` spawned processes. ``items`` is consumed as results are taken."""
    if workers <= 1:
        yield from map(function, items)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending: deque[AsyncResult[R]] = deque()
        for item in items:
            pending.append(pool.apply_async(function, (item,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

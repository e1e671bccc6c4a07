"""Counters and rate-limited logging for everything that goes wrong inside recording.

Invariant: nothing in here raises. Recording failures never reach the app; they are counted here
(``sdk.stats()`` shows the counters) and logged through the ``flywheel.sdk`` logger at most once per
``LOG_INTERVAL_S`` per kind of problem, so a store outage does not flood the app's logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter

__all__ = ["count", "log_problem", "logger", "report_error", "snapshot", "warn_once"]

logger = logging.getLogger("flywheel.sdk")

LOG_INTERVAL_S = 60.0

_counters: Counter[str] = Counter()
_last_logged: dict[str, float] = {}
_warned: set[str] = set()
_lock = threading.Lock()


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the counter ``name``."""
    with _lock:
        _counters[name] += n


def snapshot() -> dict[str, int]:
    """A copy of all counters."""
    with _lock:
        return dict(_counters)


def log_problem(kind: str, message: str, *args: object, exc_info: bool = False) -> None:
    """Log a warning for ``kind`` unless one was logged less than ``LOG_INTERVAL_S`` ago."""
    try:
        now = time.monotonic()
        with _lock:
            last = _last_logged.get(kind)
            if last is not None and now - last < LOG_INTERVAL_S:
                _counters["log_suppressed"] += 1
                return
            _last_logged[kind] = now
        logger.warning(message, *args, exc_info=exc_info)
    except Exception:  # logging itself failed (closed stream at exit, ...): nothing more to do
        pass


def report_error(where: str, exc: BaseException) -> None:
    """Count and (rate-limited) log an unexpected exception caught inside recording."""
    count("errors")
    count(f"errors.{where}")
    log_problem(
        f"error:{where}:{type(exc).__name__}",
        "flywheel: recording failed in %s (%s: %s); the app's call is unaffected",
        where,
        type(exc).__name__,
        exc,
        exc_info=True,
    )


def warn_once(key: str, message: str, *args: object) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    with contextlib.suppress(Exception):
        logger.warning(message, *args)


def _after_fork_in_child() -> None:
    # The lock may have been held by another thread at fork time; that thread does not exist here.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reset_for_tests() -> None:
    with _lock:
        _counters.clear()
        _last_logged.clear()
        _warned.clear()

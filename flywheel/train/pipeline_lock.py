"""One watcher at a time per pipeline: a lock held while a pass works on it, taken without waiting.

Two watchers on one store (a cron pass that overlaps the next, a watcher on each of two hosts)
would otherwise both update the dataset and run its steps at once, and one of them would fail
on the other's new rows. The lock makes the second one skip the pipeline for this pass instead.
It is *not* what prevents a double launch: the claim row is (``jobs.claim_job``), and it holds
even where this lock cannot (a store reached through a pooler that drops session locks).

- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection kept open for the
  pipeline's work; the server releases it when that connection ends, crash included.
- SQLite: an exclusive ``flock`` on a file beside the database; the kernel releases it when the
  process ends. (A SQLite store is on one host, so a file lock sees every watcher.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from sdk._store import create_store_engine, sqlite_file

__all__ = ["pipeline_lock"]


def _lock_id(pipeline: str) -> int:
    """A signed 64-bit key for ``pg_try_advisory_lock``, stable across processes and hosts."""
    digest = hashlib.blake2b(f"flywheel.pipeline:{pipeline}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextlib.contextmanager
def pipeline_lock(database_url: str, pipeline: str) -> Iterator[bool]:
    """Hold the pipeline's lock for the block; yields False (without waiting) when another
    watcher holds it."""
    path = sqlite_file(sa.make_url(database_url))
    if path is not None:
        with _file_lock(path.with_name(f"{path.name}.{pipeline}.lock")) as held:
            yield held
        return
    engine = create_store_engine(database_url)
    try:
        with engine.connect() as conn:
            key = _lock_id(pipeline)
            held = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar())
            conn.commit()
            try:
                yield held
            finally:
                if held:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)

"""Rows waiting for the store: append-only JSON-lines files on local disk.

When the store cannot take a batch (down, not migrated, disk full, locked too long), the
background writer appends the batch's rows here, and replays them, oldest file first, once the
store is back. A row is exactly what ``build_record`` produced (after redaction): one JSON object
per line, datetimes as ISO 8601 strings. Headers never reach a record, so they never reach a spool.

Layout, for the store at URL ``u`` (``key`` = first 16 hex digits of sha256(``u``); the URL itself
never appears on disk, it may hold a password)::

    <spool dir>/                                    mode 0700
        <key>-<time_ns>-<pid>-<n>.jsonl             mode 0600, one per process and rotation
        <key>.rejected                              rows the store refused (see ``reject``)

Invariants:
- A file is ``flock``-ed exclusively by the process appending to it, for as long as it may still
  append, and by the process replaying it. So two live processes never replay the same file, and
  nobody replays a file still being written. A dead process's locks are gone: any process with
  the same store replays its files.
- A file is deleted only after all of its rows are committed to the store. Replaying a file twice
  (a crash between the commit and the delete) is harmless: inserts skip ids already stored.
- A damaged line (the truncated last line of a process killed mid-write) is skipped with a
  warning; it never stops the rest of the file from being replayed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import DateTime

from sdk import _health
from sdk.schema import calls

__all__ = ["Spool", "SpoolFile", "decode_row", "encode_row", "spool_key"]

Row = dict[str, Any]

DEFAULT_FILE_ROWS = 2000
DEFAULT_FILE_BYTES = 16 * 1024 * 1024

# Columns whose values are datetimes: written as ISO strings, turned back into datetimes on read.
_DATETIME_KEYS = tuple(column.name for column in calls.columns if isinstance(column.type, DateTime))

# File numbers are per process, shared by all spools, so that two Spool objects for one store (the
# writer's and the one used at exit) never pick the same file name.
_file_numbers = itertools.count()


def spool_key(database_url: str) -> str:
    """The store's name on disk: a hash of its URL, never the URL (which may hold a password)."""
    return hashlib.sha256(database_url.encode()).hexdigest()[:16]


def _json_default(value: Any) -> Any:
    # Values orjson does not know (Decimal, UUID subclasses, ...) keep their text form.
    return str(value)


def encode_row(row: Mapping[str, Any]) -> bytes:
    """One spool line (with its newline)."""
    return orjson.dumps(row, default=_json_default, option=orjson.OPT_APPEND_NEWLINE)


def decode_row(line: bytes) -> Row:
    """The row written by ``encode_row``; raises ``ValueError`` for a damaged line."""
    row = orjson.loads(line)
    if not isinstance(row, dict):
        raise ValueError(f"a spool line must hold a JSON object, not {type(row).__name__}")
    for key in _DATETIME_KEYS:
        value = row.get(key)
        if isinstance(value, str):
            row[key] = datetime.fromisoformat(value)
    return row


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class SpoolFile:
    """A spool file claimed (locked) for replay; ``done()`` deletes it, ``release()`` keeps it."""

    def __init__(self, path: Path, fd: int, claimed: set[int]) -> None:
        self.path = path
        self._fd: int | None = fd
        self._claimed = claimed
        claimed.add(fd)

    def read_rows(self) -> list[Row]:
        """The file's rows in order; damaged lines are skipped, counted and logged."""
        with open(self.path, "rb") as handle:
            data = handle.read()
        lines = data.split(b"\n")
        # A complete file ends with a newline: the last piece is empty. Anything else is the
        # remainder of a write cut short, which is still usable if it happens to be whole JSON.
        rows: list[Row] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(decode_row(line))
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                last = number == len(lines)
                _health.count("spool_bad_lines")
                _health.log_problem(
                    f"spool-bad-line:{self.path.name}",
                    "flywheel: skipping %s line %d of spool file %s (%s)",
                    "truncated last" if last else "damaged",
                    number,
                    self.path,
                    exc,
                )
        return rows

    def done(self) -> None:
        """All rows are in the store: delete the file, then let go of it."""
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self.release()

    def release(self) -> None:
        """Keep the file for a later replay and unlock it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self._claimed.discard(fd)
            os.close(fd)  # closing the only descriptor drops the flock


class Spool:
    """The spool of one store in one directory. Methods raise ``OSError`` when the disk fails them.

    ``append`` is safe to call from several threads; replaying (``claim_pending``) is the job of
    one thread at a time.
    """

    def __init__(
        self,
        directory: Path,
        database_url: str,
        *,
        max_file_rows: int = DEFAULT_FILE_ROWS,
        max_file_bytes: int = DEFAULT_FILE_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.key = spool_key(database_url)
        self.max_file_rows = max_file_rows
        self.max_file_bytes = max_file_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._claimed: set[int] = set()  # descriptors of files being replayed (see after_fork_in_child)
        self._file_rows = 0
        self._file_bytes = 0

    @property
    def rejected_path(self) -> Path:
        return self.directory / f"{self.key}.rejected"

    def _ensure_directory(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _open_new_file(self) -> int:
        """A new file, created 0600, locked, and only then given a name that replay looks for."""
        self._ensure_directory()
        name = f"{self.key}-{time.time_ns():020d}-{os.getpid()}-{next(_file_numbers)}.jsonl"
        path = self.directory / name
        staging = self.directory / f".{name}.new"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(staging, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(staging, path)
        except BaseException:
            os.close(fd)
            staging.unlink(missing_ok=True)
            raise
        return fd

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write ``rows`` durably (fsync) to this process's current file; rotates full files."""
        if not rows:
            return
        lines = [encode_row(row) for row in rows]
        with self._lock:
            start = 0
            while start < len(lines):
                if self._fd is None:
                    self._fd = self._open_new_file()
                    self._file_rows = self._file_bytes = 0
                room = max(1, self.max_file_rows - self._file_rows)
                part = lines[start : start + room]
                data = b"".join(part)
                _write_all(self._fd, data)
                os.fsync(self._fd)
                self._file_rows += len(part)
                self._file_bytes += len(data)
                start += len(part)
                if self._file_rows >= self.max_file_rows or self._file_bytes >= self.max_file_bytes:
                    self._close_current()

    def _close_current(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def rotate(self) -> None:
        """Close the current file so that it can be replayed."""
        with self._lock:
            self._close_current()

    def pending_files(self) -> list[Path]:
        """This store's spool files, oldest first (including ones other processes hold)."""
        try:
            names = [
                entry.name
                for entry in os.scandir(self.directory)
                if entry.name.startswith(self.key + "-") and entry.name.endswith(".jsonl")
            ]
        except FileNotFoundError:
            return []
        return [self.directory / name for name in sorted(names)]

    def claim_pending(self) -> Generator[SpoolFile, None, None]:
        """Lock and yield this store's files, oldest first, skipping those another process holds.

        Our own current file is closed first so that it is replayed too. The caller must ``done()``
        or ``release()`` each file before asking for the next one.
        """
        self.rotate()
        for path in self.pending_files():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # replayed and deleted by another process meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # being written or replayed by a live process
                os.close(fd)
                continue
            if os.fstat(fd).st_nlink == 0:  # deleted between our listing and our lock
                os.close(fd)
                continue
            yield SpoolFile(path, fd, self._claimed)

    def reject(self, row: Mapping[str, Any], reason: str) -> None:
        """Keep a row the store refused in ``<key>.rejected``, out of the replay path."""
        self._ensure_directory()
        entry = {"rejected_at": datetime.now().astimezone().isoformat(), "error": reason[:2000], "row": row}
        data = orjson.dumps(entry, default=_json_default, option=orjson.OPT_APPEND_NEWLINE)
        fd = os.open(self.rejected_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # whole lines, even with several processes rejecting
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def after_fork_in_child(self) -> None:
        """Let go of the parent's files without unlocking them: the parent still writes or replays them.

        close() only drops this process's descriptor and the flock lives on in the parent's copy
        (flock(LOCK_UN) here would unlock the parent's file too). Without it, the lock would also
        outlive the parent's own close for as long as this child runs.
        """
        self._lock = threading.Lock()
        inherited = [fd for fd in (self._fd, *self._claimed) if fd is not None]
        self._fd = None
        self._claimed = set()
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)

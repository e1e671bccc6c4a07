"""The background writer: exchanges handed over on the app's thread become rows in the store.

::

    app thread:     Recorder.submit(ex) ──> deque (bounded: records + body bytes; overflow is dropped)
    writer thread:  every flush_interval ──> build_record ──> hand-off (one built batch at most)
    store thread:                              hand-off ──> insert_batch ──> store
                                                                   │ store unavailable
                                                                   └──> spool (disk) ──> replay when back

One ``Recorder`` (one queue, two daemon threads, one engine) per store URL per process. The two
threads form a pipeline: while the store thread waits on the database (the drivers release the
GIL during SQLite's work and the PostgreSQL round trips), the writer thread builds the next batch.
Batches reach the store in the order they were taken, so a ``flush`` marker resolves only after
everything queued before it.

Invariants:
- ``submit`` never raises, never blocks, never logs and takes no lock: it appends to a deque and
  bumps a counter. Everything else (parsing, pricing, redaction, SQL, disk) happens on the writer
  thread, which wakes rarely (every ``flush_interval``, or early when the queue is half full) so it
  competes with the app for the GIL as little as possible.
- Every exchange ``submit`` accepts ends up exactly once in the store, or waits in the spool until
  the store is back; or it is counted (``stats()``): dropped by the redactor, unbuildable, or
  refused by the store for its data (then kept in the spool's ``.rejected`` file). The spool is
  replayed in order, before newer rows; a spool file is deleted only once its rows are committed.
- Only the store thread touches the store and the spool (``spool_now`` aside); only the writer
  thread runs ``build_record`` (and so the redactor). Nothing on the app's thread touches the store;
  at interpreter exit, if the threads cannot finish in ``FLYWHEEL_EXIT_TIMEOUT``, the exiting thread
  writes what is left to the spool (never the store).
- After ``fork`` the child starts empty: the parent's queue stays the parent's job, its threads and
  pooled connections are not reused; the child's threads start on its first ``submit``.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sdk import _config, _health
from sdk._exchange import Exchange
from sdk._spool import Spool

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from sdk._pricing import PriceTable

__all__ = ["Recorder", "flush", "get_recorder", "set_global_redact", "shutdown", "stats"]

Row = dict[str, Any]
Redactor = Callable[[dict[str, Any]], dict[str, Any] | None]

BATCH_ROWS = 2000
"""Rows per insert transaction (and per spool file)."""
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0
REPLAY_BUDGET_S = 2.0
YIELD_EVERY = 4
"""Records built between two voluntary releases of the GIL."""
"""Seconds of spool replay per wake-up; newer rows queue behind the rest in the spool meanwhile."""
SPOOL_SCAN_INTERVAL_S = 10.0
"""How often a healthy writer looks for spool files left by other (dead) processes."""

# SQLSTATE classes (PostgreSQL) and SQLite result codes that blame the rows, not the store.
_DATA_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})  # data exception, integrity, program limit
_DATA_SQLITE_ERRORS = ("SQLITE_CONSTRAINT", "SQLITE_TOOBIG", "SQLITE_MISMATCH", "SQLITE_RANGE")

_global_redact: Redactor | None = None
_schema_lock = threading.Lock()


def set_global_redact(redact: Redactor | None) -> None:
    """Redact every record of this process whose client has no ``redact`` of its own.

    ``redact`` gets the parsed record (see ``sdk._records.build_record``) and returns it changed,
    or ``None`` to drop it. ``None`` here removes the hook.
    """
    global _global_redact
    _global_redact = redact


def _is_outage(exc: BaseException) -> bool:
    """True when the store cannot take anything right now; False when the rows are to blame."""
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if isinstance(sqlstate, str) and len(sqlstate) == 5:
            return sqlstate[:2] not in _DATA_SQLSTATE_CLASSES
        sqlite_error = getattr(orig, "sqlite_errorname", None)
        if isinstance(sqlite_error, str):
            return not sqlite_error.startswith(_DATA_SQLITE_ERRORS)
        return not isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError)
    # Pool exhausted, a network error outside the driver, a missing driver: the store's side.
    # Anything else (binding a value, a malformed row) is about the rows.
    return isinstance(exc, sa.exc.DisconnectionError | sa.exc.TimeoutError | OSError | ImportError)


def _describe(exc: BaseException) -> str:
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return f"{type(orig).__name__}: {str(orig).strip()}"[:1000]


def _body_size(ex: Exchange) -> int:
    """Body bytes ``ex`` holds in memory (what ``max_queue_bytes`` limits)."""
    body = ex.request_body
    size = len(body) if body else 0
    chunks = ex.response_chunks
    if chunks:
        # The transport sets response_size to the chunks' total (O(1) here); others may not.
        size += ex.response_size or sum(map(len, chunks))
    return size


_records_module: ModuleType | None = None


def _records() -> ModuleType:
    """``sdk._records``, imported on first use by the writer (not at ``import sdk`` time)."""
    global _records_module
    if _records_module is None:
        from sdk import _records

        _records_module = _records
    return _records_module


class _FlushMarker:
    """Queued by ``flush``: set once the writer has dealt with everything queued before it."""

    __slots__ = ("done", "durable")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.durable = True
        """False if some rows are only held in memory (neither the store nor the spool took them)."""

    def resolve(self, durable: bool) -> None:
        if not self.done.is_set():  # the first answer counts (spool_now may have given it)
            self.durable = durable
            self.done.set()

    def wait(self, timeout: float | None) -> bool:
        return self.done.wait(timeout) and self.durable


class _Batch:
    """Exchanges the writer took off the queue and then their rows: held, not yet durable.

    A batch with no exchanges and no markers is the writer's tick: it tells the store thread to do
    its housekeeping (replay the spool, retry held rows) when there is nothing else to do.
    """

    __slots__ = ("exchanges", "markers", "rows")

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.markers: list[_FlushMarker] = []
        self.rows: list[Row] | None = None


class Recorder:
    """The queue and background writer of one store. Get one with ``get_recorder(url)``.

    Keyword arguments default to the ``FLYWHEEL_*`` environment variables (``sdk._config``).
    """

    def __init__(
        self,
        database_url: str,
        *,
        max_queue_records: int | None = None,
        max_queue_bytes: int | None = None,
        flush_interval: float | None = None,
        spool_dir: Path | None = None,
        batch_rows: int = BATCH_ROWS,
        retry_initial: float = RETRY_INITIAL_S,
        retry_max: float = RETRY_MAX_S,
    ) -> None:
        from sdk._store import safe_url

        self.database_url = database_url
        self.display_url = safe_url(database_url)
        self.enabled = not _config.disabled()
        self.max_queue_records = max(
            1, max_queue_records if max_queue_records is not None else _config.max_queue_records()
        )
        self.max_queue_bytes = max(
            1, max_queue_bytes if max_queue_bytes is not None else _config.max_queue_bytes()
        )
        interval = flush_interval if flush_interval is not None else _config.flush_interval()
        self.flush_interval = interval if interval > 0 else 0.5
        self.batch_rows = max(1, batch_rows)
        self.retry_initial = retry_initial
        self.retry_max = max(retry_initial, retry_max)
        self.spool = Spool(spool_dir or _config.spool_dir(), database_url, max_file_rows=self.batch_rows)
        # Wake the writer early when the queue is half full, so bursts are not dropped.
        self._wake_records = max(1, self.max_queue_records // 2)
        self._wake_bytes = max(1, self.max_queue_bytes // 2)
        self._engine: Engine | None = None
        self._prices: PriceTable | None = None
        self._init_runtime_state()
        _all_recorders.add(self)

    def _init_runtime_state(self) -> None:
        """Queue, thread and store state: fresh at construction and in a forked child."""
        self._queue: collections.deque[Exchange | _FlushMarker] = collections.deque()
        # Body bytes in the queue = _bytes_in - _bytes_out. Each counter has one kind of writer
        # (app threads / the writer thread), so no lock is needed to keep them roughly exact.
        self._bytes_in = 0
        self._bytes_out = 0
        self._lock = threading.Lock()  # guards _inflight, _held, _closed (never taken by submit)
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None  # the writer thread (builds records)
        self._store_thread: threading.Thread | None = None
        # The built batch the store thread is delivering (at most one, so memory stays bounded);
        # the writer waits on the condition to hand over the next.
        self._handoff: _Batch | None = None
        self._handoff_ready = threading.Condition(threading.Lock())
        self._generation = object()  # a writer thread runs only while this is the one it started with
        self._stop = False
        self._closed = False
        self._inflight: list[_Batch] = []  # taken off the queue, not yet durable (oldest first)
        self._held: list[Row] = []  # rows neither the store nor the spool could take
        self._schema_ok = False
        self._down = False
        self._retry_at = 0.0
        self._backoff = self.retry_initial
        self._spool_dirty = True  # look for leftovers (ours or dead processes') on first contact
        self._next_spool_scan = 0.0

    # -- the app's side -----------------------------------------------------------------------

    def submit(self, ex: Exchange) -> None:
        """Queue ``ex`` for the writer. Never raises, never blocks; drops (and counts) when full."""
        try:
            if not self.enabled:
                return
            queue = self._queue
            queued_bytes = self._bytes_in - self._bytes_out
            if len(queue) >= self.max_queue_records or queued_bytes >= self.max_queue_bytes:
                self._dropped()
                return
            size = _body_size(ex)
            self._bytes_in += size
            queue.append(ex)
            if self._thread is None:
                self._start()
            elif (
                len(queue) >= self._wake_records or queued_bytes + size >= self._wake_bytes
            ) and not self._wake.is_set():
                self._wake.set()
        except Exception as exc:
            _health.report_error("submit", exc)

    def _dropped(self) -> None:
        _health.count("dropped_queue_full")
        _health.log_problem(
            f"queue-full:{self.spool.key}",
            "flywheel: recording queue for %s is full (%d records / %d bytes max); dropping records "
            "(raise FLYWHEEL_MAX_QUEUE_RECORDS / FLYWHEEL_MAX_QUEUE_BYTES, or check the store's speed)",
            self.display_url,
            self.max_queue_records,
            self.max_queue_bytes,
        )

    def _start(self) -> None:
        """Start the writer and the store thread, or whichever of them is not running."""
        with self._start_lock:
            generation = self._generation
            for attr, target, name in (
                ("_store_thread", self._run_store, "flywheel-store"),
                ("_thread", self._run, "flywheel-writer"),
            ):
                current: threading.Thread | None = getattr(self, attr)
                if current is not None and current.is_alive():
                    continue
                thread = threading.Thread(target=target, args=(generation,), name=name, daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:  # "can't start new thread" (e.g. at interpreter shutdown)
                    _health.report_error("writer.start", exc)
                # Even if it did not start: flush() notices it and writes synchronously.
                setattr(self, attr, thread)

    @property
    def queued_records(self) -> int:
        """Records waiting in memory (a pending ``flush`` counts as one too)."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return max(0, self._bytes_in - self._bytes_out)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything submitted so far is in the store or the spool.

        False on timeout, or when neither the store nor the spool could take some rows (they are
        held in memory, bounded, and retried).
        """
        marker = self._request_flush()
        return True if marker is None else marker.wait(timeout)

    def _request_flush(self) -> _FlushMarker | None:
        """Queue a marker the writer sets when it gets there; None when there is nothing to wait for."""
        if threading.current_thread() is self._thread:  # flush() from a redact hook: cannot wait on itself
            marker = _FlushMarker()
            marker.resolve(False)
            return marker
        with self._lock:
            idle = not self._queue and not self._inflight and not self._held
            closed = self._closed
        if idle:
            return None
        if closed:  # spool_now() ran (exit timeout): no writer any more, spool synchronously
            self.spool_now()
            return None
        if not self._running():
            self._start()
            if not self._running():
                self.spool_now()
                return None
        marker = _FlushMarker()
        self._queue.append(marker)
        self._wake.set()
        return marker

    def _running(self) -> bool:
        writer, store = self._thread, self._store_thread
        return writer is not None and writer.is_alive() and store is not None and store.is_alive()

    def spool_now(self) -> None:
        """On the calling thread: everything not yet durable goes to the spool; the writer stops.

        For the end of the process, when the writer did not finish in time (it may be stuck in a
        connect or a lock wait). Uses its own spool file, so a writer stuck inside the spool does
        not block it. Rows the writer may still commit get replayed once more later: harmless,
        inserts skip ids already stored.
        """
        with self._lock:
            self._closed = True
            batches, self._inflight = self._inflight, []
            held, self._held = self._held, []
        with self._handoff_ready:
            self._handoff = None
            self._handoff_ready.notify_all()
        exchanges: list[Exchange] = []
        markers: list[_FlushMarker] = []
        rows: list[Row] = list(held)
        for batch in batches:
            markers.extend(batch.markers)
            if batch.rows is not None:
                rows.extend(batch.rows)
            else:
                exchanges.extend(batch.exchanges)
        self._drain_into(exchanges, markers, limit=None)
        durable = False
        try:
            rows.extend(self._build(exchanges))
            if rows:
                Spool(self.spool.directory, self.database_url, max_file_rows=self.batch_rows).append(rows)
                _health.count("rows_spooled", len(rows))
                _health.log_problem(
                    f"spooled-at-exit:{self.spool.key}",
                    "flywheel: %d records did not reach the store at %s in time; they wait in the spool "
                    "in %s and are written by the next process that records to it",
                    len(rows),
                    self.display_url,
                    self.spool.directory,
                )
            durable = True
        except Exception as exc:
            _health.count("dropped_at_exit", len(rows))
            _health.report_error("writer.exit", exc)
        finally:
            for marker in markers:
                marker.resolve(durable)

    def stats(self) -> dict[str, Any]:
        return {
            "database_url": self.display_url,
            "queue_records": self.queued_records,
            "queue_bytes": self.queued_bytes,
            "store": "down" if self._down else ("up" if self._schema_ok else "not connected"),
            "spool_files": len(self.spool.pending_files()),
        }

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush, stop the writer thread and close the store's connections. A later submit restarts it."""
        done = self.flush(timeout)
        if not done:
            self.spool_now()
        self._stop = True
        self._wake.set()
        with self._handoff_ready:
            self._handoff_ready.notify_all()
        for thread in (self._thread, self._store_thread):
            if thread is not None and thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout)
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()
        self._init_runtime_state()
        return done

    def _after_fork_in_child(self) -> None:
        engine = self._engine
        if engine is not None:
            # The parent's pooled connections: never close them here (a PostgreSQL connection
            # would be terminated for the parent too; closing an inherited SQLite descriptor drops
            # this process's locks on the file). Keep them referenced, unused, for good.
            _inherited_pools.append(engine.pool)
            try:
                engine.dispose(close=False)
            except Exception as exc:
                self._engine = None
                _health.report_error("writer.fork", exc)
        self.spool.after_fork_in_child()
        self._init_runtime_state()

    # -- the writer thread --------------------------------------------------------------------

    def _run(self, generation: object) -> None:
        """The writer thread: take batches off the queue, build their rows, hand them on."""
        while self._generation is generation and not self._stop and not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._stop or self._generation is not generation:
                break
            try:
                self._cycle(generation)
            except Exception as exc:  # a bug here must not kill the thread
                _health.report_error("writer", exc)

    def _drain_into(self, exchanges: list[Exchange], markers: list[_FlushMarker], limit: int | None) -> None:
        queue = self._queue
        size = 0
        try:
            while limit is None or len(exchanges) < limit:
                item = queue.popleft()
                if isinstance(item, _FlushMarker):
                    markers.append(item)
                else:
                    exchanges.append(item)
                    size += _body_size(item)
        except IndexError:  # empty
            pass
        self._bytes_out += size

    def _take(self) -> _Batch | None:
        with self._lock:
            if self._closed:
                return None
            batch = _Batch()
            self._drain_into(batch.exchanges, batch.markers, limit=self.batch_rows)
            if not batch.exchanges and not batch.markers:
                return None
            self._inflight.append(batch)
            return batch

    def _cycle(self, generation: object) -> None:
        """Drain the queue batch by batch into the hand-off; then a tick for the housekeeping."""
        while (batch := self._take()) is not None:
            rows = self._build(batch.exchanges)
            with self._lock:
                if batch not in self._inflight:  # taken over by spool_now() at exit
                    return
                batch.rows = rows
                batch.exchanges = []
            if not self._hand_off(batch, generation):
                return
        self._hand_off(_Batch(), generation)

    def _hand_off(self, batch: _Batch, generation: object) -> bool:
        """Give ``batch`` to the store thread, waiting while it still has one; False when stopping."""
        ready = self._handoff_ready
        with ready:
            is_tick = not batch.markers and batch.rows is None
            if is_tick and self._handoff is not None:
                return True  # the store thread is busy anyway
            while self._handoff is not None and not self._stopping(generation):
                ready.wait(self.flush_interval)
            if self._stopping(generation):
                return False
            self._handoff = batch
            ready.notify_all()
            return True

    def _stopping(self, generation: object) -> bool:
        return self._stop or self._closed or self._generation is not generation

    def _run_store(self, generation: object) -> None:
        """The store thread: deliver built batches in order, resolve their flush markers."""
        ready = self._handoff_ready
        while True:
            with ready:
                while self._handoff is None and not self._stopping(generation):
                    ready.wait(self.flush_interval)
                if self._stopping(generation) or self._handoff is None:
                    return
                batch = self._handoff
            try:
                if batch.rows is not None or batch.markers:
                    self._deliver_batch(batch)
                self._housekeeping()
            except Exception as exc:  # a bug here must not kill the thread
                _health.report_error("writer.store", exc)
            finally:
                with ready:
                    if self._handoff is batch:
                        self._handoff = None
                    ready.notify_all()

    def _deliver_batch(self, batch: _Batch) -> None:
        try:
            with self._lock:
                if batch not in self._inflight:  # taken over by spool_now() at exit
                    return
                rows = self._held + (batch.rows or [])
                self._held = []
                batch.rows = rows
            try:
                self._deliver(rows)
            except Exception as exc:
                _health.report_error("writer.deliver", exc)
                self._to_spool(rows)
            finally:
                with self._lock:
                    if batch in self._inflight:
                        self._inflight.remove(batch)
        finally:
            durable = not self._held
            for marker in batch.markers:
                marker.resolve(durable)

    def _housekeeping(self) -> None:
        """Replay the spool and retry held rows when it is time to."""
        if self._held or self._spool_dirty or time.monotonic() >= self._next_spool_scan:
            with self._lock:
                held, self._held = self._held, []
            self._deliver(held)

    def _price_table(self) -> PriceTable:
        if self._prices is None:
            from sdk._pricing import PriceTable

            try:
                self._prices = PriceTable.load(_config.price_files())
            except Exception as exc:
                _health.report_error("prices", exc)
                self._prices = PriceTable({})
        return self._prices

    def _build(self, exchanges: Sequence[Exchange]) -> list[Row]:
        if not exchanges:
            return []
        build_record = _records().build_record
        prices = self._price_table()
        default_redact = _global_redact
        rows: list[Row] = []
        append = rows.append
        for n, ex in enumerate(exchanges, 1):
            if n % YIELD_EVERY == 0:
                # Hand the GIL to the app if it is waiting for it: without this, an app thread
                # whose response just arrived can wait a whole switch interval (5 ms) for us.
                time.sleep(0)
            try:
                options = ex.options
                redact = (
                    options.redact if options is not None and options.redact is not None else default_redact
                )
                row = build_record(ex, prices, redact)
            except Exception as exc:
                _health.count("dropped_build_error")
                _health.report_error("build_record", exc)
                continue
            if row is not None:  # None: dropped by the redactor (build_record counts it)
                append(row)
        return rows

    def _deliver(self, rows: list[Row]) -> None:
        """Rows to the store, or (store unavailable, or spool backlog ahead of them) to the spool."""
        if self._store_ready():
            if not rows:
                return
            rows = self._insert(rows)
        if rows:
            self._to_spool(rows)

    def _store_ready(self) -> bool:
        """True when new rows may go to the store now: it is reachable and the spool is replayed."""
        now = time.monotonic()
        if self._down and now < self._retry_at:
            return False
        try:
            if self._engine is None:
                from sdk._store import create_store_engine

                self._engine = create_store_engine(self.database_url)
            if not self._schema_ok:
                from sdk._store import ensure_schema

                with _schema_lock:  # Alembic keeps its state in module globals: one at a time
                    ready = ensure_schema(self._engine)
                if not ready:  # ensure_schema logged why (e.g. run `flywheel migrate`)
                    self._mark_down(None)
                    return False
                self._schema_ok = True
        except Exception as exc:
            self._mark_down(exc)
            return False
        if self._spool_dirty or now >= self._next_spool_scan:
            return self._replay()
        self._mark_up()
        return True

    def _replay(self) -> bool:
        """Replay spool files, oldest first, for up to ``REPLAY_BUDGET_S``; True when none is left."""
        deadline = time.monotonic() + REPLAY_BUDGET_S
        files = self.spool.claim_pending()
        try:
            for spool_file in files:
                try:
                    rows = spool_file.read_rows()
                    left = self._insert(rows) if rows else []
                except BaseException:
                    spool_file.release()
                    raise
                if left:  # the store went away: keep the whole file (its committed rows are skipped)
                    spool_file.release()
                    return False
                spool_file.done()
                _health.count("rows_replayed", len(rows))
                self._mark_up()
                if time.monotonic() > deadline:
                    return False  # more next time; new rows wait behind the backlog, in the spool
        except OSError as exc:
            # An unreadable spool must not keep new rows from a working store: go on without it
            # (it is looked at again at the next scan).
            _health.report_error("spool.replay", exc)
        finally:
            files.close()
        self._spool_dirty = False
        self._next_spool_scan = time.monotonic() + SPOOL_SCAN_INTERVAL_S
        self._mark_up()
        return True

    def _insert(self, rows: list[Row]) -> list[Row]:
        """Insert in batches; returns the rows not inserted because the store became unavailable."""
        engine = self._engine
        assert engine is not None
        from sdk._store import insert_batch

        step = self.batch_rows
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            try:
                insert_batch(engine, chunk)
            except Exception as exc:
                if _is_outage(exc):
                    self._mark_down(exc)
                    return rows[start:]
                left = self._insert_one_by_one(engine, chunk, exc)
                if left:
                    return left + rows[start + step :]
                continue
            _health.count("rows_written", len(chunk))
        return []

    def _insert_one_by_one(self, engine: Engine, rows: list[Row], batch_error: BaseException) -> list[Row]:
        """A batch the store refused for its data: find and set aside the bad rows, keep the rest."""
        from sdk._store import insert_batch

        _health.count("batches_split")
        for index, row in enumerate(rows):
            try:
                insert_batch(engine, [row])
            except Exception as exc:
                if _is_outage(exc):
                    self._mark_down(exc)
                    return rows[index:]
                self._reject(row, exc)
                continue
            _health.count("rows_written")
        return []

    def _reject(self, row: Row, exc: BaseException) -> None:
        reason = _describe(exc)
        _health.count("rows_rejected")
        try:
            self.spool.reject(row, reason)
        except Exception as spool_exc:
            _health.count("dropped_rejected")
            _health.report_error("spool.reject", spool_exc)
            return
        _health.log_problem(
            f"rejected:{self.spool.key}",
            "flywheel: the store at %s refused a record (%s); it is kept in %s",
            self.display_url,
            reason,
            self.spool.rejected_path,
        )

    def _to_spool(self, rows: list[Row]) -> None:
        try:
            self.spool.append(rows)
        except Exception as exc:
            # Nowhere durable to put them: keep them in memory (bounded) and try again next wake.
            _health.count("spool_failures")
            _health.log_problem(
                f"spool-failed:{self.spool.key}",
                "flywheel: cannot write the spool in %s (%s); holding records in memory",
                self.spool.directory,
                _describe(exc),
            )
            with self._lock:
                held = self._held + rows
                excess = len(held) - self.max_queue_records
                if excess > 0:
                    _health.count("dropped_spool_failed", excess)
                    held = held[excess:]
                self._held = held
            return
        _health.count("rows_spooled", len(rows))
        self._spool_dirty = True

    def _mark_down(self, exc: BaseException | None) -> None:
        self._schema_ok = False  # check (and on SQLite, create) the schema again on recovery
        delay = self._backoff
        self._down = True
        self._retry_at = time.monotonic() + delay
        self._backoff = min(delay * 2, self.retry_max)
        _health.count("store_unavailable")
        if exc is not None:
            _health.log_problem(
                f"store-down:{self.spool.key}",
                "flywheel: the store at %s is unavailable (%s); records go to the spool in %s "
                "and are replayed when it is back (next try in %.0f s)",
                self.display_url,
                _describe(exc),
                self.spool.directory,
                delay,
            )

    def _mark_up(self) -> None:
        if self._down:
            self._down = False
            self._backoff = self.retry_initial
            _health.logger.info("flywheel: the store at %s is available again", self.display_url)


# -- the process's recorders ----------------------------------------------------------------------

_recorders: dict[str, Recorder] = {}
_recorders_lock = threading.Lock()
_all_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()
_inherited_pools: list[Any] = []


def get_recorder(database_url: str | None = None) -> Recorder:
    """The recorder of the store at ``database_url`` (default: ``FLYWHEEL_DATABASE_URL``)."""
    url = database_url or _config.database_url()
    recorder = _recorders.get(url)
    if recorder is None:
        with _recorders_lock:
            recorder = _recorders.get(url)
            if recorder is None:
                recorder = _recorders[url] = Recorder(url)
    return recorder


def flush(timeout: float | None = None) -> bool:
    """Block until everything recorded so far is in the store or the spool; False on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    markers = [m for m in (r._request_flush() for r in list(_all_recorders)) if m is not None]
    for marker in markers:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not marker.wait(remaining):
            return False
    return True


def stats() -> dict[str, Any]:
    """Queue sizes per store and the SDK's counters (``dropped_queue_full``, ``rows_written``, ...)."""
    recorders = [r.stats() for r in list(_all_recorders)]
    return {
        "queue_records": sum(r["queue_records"] for r in recorders),
        "queue_bytes": sum(r["queue_bytes"] for r in recorders),
        "stores": recorders,
        "counters": _health.snapshot(),
    }


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop every writer (tests, or apps that want to control the end themselves)."""
    done = True
    for recorder in list(_all_recorders):
        done = recorder.shutdown(timeout) and done
    with _recorders_lock:
        _recorders.clear()
    return done


def _flush_at_exit() -> None:
    try:
        deadline = time.monotonic() + _config.exit_timeout()
        pending = [(r, r._request_flush()) for r in list(_all_recorders)]
        for recorder, marker in pending:
            if marker is None:
                continue
            if not marker.wait(max(0.0, deadline - time.monotonic())):
                recorder.spool_now()
    except Exception as exc:
        _health.report_error("writer.exit", exc)


def _after_fork_in_child() -> None:
    global _recorders_lock, _schema_lock
    _recorders_lock = threading.Lock()
    _schema_lock = threading.Lock()
    for recorder in list(_all_recorders):
        try:
            recorder._after_fork_in_child()
        except Exception as exc:
            _health.report_error("writer.fork", exc)


atexit.register(_flush_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

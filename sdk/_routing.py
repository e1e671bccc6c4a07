"""Model routing: ``model="flywheel:NAME"`` is sent as pipeline NAME's current model.

::

    app thread:        create(model="flywheel:classify") ──> dict lookup ──> create(model="ft:...")
    refresher thread:  every FLYWHEEL_ROUTE_REFRESH s ──> one SELECT on ``promotions`` + flywheel.toml
                                                   │ ok: new table, saved to <spool>/<key>.routes.json
                                                   └ store down: keep the last table

What a pipeline's current model is, and how the routes are read and saved, is ``sdk._route_store``;
this module keeps them in memory and answers the call path from there. One ``RouteTable`` (and one
daemon thread) per store URL per process.

Invariants:
- No query, file read or lock on the caller's path. The one exception is the cold start: the
  first alias call of a process (per store) starts the refresher and waits for its first load, at
  most ``FLYWHEEL_ROUTE_WAIT`` seconds; every later call is a dict lookup.
- The table is replaced whole (one attribute assignment), never changed in place: readers take no
  lock and always see one consistent load.
- Nothing here raises into the app. A failed refresh keeps the last known routes (logged once per
  outage, counted as ``routes_refresh_failed``); before any load succeeds, the routes saved by an
  earlier process are used. A name nobody knows leaves the request unchanged (``routes_unknown``),
  so the upstream answers it as it would without the SDK.
- After ``fork`` the child keeps the parent's routes and starts its own refresher on its first
  alias call; the parent's thread and pooled connections are never used in the child.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _config, _health
from ._route_store import Routes, load_promoted, read_cache, read_config, route_engine, write_cache
from ._tags import coerce_tags

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = [
    "ROUTE_PREFIX",
    "ROUTE_TAG",
    "RouteTable",
    "route_call",
    "route_call_async",
    "route_table",
    "with_route",
]


ROUTE_PREFIX = "flywheel:"
ROUTE_TAG = "flywheel_route"
"""The tag that names the alias on every routed call (the stored ``model`` is the model used)."""

ASYNC_POLL_S = 0.005
"""How often an async cold start looks whether the first load is done (it must not block the loop)."""


# --- pure functions ---------------------------------------------------------------------------


def with_route(tags: object, name: str) -> dict[str, str | None]:
    """The call's ``tags=`` with ``flywheel_route=NAME`` on top: the route tag says what happened,
    so a caller's own ``flywheel_route`` cannot hide it."""
    return {**coerce_tags(tags), ROUTE_TAG: name}  # type: ignore[arg-type]  # reports non-mappings


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    one_line = " ".join(str(orig).split())  # driver messages span lines; a log entry should not
    return f"{type(orig).__name__}: {one_line}"[:500]


# --- the route table of one store -------------------------------------------------------------


class RouteTable:
    """The routes of the store at ``database_url``, kept fresh by one background thread."""

    def __init__(
        self,
        database_url: str,
        *,
        refresh_interval: float | None = None,
        first_wait: float | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        from ._spool import spool_key
        from ._store import safe_url

        self.database_url = database_url
        self.display_url = safe_url(database_url)
        self.refresh_interval = refresh_interval or _config.route_refresh_interval()
        self.first_wait = first_wait if first_wait is not None else _config.route_wait()
        self.key = spool_key(database_url)
        self.cache_path = (spool_dir or _config.spool_dir()) / f"{self.key}.routes.json"
        self.routes: Routes = {}
        """What ``resolve`` answers from: base models overlaid by the store's (or the cache's) promotions."""
        self._promoted: dict[str, str] | None = None  # the store's last answer (or the cache's)
        self._saved: dict[str, str] | None = None  # what the cache file holds, as far as we know
        self._base: dict[str, str] = {}
        self._engine: Engine | None = None
        self._down = False
        self._init_thread_state(loaded=False)

    def _init_thread_state(self, loaded: bool) -> None:
        self._loaded = threading.Event()  # set after the first refresh, whatever its outcome
        if loaded:
            self._loaded.set()
        self._warm = False  # True once this process's refresher runs and the cold start is over
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the app's side -------------------------------------------------------------------------

    def resolve(self, name: str) -> str | None:
        """The current model of pipeline ``name``, or ``None`` when neither store nor config knows it."""
        if not self._warm:
            self._start()
            self._loaded.wait(self.first_wait)
            self._warm = True
        return self.routes.get(name)

    async def resolve_async(self, name: str) -> str | None:
        """``resolve`` for coroutines: the cold start sleeps instead of blocking the event loop."""
        if not self._warm:
            self._start()
            if not self._loaded.is_set():
                import anyio  # openai's own dependency: works under asyncio and trio alike

                deadline = time.monotonic() + self.first_wait
                while not self._loaded.is_set() and time.monotonic() < deadline:
                    await anyio.sleep(ASYNC_POLL_S)
            self._warm = True
        return self.routes.get(name)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            thread = threading.Thread(
                target=self._run, args=(self._stop,), name="flywheel-routes", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread" (interpreter shutdown)
                _health.report_error("routing.start", exc)
                self._loaded.set()  # nobody will load: do not make callers wait for it
            self._thread = thread

    # -- the refresher thread -------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        try:
            self._refresh(first=True)
        except Exception as exc:  # a bug here must not kill the thread
            _health.report_error("routing.refresh", exc)
        finally:
            self._loaded.set()
        while not stop.wait(self.refresh_interval):
            try:
                self._refresh(first=False)
            except Exception as exc:
                _health.report_error("routing.refresh", exc)

    def _refresh(self, first: bool) -> None:
        self._read_config()
        if first and self._promoted is None:
            # Routes saved by an earlier process, published before the store is asked: a store
            # that is slow to answer then costs the cold start nothing but freshness.
            self._read_cache()
        try:
            if self._engine is None:
                self._engine = route_engine(self.database_url)
            promoted = load_promoted(self._engine, self.database_url)
        except Exception as exc:
            self._refresh_failed(exc)
            return
        self._promoted = promoted
        self._publish()
        self._mark_up()
        if promoted != self._saved:
            self._save(promoted)

    def _publish(self) -> None:
        self.routes = {**self._base, **(self._promoted or {})}

    def _read_config(self) -> None:
        path = _config.config_path()
        try:
            self._base = read_config(path)
        except Exception as exc:  # keep the last good base models
            _health.count("routes_config_invalid")
            _health.log_problem(
                f"routes-config:{path}",
                "flywheel: cannot read base models from %s (%s); keeping the last ones read",
                path,
                _describe(exc),
            )
        self._publish()

    def _read_cache(self) -> None:
        try:
            cached = read_cache(self.cache_path)
        except OSError as exc:
            _health.report_error("routing.cache", exc)
            return
        if cached is not None:
            self._promoted = self._saved = cached
            self._publish()

    def _save(self, promoted: dict[str, str]) -> None:
        try:
            write_cache(self.cache_path, promoted)
        except OSError as exc:
            _health.count("routes_cache_failed")
            _health.log_problem(
                f"routes-cache:{self.key}",
                "flywheel: cannot save model routes to %s (%s)",
                self.cache_path,
                _describe(exc),
            )
            return
        self._saved = promoted

    def _refresh_failed(self, exc: BaseException) -> None:
        _health.count("routes_refresh_failed")
        if self._down:
            return
        self._down = True
        if self._promoted is not None:
            keeping = "keeping the last known routes"
        else:
            keeping = "no routes known yet: flywheel:NAME uses the configured base model"
        _health.log_problem(
            f"routes-down:{self.key}",
            "flywheel: cannot load model routes from %s (%s); %s until it answers",
            self.display_url,
            _describe(exc),
            keeping,
        )

    def _mark_up(self) -> None:
        _health.count("routes_loaded")
        if self._down:
            self._down = False
            _health.logger.info("flywheel: model routes load from %s again", self.display_url)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Stop the refresher and close its connections (tests; a later resolve starts it again)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()
        self._init_thread_state(loaded=self._loaded.is_set())

    def _after_fork_in_child(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            # The parent's pooled connection must not be closed from here (that would end it for
            # the parent too); keep it referenced, unused.
            _inherited_pools.append(engine.pool)
            with contextlib.suppress(Exception):
                engine.dispose(close=False)
        self._init_thread_state(loaded=self._loaded.is_set())


# --- the process's route tables and the call-path entry points --------------------------------

_tables: dict[str, RouteTable] = {}
_tables_lock = threading.Lock()
_inherited_pools: list[Any] = []


def route_table(database_url: str | None = None) -> RouteTable:
    """The route table of the store at ``database_url`` (default: ``FLYWHEEL_DATABASE_URL``)."""
    url = database_url or _config.database_url()
    table = _tables.get(url)
    if table is None:
        with _tables_lock:
            table = _tables.get(url)
            if table is None:
                table = _tables[url] = RouteTable(url)
    return table


def _store_url(resource: Any) -> str | None:
    """The store of the client a resource (``client.chat.completions``) belongs to."""
    options = getattr(resource._client, "_flywheel_options", None)
    return getattr(options, "database_url", None)


def _apply(table: RouteTable, name: str, model: str | None, kwargs: dict[str, Any], tags: object) -> object:
    if model is None:
        _health.count("routes_unknown")
        _health.warn_once(
            f"route-unknown:{table.key}:{name}",
            "flywheel: no pipeline %r in the store at %s or in %s; model %r is sent unchanged",
            name,
            table.display_url,
            _config.config_path(),
            kwargs["model"],
        )
    else:
        kwargs["model"] = model
    return with_route(tags, name)


def route_call(resource: Any, kwargs: dict[str, Any], tags: object) -> object:
    """Resolve ``kwargs["model"]`` (``"flywheel:NAME"``) in place; returns the call's tags with
    ``flywheel_route=NAME`` (``with_route``), or the caller's ``tags`` untouched if routing failed.
    The tagging method then adds them as any per-call tags (``_clients._with_tags``).

    Never raises: on an unexpected failure the call goes out as the app wrote it.
    """
    try:
        name = kwargs["model"][len(ROUTE_PREFIX) :]
        table = route_table(_store_url(resource))
        return _apply(table, name, table.resolve(name), kwargs, tags)
    except Exception as exc:
        _health.report_error("routing", exc)
        return tags


async def route_call_async(resource: Any, kwargs: dict[str, Any], tags: object) -> object:
    """``route_call`` for the async clients."""
    try:
        name = kwargs["model"][len(ROUTE_PREFIX) :]
        table = route_table(_store_url(resource))
        return _apply(table, name, await table.resolve_async(name), kwargs, tags)
    except Exception as exc:
        _health.report_error("routing", exc)
        return tags


def close_all(timeout: float | None = None) -> None:
    """Stop every refresher of this process and forget the tables (for tests)."""
    with _tables_lock:
        tables = list(_tables.values())
        _tables.clear()
    for table in tables:
        table.close(timeout)


def _after_fork_in_child() -> None:
    global _tables_lock
    _tables_lock = threading.Lock()
    for table in list(_tables.values()):
        try:
            table._after_fork_in_child()
        except Exception as exc:
            _health.report_error("routing.fork", exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

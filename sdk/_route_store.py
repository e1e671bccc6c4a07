"""Where the routes come from, and where they are kept between processes.

A pipeline's current model is the ``model`` of its newest ``promotions`` row (``load_promoted``);
a pipeline with no promotion has its configured ``[pipelines.NAME.train].base_model``
(``read_config``). The store's answer is saved to ``<spool>/<key>.routes.json``
(``write_cache``) so that the next process can route before its store answers (``read_cache``).

These are the refresher thread's reads and writes (``sdk._routing``); nothing here runs on the
app's call path, and failures are raised for the refresher to handle.

Invariants:
- Reading routes never creates a store: a missing SQLite file is an error, not a new empty store.
- The saved routes file holds the store's answer only (base models are re-read from the config),
  and is replaced atomically: a reader sees the old file or the new one, whole.
- A damaged or foreign routes file decodes to ``None``, never to wrong routes.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = [
    "Routes",
    "base_models",
    "decode_cache",
    "encode_cache",
    "load_promoted",
    "read_cache",
    "read_config",
    "route_engine",
    "write_cache",
]

PG_CONNECT_TIMEOUT_S = 5

Routes = Mapping[str, str]

_cache_files = itertools.count()


# --- pure functions ---------------------------------------------------------------------------


def base_models(document: Mapping[str, Any]) -> dict[str, str]:
    """``{pipeline: base_model}`` from a parsed flywheel.toml; pipelines without one are left out."""
    pipelines = document.get("pipelines")
    if not isinstance(pipelines, Mapping):
        return {}
    found: dict[str, str] = {}
    for name, table in pipelines.items():
        train = table.get("train") if isinstance(table, Mapping) else None
        model = train.get("base_model") if isinstance(train, Mapping) else None
        if isinstance(name, str) and isinstance(model, str) and model:
            found[name] = model
    return found


def encode_cache(promoted: Routes) -> bytes:
    """The saved routes file: the store's answer only (base models are re-read from the config)."""
    return orjson.dumps({"version": 1, "promoted": dict(promoted)}, option=orjson.OPT_SORT_KEYS)


def decode_cache(data: bytes) -> dict[str, str] | None:
    """Inverse of ``encode_cache``; ``None`` for anything else (a damaged or foreign file)."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or document.get("version") != 1:
        return None
    promoted = document.get("promoted")
    if not isinstance(promoted, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in promoted.items()):
        return None
    return promoted


# --- I/O at the edges -------------------------------------------------------------------------


def route_engine(url: str) -> Engine:
    """An engine for reading routes: never creates a SQLite file; few, quickly failing connections."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        # A connection per refresh: nothing held open, so a moved or replaced file is noticed.
        return sa.create_engine(parsed, poolclass=NullPool)
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        defaults = {
            "connect_timeout": PG_CONNECT_TIMEOUT_S,
            "application_name": "flywheel-sdk-routes",
            # A peer that vanished without closing the connection is noticed in about 10 s.
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }
        connect_args = {key: value for key, value in defaults.items() if key not in parsed.query}
    return sa.create_engine(
        parsed, pool_size=1, max_overflow=0, pool_pre_ping=True, connect_args=connect_args
    )


def load_promoted(engine: Engine, url: str) -> dict[str, str]:
    """The store's current model per promoted pipeline: the newest ``promotions`` row of each."""
    import sqlalchemy as sa

    from ._store import sqlite_file
    from .schema import promotions

    path = sqlite_file(sa.make_url(url))
    if path is not None and not path.is_file():  # connecting would create an empty store
        raise FileNotFoundError(f"no SQLite store at {path}")
    newest = promotions.alias("newest")
    latest_id = (
        sa.select(sa.func.max(newest.c.id))
        .where(newest.c.pipeline == promotions.c.pipeline)
        .scalar_subquery()
    )
    query = sa.select(promotions.c.pipeline, promotions.c.model).where(promotions.c.id == latest_id)
    with engine.connect() as conn:
        return {pipeline: model for pipeline, model in conn.execute(query)}


def read_config(path: Path) -> dict[str, str]:
    """The base models in the config at ``path``; none when there is no such file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    return base_models(tomllib.loads(data.decode()))


def read_cache(path: Path) -> dict[str, str] | None:
    """The routes saved at ``path``; ``None`` when there is no such file or it is not one of ours."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return decode_cache(data)


def write_cache(path: Path, promoted: Routes) -> None:
    """Replace the saved routes atomically: a reader sees the old file or the new one, whole."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{next(_cache_files)}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(encode_cache(promoted))
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise

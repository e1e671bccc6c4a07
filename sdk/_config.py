"""Every environment variable the SDK and the CLI read, in one place.

| variable | default | meaning |
|---|---|---|
| ``FLYWHEEL_DATABASE_URL`` | ``sqlite:///flywheel.db`` | SQLAlchemy URL of the store (SDK and CLI). |
| ``FLYWHEEL_DISABLED`` | unset | ``1``/``true``: clients record nothing and add no overhead. |
| ``FLYWHEEL_SPOOL_DIR`` | ``~/.cache/flywheel/spool`` | Where records wait while the store is unreachable. |
| ``FLYWHEEL_MAX_QUEUE_RECORDS`` | ``10000`` | Records held in memory before new ones are dropped. |
| ``FLYWHEEL_MAX_QUEUE_BYTES`` | ``67108864`` | Body bytes held in memory before records are dropped. |
| ``FLYWHEEL_FLUSH_INTERVAL`` | ``0.5`` | Seconds between the background writer's batches. |
| ``FLYWHEEL_PRICES`` | unset | Extra price tables (TOML), ``os.pathsep``-separated, over the built-in one. |
| ``FLYWHEEL_EXIT_TIMEOUT`` | ``5`` | Seconds to wait at exit for queued records; the rest is spooled. |
| ``FLYWHEEL_CONFIG`` | ``flywheel.toml`` | Pipelines config (``--config PATH`` wins); routing reads it too. |
| ``FLYWHEEL_ROUTE_REFRESH`` | ``5`` | Seconds between loads of the routes for ``model="flywheel:NAME"``. |
| ``FLYWHEEL_ROUTE_WAIT`` | ``2`` | Seconds a process's first ``flywheel:NAME`` call waits for them. |
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_DATABASE_URL",
    "config_path",
    "database_url",
    "disabled",
    "exit_timeout",
    "flush_interval",
    "max_queue_bytes",
    "max_queue_records",
    "price_files",
    "route_refresh_interval",
    "route_wait",
    "spool_dir",
]

DEFAULT_DATABASE_URL = "sqlite:///flywheel.db"
DEFAULT_CONFIG_FILE = "flywheel.toml"


def database_url() -> str:
    return os.environ.get("FLYWHEEL_DATABASE_URL") or DEFAULT_DATABASE_URL


def disabled() -> bool:
    return os.environ.get("FLYWHEEL_DISABLED", "").strip().lower() in {"1", "true", "yes", "on"}


def spool_dir() -> Path:
    configured = os.environ.get("FLYWHEEL_SPOOL_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flywheel" / "spool"


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        return default


def max_queue_records() -> int:
    return int(_number("FLYWHEEL_MAX_QUEUE_RECORDS", 10_000))


def max_queue_bytes() -> int:
    return int(_number("FLYWHEEL_MAX_QUEUE_BYTES", 64 * 1024 * 1024))


def flush_interval() -> float:
    return _number("FLYWHEEL_FLUSH_INTERVAL", 0.5)


def price_files() -> list[Path]:
    raw = os.environ.get("FLYWHEEL_PRICES", "")
    return [Path(p) for p in raw.split(os.pathsep) if p]


def exit_timeout() -> float:
    return _number("FLYWHEEL_EXIT_TIMEOUT", 5.0)


def config_path() -> Path:
    """The pipelines config file: ``$FLYWHEEL_CONFIG``, else ``flywheel.toml`` in the working directory."""
    return Path(os.environ.get("FLYWHEEL_CONFIG") or DEFAULT_CONFIG_FILE)


def route_refresh_interval() -> float:
    """Seconds between two loads of the model routes; a value that is not positive means the default."""
    value = _number("FLYWHEEL_ROUTE_REFRESH", 5.0)
    return value if value > 0 else 5.0


def route_wait() -> float:
    """Seconds the first ``flywheel:NAME`` call of a process may wait for the routes to load."""
    return max(0.0, _number("FLYWHEEL_ROUTE_WAIT", 2.0))

"""The errors the flywheel library raises, and how driver errors become them.

Every error a user can cause or fix (a bad option value, an unreachable or unmigrated store) is a
``FlywheelError``; anything else is a bug and keeps its traceback. The CLI prints a
``FlywheelError`` as one line, ``flywheel: error: <message> (<where>)``, and exits with its
``exit_code``::

    FlywheelError               exit 1
    ├── UsageError              exit 2   a parameter the caller got wrong
    │   ├── BadFilterError      exit 2   a filter option that cannot be parsed (--tag, --since, ...)
    │   └── ConfigError         exit 2   flywheel.toml is unreadable or invalid (flywheel.train.config)
    ├── StoreError              exit 1   the store cannot be reached, read or migrated
    ├── ProviderError           exit 1   a training provider refused or failed (flywheel.train.providers)
    │   └── TransientProviderError       ... in a way that may pass (rate limit, 5xx): retried later
    ├── EvalError               exit 1   the API refused an eval candidate as a whole (flywheel.evaluate.run)
    ├── JudgeError              exit 1   the judge refused the run as a whole (flywheel.evaluate.judge)
    └── ScorerError             exit 1   a user scorer raised or returned no score (flywheel.evaluate.scorers)

``where`` names the place to look: an option (``--since``), a file, or the store's URL. URLs are
always rendered with the password hidden (``display_url``); driver messages are scrubbed too.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from sdk._store import safe_url

__all__ = [
    "BadFilterError",
    "FlywheelError",
    "StoreError",
    "UsageError",
    "display_url",
    "store_error",
]


class FlywheelError(Exception):
    """Base class: an error the user can act on. ``where`` is an option name, a file or a URL."""

    exit_code = 1

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return f"{self.message} ({self.where})" if self.where else self.message


class UsageError(FlywheelError):
    """A parameter value the caller got wrong; ``where`` names the parameter (``--by``)."""

    exit_code = 2


class BadFilterError(UsageError):
    """A filter option value that cannot be parsed; ``where`` names the option (``--tag``)."""


class StoreError(FlywheelError):
    """The store cannot be reached, is not migrated, or a query on it failed; ``where`` is its URL."""


def display_url(url: str | sa.URL) -> str:
    """``url`` as text that is safe to print: the password (also one given as a query parameter) is
    replaced by ``***``; an unparsable URL is not shown at all."""
    return safe_url(url)


def store_error(exc: BaseException, url: str | sa.URL, doing: str) -> StoreError:
    """Translate a driver/SQLAlchemy error met while ``doing`` something into a one-line StoreError.

    Only the first line of the driver's message is kept (libpq adds hints on following lines), and
    the URL's password is removed from it in case a driver echoed it back.
    """
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    detail = lines[0].strip() if lines else type(original).__name__
    try:
        parsed = make_url(url)
        secrets = [parsed.password, parsed.query.get("password")]
    except sa.exc.ArgumentError:
        secrets = []
    for secret in secrets:
        if isinstance(secret, str) and secret:
            detail = detail.replace(secret, "***")
    return StoreError(f"{doing}: {detail}", where=display_url(url))

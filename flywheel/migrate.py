"""``flywheel migrate``: bring a store's schema up to date, or list what that would do.

The work is done by the SDK's Alembic runner (``sdk._migrate``: one transaction under the store's
migration lock, so concurrent runs queue up and the later ones find nothing to do). This module
adds the plan (``pending_migrations``, for ``--dry-run``) and turns driver and Alembic failures into
``FlywheelError``s: an unreachable store is a ``StoreError`` naming the URL without its password; an
unknown target revision is a ``UsageError`` naming ``--revision``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from sdk import _migrate

from .errors import StoreError, UsageError, display_url, store_error

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

__all__ = ["MigrationResult", "describe_revision", "migrate", "pending_migrations"]


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """The store's schema revision before and after ``migrate`` (``None``: no schema)."""

    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def migrate(url: str, revision: str = "head") -> MigrationResult:
    """Upgrade the store at ``url`` to ``revision`` (default: the newest this code knows).

    Creates a missing SQLite file (mode 0600). Running it again is a no-op (``before == after``).
    Raises ``StoreError`` when the store is unreachable or carries a revision this code does not
    know, ``UsageError`` when ``revision`` is not a known upgrade target.
    """
    with _store_errors(url):
        before = _known_current(url)
        _upgrade(url, revision)
        return MigrationResult(before=before, after=_migrate.current_revision(url))


def pending_migrations(url: str, revision: str = "head") -> list[str]:
    """The revisions ``migrate(url, revision)`` would apply, oldest first; nothing is changed.

    Does not create a missing SQLite file. Raises like ``migrate``.
    """
    with _store_errors(url):
        current = _known_current(url)
        try:
            steps = list(_script().iterate_revisions(revision, current or "base"))
        except _alembic_errors() as exc:
            raise _revision_error(exc, revision) from exc
    return [step.revision for step in reversed(steps)]


def describe_revision(revision: str) -> str:
    """The first line of a revision's message (``"initial"`` for ``0001``)."""
    script = _script().get_revision(revision)
    doc = (script.doc if script is not None else "") or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_migrate.alembic_config("sqlite://"))


def _known_current(url: str) -> str | None:
    current = _migrate.current_revision(url)
    if current is not None and _migrate.schema_status(url) == "ahead":
        raise StoreError(
            f"the store is at revision {current}, which this flywheel does not know "
            f"(a newer release migrated it; newest known: {_migrate.head_revision()})",
            display_url(url),
        )
    return current


def _alembic_errors() -> tuple[type[Exception], ...]:
    """What Alembic raises for a revision it cannot resolve or reach (imported lazily, like Alembic)."""
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    return CommandError, RevisionError


def _upgrade(url: str, revision: str) -> None:
    try:
        _migrate.upgrade(url, revision)
    except _alembic_errors() as exc:
        raise _revision_error(exc, revision) from exc


def _revision_error(exc: Exception, revision: str) -> UsageError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UsageError(f"cannot migrate to revision {revision!r}: {message}", "--revision")


@contextmanager
def _store_errors(url: str) -> Iterator[None]:
    try:
        sa.make_url(url)
    except sa.exc.ArgumentError:
        raise UsageError("not a valid database URL", "--db / FLYWHEEL_DATABASE_URL") from None
    try:
        yield
    except sa.exc.DBAPIError as exc:
        raise store_error(exc, url, "cannot migrate the store") from exc
    except OSError as exc:  # creating the SQLite file or its directory
        raise StoreError(f"cannot create the store: {exc.strerror or exc}", display_url(url)) from exc

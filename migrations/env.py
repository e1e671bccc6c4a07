"""Alembic environment for the flywheel store, configured in code (``sdk._migrate.alembic_config``).

The target metadata is ``sdk.schema.metadata``, the one definition of the store. Online runs use
the connection passed in ``config.attributes["connection"]`` if there is one; otherwise they open
one through ``sdk._migrate.locked_connection``, which holds the store's migration lock for the
whole run. With a PostgreSQL URL whose ``options=-csearch_path=<schema>`` names a schema, the
tables and ``alembic_version`` all go into that schema.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlalchemy.engine import Connection

from sdk._migrate import locked_connection
from sdk.schema import RawJSON, metadata

config = context.config


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Autogenerate writes ``RawJSON`` as the DDL type it is, so revisions don't import ``sdk``."""
    if type_ == "type" and isinstance(obj, RawJSON):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.Text().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")'
    return False


def _options(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": metadata,
        # Alembic compares a TypeDecorator by the type it becomes on the dialect: RawJSON is TEXT
        # on SQLite and JSONB on PostgreSQL, and anything else there is reported as a difference.
        "compare_type": True,
        "render_item": render_item,
        # SQLite can't ALTER most things; batch mode rebuilds the table instead.
        "render_as_batch": dialect_name == "sqlite",
    }


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no sqlalchemy.url in the Alembic config; use sdk._migrate.alembic_config(url)")
    return url


def run_migrations_offline() -> None:
    """Emit the SQL instead of running it (``alembic upgrade --sql``)."""
    from sqlalchemy import make_url

    url = _url()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_options(make_url(url).get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **_options(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    with locked_connection(_url()) as connection:
        _run(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

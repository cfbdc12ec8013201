"""Alembic's environment. `jobqueue.db.init_db` runs it on its own connection, inside the
transaction that holds the lock against concurrent initialisations; the `alembic` command
(alembic.ini, for writing and checking revisions) connects to TRICKLAB_DATABASE_URL."""

from __future__ import annotations

from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import update
from sqlalchemy.engine import Connection

from jobqueue.models import Base, Meta

config = context.config


def _numbered(context: MigrationContext, revision: object, directives: list[Any]) -> None:
    """A new revision's id is the number after the head's: the schema's version."""
    heads = ScriptDirectory.from_config(config).get_heads()
    directives[0].rev_id = str(max((int(head) for head in heads), default=5) + 1)


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters a table by copying it: revisions use op.batch_alter_table for that.
        render_as_batch=True,
        compare_type=True,
        process_revision_directives=_numbered,
    )
    with context.begin_transaction():
        context.run_migrations()
        # tricklab before Alembic refuses a database whose schema_version is not its own "6":
        # kept equal to the revision, a newer schema turns such a process away untouched.
        revision = context.get_context().get_current_revision()
        if revision is not None:
            connection.execute(
                update(Meta)
                .where(Meta.key == "schema_version", Meta.value != revision)
                .values(value=revision)
            )


given = config.attributes.get("connection")
if given is not None:
    run(given)
else:
    from core.config import get_settings
    from jobqueue.db import make_engine

    engine = make_engine(get_settings().database_url)
    with engine.connect() as connection:
        run(connection)
        connection.commit()
    engine.dispose()

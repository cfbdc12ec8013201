"""Engine factory and schema initialisation (Alembic's revisions, jobqueue/migrations) for
SQLite (one machine) and PostgreSQL (many)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, insert, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import sessionmaker

from core.files import private_file, private_folder
from jobqueue.models import ADMIN, User, utcnow

# Execution option that makes a transaction take SQLite's write lock at BEGIN: a claim's
# read-then-update can then never interleave with another writer's, and lock waits happen
# up front under busy_timeout instead of failing mid-transaction with "database is locked".
WRITE = {"tricklab_write": True}


# PostgreSQL ends a transaction left open this long: our transactions last milliseconds, so
# only a frozen or stuck process is cut off, and the row locks it held are freed.
IDLE_TRANSACTION_TIMEOUT_MS = 30_000


# PostgreSQL's default (4) prices a random page read as a spinning disk's. With it, the
# planner finds the oldest queued job (and an owner's newest) by walking the created_at index
# and filtering out the whole history before it, guessing that queued rows are spread evenly
# when they are all at the end; priced for an SSD, or for tables in memory, it reads the
# (owner, status, created_at, id) index and stops at the first row.
RANDOM_PAGE_COST = 1.1


def make_engine(url: str, busy_timeout_ms: int = 30_000, name: str = "tricklab") -> Engine:
    """An engine for SQLite or PostgreSQL; `name` tells sessions apart in pg_stat_activity."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        options = parsed.query.get("options", "")
        options = (
            f"{options} -c idle_in_transaction_session_timeout={IDLE_TRANSACTION_TIMEOUT_MS}"
            f" -c random_page_cost={RANDOM_PAGE_COST}"
        )
        return create_engine(
            parsed.update_query_dict({"options": options.strip(), "application_name": name[:63]}),
            pool_pre_ping=True,
        )

    if parsed.database not in (None, "", ":memory:") and not parsed.database.startswith("file:"):
        # Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        # database's own mode, and would create the database world-readable.
        database = Path(parsed.database)
        private_folder(database.parent)
        private_file(database)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Hand BEGIN to SQLAlchemy (below) instead of pysqlite's implicit, deferred one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the one writer
        cursor.execute("PRAGMA synchronous=FULL")  # a committed job survives power loss
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        write = connection.get_execution_options().get("tricklab_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class Verbs:
    """What every module of verbs starts from: the engine, and sessions that read, or that
    write under the write lock (SQLite takes it at BEGIN). Objects read stay usable after
    their session ends."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(**WRITE), expire_on_commit=False)


class SchemaMismatch(RuntimeError):
    """The database was written by a tricklab whose schema this one cannot upgrade."""


def migrations() -> Config:
    """Alembic's configuration for the revisions in jobqueue/migrations."""
    config = Config()
    config.set_main_option("script_location", "jobqueue:migrations")
    return config


def init_db(engine: Engine) -> str:
    """Bring the database to the newest schema by its Alembic revisions (an empty one is
    created whole; one written before Alembic is upgraded in place) and make sure it has its
    admin; safe when several processes start at once. Returns the database's revision."""
    config = migrations()
    script = ScriptDirectory.from_config(config)
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect().execution_options(**WRITE) as connection:
        if sqlite:  # see _foreign_keys
            _foreign_keys(connection, False)
        try:
            with connection.begin():
                if not sqlite:
                    # Serialise concurrent initialisations; the lock ends with the transaction.
                    connection.execute(text("SELECT pg_advisory_xact_lock(7461726)"))
                current = MigrationContext.configure(connection).get_current_revision()
                known = {r.revision for r in script.walk_revisions()}
                if current is not None and current not in known:
                    raise SchemaMismatch(
                        f"the database {engine.url.render_as_string()} has tricklab schema "
                        f"version {current}, newer than this tricklab's "
                        f"{script.get_current_head()}: run the tricklab that wrote it"
                    )
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise SchemaMismatch("a revision left rows that point at no row")
                _add_admin(connection)
                return str(MigrationContext.configure(connection).get_current_revision())
        finally:
            if sqlite:
                _foreign_keys(connection, True)


def _foreign_keys(connection: Connection, on: bool) -> None:
    """SQLite alters a table by copying it and dropping the old one (Alembic's batch mode);
    with foreign keys enforced, the drop would delete every row that points at the old table
    (epoch metrics, a job's tricks). The pragma is a no-op inside a transaction, so it is set
    on the connection before BEGIN, and the revisions are checked before COMMIT instead."""
    cursor = connection.connection.cursor()
    cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    cursor.close()


def _add_admin(connection: Connection) -> None:
    """The first user, an admin; its token is set when the API starts (service.auth)."""
    if connection.scalar(select(User.id).where(User.name == ADMIN)) is None:
        connection.execute(
            insert(User).values(id=uuid.uuid4().hex, name=ADMIN, role="admin", created_at=utcnow())
        )


def main() -> None:
    from core.config import load_settings
    from core.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level)
    try:
        revision = init_db(make_engine(settings.database_url, settings.busy_timeout_ms))
    except SchemaMismatch as error:
        raise SystemExit(f"tricklab: {error}") from None
    url = make_url(settings.database_url).render_as_string()
    print(f"database ready at schema version {revision}: {url}")


if __name__ == "__main__":
    main()

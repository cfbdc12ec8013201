"""Engine factory and schema initialisation for SQLite (one machine) and PostgreSQL (many)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.schema import CreateColumn

from jobqueue.models import (
    ADMIN,
    RETIRED_INDEXES,
    SCHEMA_VERSION,
    UPGRADES,
    Base,
    Job,
    JobCount,
    JobTrick,
    Meta,
    Study,
    User,
    owned_key,
    trick_names,
    utcnow,
)

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

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
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


class SchemaMismatch(RuntimeError):
    """The database was written by a tricklab with another table layout."""


def init_db(engine: Engine) -> None:
    """Create the tables in an empty database, or check an existing one's layout; safe when
    several processes start at once."""
    with engine.connect().execution_options(**WRITE) as connection, connection.begin():
        if engine.dialect.name == "postgresql":
            # Serialise concurrent initialisations; the lock ends with the transaction.
            connection.execute(text("SELECT pg_advisory_xact_lock(7461726)"))
        tables = set(inspect(connection).get_table_names())
        if "jobs" not in tables:
            Base.metadata.create_all(connection)
            _count_jobs(connection)
            connection.execute(insert(Meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
            _add_admin(connection)
            return
        version = None
        if Meta.__tablename__ in tables:
            version = connection.scalar(select(Meta.value).where(Meta.key == "schema_version"))
        if version in UPGRADES:
            Base.metadata.create_all(connection)  # only the tables that are missing
            _add_columns(connection, UPGRADES[version])
            for name in RETIRED_INDEXES:
                connection.execute(text(f"DROP INDEX IF EXISTS {name}"))
            for table in Base.metadata.sorted_tables:  # indexes on the tables that were there
                for index in table.indexes:
                    index.create(connection, checkfirst=True)
            _add_admin(connection)
            _adopt(connection)
            _index_studies_and_tricks(connection)
            _count_jobs(connection)
            connection.execute(
                update(Meta).where(Meta.key == "schema_version").values(value=str(SCHEMA_VERSION))
            )
            return
        if version != str(SCHEMA_VERSION):
            raise SchemaMismatch(
                f"the database {engine.url.render_as_string()} has tricklab schema version "
                f"{version or 1}, this tricklab needs {SCHEMA_VERSION}: start from a new "
                "database (e.g. move ./var/tricklab.db away) or migrate it"
            )


def _add_admin(connection: Connection) -> None:
    """The first user, an admin; its token is set when the API starts (service.auth)."""
    if connection.scalar(select(User.id).where(User.name == ADMIN)) is None:
        connection.execute(
            insert(User).values(id=uuid.uuid4().hex, name=ADMIN, role="admin", created_at=utcnow())
        )


def _adopt(connection: Connection) -> None:
    """What was made before there were users belongs to the admin, keys included."""
    connection.execute(update(Job).where(Job.owner.is_(None)).values(owner=ADMIN))
    connection.execute(update(Study).where(Study.owner.is_(None)).values(owner=ADMIN))
    keyed = connection.execute(
        select(Job.id, Job.idempotency_key).where(Job.idempotency_key.is_not(None))
    ).all()
    for job_id, key in keyed:
        connection.execute(
            update(Job).where(Job.id == job_id).values(idempotency_key=owned_key(ADMIN, str(key)))
        )


def _index_studies_and_tricks(connection: Connection) -> None:
    """Fill in, for the jobs made before schema 6, their study and the job_tricks rows."""
    for study_id, variants in connection.execute(select(Study.id, Study.variants)).all():
        ids = [job_id for variant in variants for job_id in variant["jobs"]]
        for start in range(0, len(ids), 500):
            connection.execute(
                update(Job).where(Job.id.in_(ids[start : start + 500])).values(study_id=study_id)
            )
    indexed = select(JobTrick.job_id)
    jobs = connection.execute(select(Job.id, Job.spec).where(Job.id.not_in(indexed))).all()
    tricks = [
        {"job_id": job_id, "trick": name}
        for job_id, spec in jobs
        for name in dict.fromkeys(trick_names(spec))
    ]
    for start in range(0, len(tricks), 1000):
        connection.execute(insert(JobTrick), tricks[start : start + 1000])


# The triggers that keep job_counts (see models.JobCount): +1 for a job's new owner and
# status, -1 for its old ones.
_SQLITE_COUNTING = (
    """CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_counts (owner, status, delta) VALUES (NEW.owner, NEW.status, 1); END""",
    """CREATE TRIGGER jobs_counted_update AFTER UPDATE OF status, owner ON jobs
    WHEN OLD.status IS NOT NEW.status OR OLD.owner IS NOT NEW.owner BEGIN
    INSERT INTO job_counts (owner, status, delta)
    VALUES (OLD.owner, OLD.status, -1), (NEW.owner, NEW.status, 1); END""",
    """CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs BEGIN
    INSERT INTO job_counts (owner, status, delta) VALUES (OLD.owner, OLD.status, -1); END""",
)
_POSTGRESQL_COUNTING = (
    """CREATE OR REPLACE FUNCTION tricklab_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF TG_OP <> 'INSERT' THEN
        INSERT INTO job_counts (owner, status, delta) VALUES (OLD.owner, OLD.status, -1);
      END IF;
      IF TG_OP <> 'DELETE' THEN
        INSERT INTO job_counts (owner, status, delta) VALUES (NEW.owner, NEW.status, 1);
      END IF;
      RETURN NULL;
    END $$""",
    """CREATE OR REPLACE TRIGGER jobs_counted_insert AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION tricklab_count_jobs()""",
    """CREATE OR REPLACE TRIGGER jobs_counted_delete AFTER DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION tricklab_count_jobs()""",
    """CREATE OR REPLACE TRIGGER jobs_counted_update AFTER UPDATE OF status, owner ON jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.owner IS DISTINCT FROM NEW.owner)
    EXECUTE FUNCTION tricklab_count_jobs()""",
)


def _count_jobs(connection: Connection) -> None:
    """Start job_counts from the jobs there are, and install the triggers that keep it."""
    postgresql = connection.dialect.name == "postgresql"
    if not postgresql:
        for name in ("insert", "update", "delete"):
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS jobs_counted_{name}")
    connection.execute(delete(JobCount))
    connection.execute(
        insert(JobCount).from_select(
            ["owner", "status", "delta"],
            select(Job.owner, Job.status, func.count()).group_by(Job.owner, Job.status),
        )
    )
    for statement in _POSTGRESQL_COUNTING if postgresql else _SQLITE_COUNTING:
        connection.exec_driver_sql(statement)


def _add_columns(connection: Connection, names: tuple[str, ...]) -> None:
    """Add these columns ("table.column", as the models define them) where missing."""
    for name in names:
        table, column = name.split(".")
        existing = {c["name"] for c in inspect(connection).get_columns(table)}
        if column not in existing:
            definition = CreateColumn(Base.metadata.tables[table].c[column])
            connection.execute(
                text(f"ALTER TABLE {table} ADD COLUMN {definition.compile(connection)}")
            )


def main() -> None:
    from core.config import get_settings
    from core.logs import setup_logging

    settings = get_settings()
    setup_logging(settings.log_level)
    try:
        init_db(make_engine(settings.database_url, settings.busy_timeout_ms))
    except SchemaMismatch as error:
        raise SystemExit(f"tricklab: {error}") from None
    print(f"database ready: {make_url(settings.database_url).render_as_string()}")


if __name__ == "__main__":
    main()

"""The triggers that keep job_counts (see models.JobCount): +1 for a job's new owner and
status, -1 for its old ones; as the baseline made them. On SQLite a revision that copies the
jobs table (op.batch_alter_table) drops them with the old table: it calls `count_jobs` after."""

from __future__ import annotations

from sqlalchemy.engine import Connection

SQLITE = (
    """CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_counts (owner, status, delta) VALUES (NEW.owner, NEW.status, 1); END""",
    """CREATE TRIGGER jobs_counted_update AFTER UPDATE OF status, owner ON jobs
    WHEN OLD.status IS NOT NEW.status OR OLD.owner IS NOT NEW.owner BEGIN
    INSERT INTO job_counts (owner, status, delta)
    VALUES (OLD.owner, OLD.status, -1), (NEW.owner, NEW.status, 1); END""",
    """CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs BEGIN
    INSERT INTO job_counts (owner, status, delta) VALUES (OLD.owner, OLD.status, -1); END""",
)
POSTGRESQL = (
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


def count_jobs(connection: Connection) -> None:
    """Start job_counts from the jobs there are, and install the triggers that keep it."""
    postgresql = connection.dialect.name == "postgresql"
    if not postgresql:
        for name in ("insert", "update", "delete"):
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS jobs_counted_{name}")
    connection.exec_driver_sql("DELETE FROM job_counts")
    connection.exec_driver_sql(
        "INSERT INTO job_counts (owner, status, delta) "
        "SELECT owner, status, count(*) FROM jobs GROUP BY owner, status"
    )
    for statement in POSTGRESQL if postgresql else SQLITE:
        connection.exec_driver_sql(statement)

"""The baseline: schema 6, the layout tricklab reached before Alembic.

An empty database gets it whole. A database that tricklab wrote before Alembic (it has a
`jobs` table and no revision yet) is brought to it in place from schema 2, 3, 4, 5 or 6, as
`tricklab_meta.schema_version` says, keeping every row: 3 added studies; 4 the time a job has
trained and the deletion of its files; 5 users, their tokens, and the owner of each job and
study; 6 each job's study, the job_tricks index, the job_counts changes, and when retention
archived a job's metrics.

The tables are written out here, not taken from jobqueue.models, so that this revision
creates schema 6 however the models change later.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateColumn

from jobqueue.db import SchemaMismatch
from jobqueue.migrations.counting import count_jobs

revision = "6"
down_revision = None
branch_labels = None
depends_on = None

ADMIN = "admin"  # the user that owns what was made before there were users
_time = sa.DateTime(timezone=True)
schema = sa.MetaData()

sa.Table(
    "tricklab_meta",
    schema,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)
sa.Table(
    "users",
    schema,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("quota_active_jobs", sa.Integer),
    sa.Column("created_at", _time, nullable=False),
    sa.Column("disabled_at", _time),
    sa.Column("last_claimed_at", _time),
)
sa.Table(
    "tokens",
    schema,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", _time, nullable=False),
    sa.Column("expires_at", _time),
    sa.Column("revoked_at", _time),
)
jobs = sa.Table(
    "jobs",
    schema,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", _time, nullable=False),
    sa.Column("started_at", _time),
    sa.Column("finished_at", _time),
    sa.Column("idempotency_key", sa.String(255), unique=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("failures", sa.JSON, nullable=False),
    sa.Column("worker", sa.String(200)),
    sa.Column("lease_token", sa.String(32)),
    sa.Column("lease_expires_at", _time),
    sa.Column("heartbeat_at", _time),
    sa.Column("epochs_done", sa.Integer, nullable=False),
    sa.Column("checkpoint_epoch", sa.Integer),
    sa.Column("checkpoint_path", sa.String(500)),
    sa.Column("checkpoint_sha256", sa.String(64)),
    sa.Column("best_epoch", sa.Integer),
    sa.Column("stopped_epoch", sa.Integer),
    sa.Column("result", sa.JSON),
    sa.Column("failure_reason", sa.String(32)),
    sa.Column("error_type", sa.String(200)),
    sa.Column("error_message", sa.Text),
    sa.Column("device", sa.String(200)),
    sa.Column("model_path", sa.String(500)),
    sa.Column("model_sha256", sa.String(64)),
    sa.Column("trained_seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("artifacts_deleted_at", _time),
    sa.Column("study_id", sa.String(32)),
    sa.Column("metrics_archived_at", _time),
    sa.Index("ix_jobs_status_created_id", "status", "created_at", "id"),
    sa.Index("ix_jobs_created_id", "created_at", "id"),
    sa.Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    sa.Index("ix_jobs_owner_status_created_id", "owner", "status", "created_at", "id"),
    sa.Index("ix_jobs_owner_created_id", "owner", "created_at", "id"),
    sa.Index("ix_jobs_finished", "finished_at"),
)
job_tricks = sa.Table(
    "job_tricks",
    schema,
    sa.Column(
        "job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("trick", sa.String(64), primary_key=True),
    sa.Index("ix_job_tricks_trick", "trick", "job_id"),
)
sa.Table(
    "job_counts",
    schema,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("owner", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("delta", sa.Integer, nullable=False),
    sa.Index("ix_job_counts_owner_status", "owner", "status"),
)
sa.Table(
    "epoch_metrics",
    schema,
    sa.Column(
        "job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    *(
        sa.Column(name, sa.Float, nullable=name in ("val_loss", "val_accuracy"))
        for name in (
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "test_loss",
            "test_accuracy",
            "train_objective",
            "learning_rate",
            "seconds",
        )
    ),
)
studies = sa.Table(
    "studies",
    schema,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(64)),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("variants", sa.JSON, nullable=False),
    sa.Column("seeds", sa.JSON, nullable=False),
    sa.Column("created_at", _time, nullable=False),
    sa.Column("cancelled_at", _time),
    sa.Index("ix_studies_created_id", "created_at", "id"),
    sa.Index("ix_studies_owner_created_id", "owner", "created_at", "id"),
)

# The indexes that schema 6 replaced by ones ending in id.
RETIRED_INDEXES = (
    "ix_jobs_status_created",
    "ix_jobs_created",
    "ix_jobs_owner_status_created",
    "ix_jobs_owner_created",
    "ix_studies_created",
    "ix_studies_owner_created",
)
LEGACY_VERSIONS = ("2", "3", "4", "5", "6")


def upgrade() -> None:
    connection = op.get_bind()
    if "jobs" not in sa.inspect(connection).get_table_names():
        schema.create_all(connection)
        count_jobs(connection)
        meta = schema.tables["tricklab_meta"]
        op.execute(meta.insert().values(key="schema_version", value=revision))
        return
    version = _legacy_version(connection)
    if version == "6":
        return
    schema.create_all(connection)  # only the tables that are missing
    _add_missing_columns(connection)
    for name in RETIRED_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    for table in schema.sorted_tables:  # indexes on the tables that were there
        for index in table.indexes:
            index.create(connection, checkfirst=True)
    if int(version) < 5:
        _adopt(connection)
    _index_studies_and_tricks(connection)
    count_jobs(connection)


def downgrade() -> None:
    raise NotImplementedError("tricklab does not downgrade: restore a backup instead")


def _legacy_version(connection: Connection) -> str:
    """The schema version a tricklab before Alembic wrote: 2 to 6 can be upgraded."""
    version = None
    if "tricklab_meta" in sa.inspect(connection).get_table_names():
        meta = schema.tables["tricklab_meta"]
        version = connection.scalar(sa.select(meta.c.value).where(meta.c.key == "schema_version"))
    if version not in LEGACY_VERSIONS:
        raise SchemaMismatch(
            f"the database has tricklab schema version {version or 1}, this tricklab needs "
            f"{LEGACY_VERSIONS[0]} or newer to upgrade it: start from a new database (e.g. move "
            "./var/tricklab.db away)"
        )
    return str(version)


def _add_missing_columns(connection: Connection) -> None:
    for table in schema.sorted_tables:
        existing = {c["name"] for c in sa.inspect(connection).get_columns(table.name)}
        for column in table.columns:
            if column.name not in existing:
                definition = CreateColumn(column).compile(connection)
                op.execute(f"ALTER TABLE {table.name} ADD COLUMN {definition}")


def _adopt(connection: Connection) -> None:
    """What was made before there were users (schema 5) belongs to the admin, keys included:
    since then a key is stored as the SHA-256 of its owner and itself."""
    op.execute(jobs.update().where(jobs.c.owner.is_(None)).values(owner=ADMIN))
    op.execute(studies.update().where(studies.c.owner.is_(None)).values(owner=ADMIN))
    keyed = sa.select(jobs.c.id, jobs.c.idempotency_key).where(jobs.c.idempotency_key.is_not(None))
    for job_id, key in connection.execute(keyed).all():
        owned = hashlib.sha256(f"{ADMIN}\n{key}".encode()).hexdigest()
        op.execute(jobs.update().where(jobs.c.id == job_id).values(idempotency_key=owned))


def _index_studies_and_tricks(connection: Connection) -> None:
    """Fill in, for the jobs made before schema 6, their study and the job_tricks rows."""
    for study_id, variants in connection.execute(sa.select(studies.c.id, studies.c.variants)):
        ids = [job_id for variant in variants for job_id in variant["jobs"]]
        for start in range(0, len(ids), 500):
            op.execute(
                jobs.update()
                .where(jobs.c.id.in_(ids[start : start + 500]))
                .values(study_id=study_id)
            )
    indexed = sa.select(job_tricks.c.job_id)
    rows = connection.execute(sa.select(jobs.c.id, jobs.c.spec).where(jobs.c.id.not_in(indexed)))
    tricks = [
        {"job_id": job_id, "trick": name}
        for job_id, spec in rows.all()
        for name in dict.fromkeys(_trick_names(spec))
    ]
    for start in range(0, len(tricks), 1000):
        connection.execute(job_tricks.insert(), tricks[start : start + 1000])


def _trick_names(spec: object) -> list[str]:
    tricks = spec.get("tricks", []) if isinstance(spec, dict) else []
    names = [t.get("name") if isinstance(t, dict) else t for t in tricks]
    return [name for name in names if isinstance(name, str)]

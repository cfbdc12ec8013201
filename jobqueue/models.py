"""The tables: users, their API tokens and dashboard sessions, jobs, their per-epoch metrics,
studies of jobs, and searches with their trials."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, DateTime, Enum, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from core.results import JobResult
from jobqueue.states import JobStatus


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Stored(TypeDecorator[BaseModel]):
    """A pydantic model kept as JSON: written from the model (or a dict it validates), read
    back as one."""

    impl = JSON
    cache_ok = True

    def __init__(self, model: type[BaseModel]) -> None:
        super().__init__()
        self.model = model

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else self.model.model_validate(value).model_dump(mode="json")

    def process_result_value(self, value: Any, dialect: Dialect) -> BaseModel | None:
        return None if value is None else self.model.model_validate(value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def owned_key(owner: str, key: str) -> str:
    """How a job stores its Idempotency-Key: each owner's keys are their own."""
    return hashlib.sha256(f"{owner}\n{key}".encode()).hexdigest()


# The user that every database has from the start: it owns what was there before users.
ADMIN = "admin"


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[dict[str, Any]]: JSON,
    }


class Meta(Base):
    """schema_version: the Alembic revision, for tricklab before Alembic, which refuses any
    other value than its own."""

    __tablename__ = "tricklab_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class User(Base):
    """Someone who may use the API. Users are disabled, never deleted: their name stays the
    owner of their jobs and studies."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # "user" or "admin"
    # Queued + running jobs allowed at once; None: TRICKLAB_QUOTA_ACTIVE_JOBS.
    quota_active_jobs: Mapped[int | None]
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]
    # When a worker last claimed one of the user's jobs: claims go round the owners.
    last_claimed_at: Mapped[datetime | None]


class Token(Base):
    """An API token, stored as the SHA-256 of its secret: the secret is shown once."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Which of the admin's start-up sources (accounts.ADMIN_TOKEN_SOURCES) registered it; null
    # for a token issued through the API, whatever its name: only these are replaced at start.
    startup_source: Mapped[str | None] = mapped_column(String(32))


class BrowserSession(Base):
    """A dashboard sign-in. The browser's cookie holds a random secret that names it; only the
    secret's SHA-256 is stored, as a token's is. It lasts until `expires_at` or until it is
    revoked (signing out, the user disabled), and no longer than the token it was opened
    with. `csrf` is the value a state-changing request signed in by it must send in a header:
    the pages embed it, another site cannot read it."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("tokens.id"))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)  # deleted after a grace
    revoked_at: Mapped[datetime | None] = mapped_column(index=True)  # deleted after a grace


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The user's name (users are never renamed or deleted); null only mid-upgrade.
    owner: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[JobStatus] = mapped_column(
        Enum(
            JobStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]
        )
    )
    spec: Mapped[dict[str, Any]]  # the resolved JobSpec
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Client-chosen key making a submission safe to retry (the Idempotency-Key header), stored
    # as the SHA-256 of owner and key, so that each owner has keys of their own.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    # Attempts so far, the running one included; one that a stopping worker handed back
    # goes on when the job is claimed again, so it is counted once.
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)  # failed attempts allowed
    # One entry per failed attempt: attempt, reason, worker, error_type, message, at.
    failures: Mapped[list[dict[str, Any]]] = mapped_column(default=list)
    worker: Mapped[str | None] = mapped_column(String(200))
    # The current claim's fencing token: every write a worker makes must present it.
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    epochs_done: Mapped[int] = mapped_column(default=0)
    # The last epoch checkpointed: a retried job resumes after it.
    checkpoint_epoch: Mapped[int | None]
    checkpoint_path: Mapped[str | None] = mapped_column(String(500))
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    best_epoch: Mapped[int | None]
    stopped_epoch: Mapped[int | None]
    result: Mapped[JobResult | None] = mapped_column(Stored(JobResult))
    failure_reason: Mapped[str | None] = mapped_column(String(32))  # see jobqueue.retry
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    device: Mapped[str | None] = mapped_column(String(200))
    model_path: Mapped[str | None] = mapped_column(String(500))  # relative to the artifact store
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    # Wall-clock seconds the job has trained, over its attempts, up to its last checkpoint:
    # what TRICKLAB_MAX_JOB_SECONDS bounds.
    trained_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # Set when its checkpoints and model were deleted (DELETE /v1/jobs/{id}); the rows stay.
    artifacts_deleted_at: Mapped[datetime | None]
    study_id: Mapped[str | None] = mapped_column(String(32))  # the study it was made for
    # Set when the retention policy archived and removed its epoch metrics.
    metrics_archived_at: Mapped[datetime | None]
    # Train up to this epoch, then pause (a search's rung) until its search resumes or ends
    # it; null: train every epoch of the spec.
    epoch_limit: Mapped[int | None]
    search_id: Mapped[str | None] = mapped_column(String(32))  # the search it was made for

    __table_args__ = (
        # Every list and claim orders by (created_at, id): with id in the index, a page or
        # the oldest queued job is a range of it, however long the history.
        Index("ix_jobs_status_created_id", "status", "created_at", "id"),
        Index("ix_jobs_created_id", "created_at", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),  # the sweep
        # An owner's list, active count (quota) and oldest queued job (fair claims).
        Index("ix_jobs_owner_status_created_id", "owner", "status", "created_at", "id"),
        Index("ix_jobs_owner_created_id", "owner", "created_at", "id"),
        Index("ix_jobs_finished", "finished_at"),  # retention: the jobs that ended long ago
        Index("ix_jobs_search", "search_id"),  # a search's jobs, at its every advance
    )


class JobTrick(Base):
    """Which tricks a job uses, one row each: lists filter by trick through an index instead
    of reading every job's spec."""

    __tablename__ = "job_tricks"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    trick: Mapped[str] = mapped_column(String(64), primary_key=True)

    __table_args__ = (Index("ix_job_tricks_trick", "trick", "job_id"),)


class JobCount(Base):
    """How many jobs each owner has in each status, as a sum of changes: triggers on jobs
    append +1/-1 rows as jobs are inserted, change status or are deleted (appending takes
    no lock that concurrent writers would queue on, as updating one counter row would), and
    the sweep folds the rows into one per owner and status. A count reads a few rows
    however long the history."""

    __tablename__ = "job_counts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    delta: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_job_counts_owner_status", "owner", "status"),)


def trick_names(spec: Any) -> list[str]:
    """The names of the tricks in a stored spec, in its order (an item is a name or an
    object with one)."""
    tricks = spec.get("tricks", []) if isinstance(spec, dict) else []
    names = [t.get("name") if isinstance(t, dict) else t for t in tricks]
    return [name for name in names if isinstance(name, str)]


class EpochMetrics(Base):
    __tablename__ = "epoch_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)  # from 1
    attempt: Mapped[int] = mapped_column(Integer)  # the claim that trained it
    # Every *_loss is the plain cross-entropy, comparable across tricks; train_objective is
    # what the optimizer minimised (with any L2 penalty and label smoothing).
    train_loss: Mapped[float] = mapped_column(Float)
    train_accuracy: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float] = mapped_column(Float)
    test_accuracy: Mapped[float] = mapped_column(Float)
    train_objective: Mapped[float] = mapped_column(Float)
    learning_rate: Mapped[float] = mapped_column(Float)  # at the end of the epoch
    seconds: Mapped[float] = mapped_column(Float)  # training + validation time of the epoch


class Study(Base):
    """A comparison of variants, each run once per seed; its jobs are ordinary jobs."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))  # as a job's
    name: Mapped[str] = mapped_column(String(200))
    request: Mapped[dict[str, Any]]  # the StudySpec as submitted, preset applied
    # In design order: {"name", "tricks": [labels], "spec": resolved, "jobs": [ids by seed]}.
    variants: Mapped[list[dict[str, Any]]]
    seeds: Mapped[list[int]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    cancelled_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_studies_created_id", "created_at", "id"),
        Index("ix_studies_owner_created_id", "owner", "created_at", "id"),
    )

    @property
    def job_ids(self) -> list[str]:
        """Every job of the study, variant by variant, in seed order."""
        return [job_id for variant in self.variants for job_id in variant["jobs"]]


class Search(Base):
    """A search for the best spec: trials sampled by Optuna, run as ordinary jobs, stopped at
    rungs by ASHA, then the best configurations and the base confirmed on fresh seeds."""

    __tablename__ = "searches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))  # as a job's
    name: Mapped[str] = mapped_column(String(200))
    request: Mapped[dict[str, Any]]  # the SearchSpec, base resolved
    # queued, searching, confirming, succeeded, failed, cancelled (search.states)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)  # why it failed
    # Once confirming, in order (the base first): {"name", "trial", "params", "spec", "jobs"
    # [ids by seed]}; the seeds are fresh, never a trial's.
    confirmations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    seeds: Mapped[list[int] | None] = mapped_column(JSON)  # the confirmation's

    __table_args__ = (
        Index("ix_searches_created_id", "created_at", "id"),
        Index("ix_searches_owner_created_id", "owner", "created_at", "id"),
        Index("ix_searches_status", "status"),  # the planner's round: the searches not ended
    )


class Trial(Base):
    """One configuration a search sampled, trained by one job through its rungs."""

    __tablename__ = "search_trials"

    search_id: Mapped[str] = mapped_column(
        ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)  # Optuna's, from 0
    # Null when the sampled configuration is no valid job spec (state failed).
    job_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    params: Mapped[dict[str, Any]]  # by space key, as sampled (Optuna's internal encoding)
    # What the sampler noted on the trial when it was asked (GridSampler's grid point).
    sampler_attrs: Mapped[dict[str, Any]]
    # running, paused, promoted, pruned, completed, failed (search.states)
    state: Mapped[str] = mapped_column(String(16))
    rung: Mapped[int] = mapped_column(Integer, default=0)  # the rung it trains towards
    # The objective at each epoch recorded so far, by epoch (as a string: JSON's keys).
    values: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]

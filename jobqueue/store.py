"""The job lifecycle, as verbs: enqueue, claim, heartbeat, record an epoch, finish, fail,
release, cancel. Routes and the worker never build SQL themselves; studies, the pauses of a
search's trials, accounts and quotas, the reads behind lists and reports, and retention have
modules of their own.

Every state change is a compare-and-set guarded by the lifecycle table and, for a worker's
writes, by its lease token: when it updates no row the caller has lost a race (the job was
cancelled, or its lease expired and the job moved on) and must stop, never overwrite.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, Update, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.results import EpochRow, JobResult
from core.spec import JobSpec
from jobqueue.claims import PackKey, pick
from jobqueue.db import Verbs
from jobqueue.models import (
    EpochMetrics,
    Job,
    JobTrick,
    owned_key,
    trick_names,
    utcnow,
)
from jobqueue.retry import FailureReason, after_failure
from jobqueue.states import TERMINAL, JobStatus, sources_of

MAX_ERROR_MESSAGE = 4000
# Called in the transaction that adds an owner's jobs, before they are added, with the owner
# and how many: raises to refuse them all (accounts.Quota.admit).
Admission = Callable[[Session, str, int], None]


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a running job; its token fences every write the worker makes."""

    job_id: str
    token: str
    attempt: int


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file in the artifact store, as registered on its job."""

    epoch: int
    path: str
    sha256: str


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used for a different spec."""

    def __init__(self, key: str, job: Job) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for job {job.id} with a different "
            "spec; use a new key for a new job"
        )
        self.job = job


class JobStore(Verbs):
    def __init__(self, engine: Engine, lease_seconds: float = 60.0, max_attempts: int = 3) -> None:
        super().__init__(engine)
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts

    # -- the service's verbs -------------------------------------------------------------

    def enqueue(
        self,
        spec: JobSpec,
        owner: str,
        idempotency_key: str | None = None,
        admit: Admission | None = None,
    ) -> tuple[Job, bool]:
        """Store a new queued job of `owner`'s, durable when this returns, if `admit` lets it
        in. With a key the owner already used for the same spec, the job stored then instead;
        returns (job, created)."""
        jobs, created = self._enqueue([spec], owner, idempotency_key, admit, batch=False)
        return jobs[0], created

    def enqueue_many(
        self,
        specs: Sequence[JobSpec],
        owner: str,
        idempotency_key: str | None = None,
        admit: Admission | None = None,
    ) -> tuple[list[Job], bool]:
        """Store several queued jobs of `owner`'s in one transaction: all durable when this
        returns, or (refused by `admit`) none. A key covers the whole batch: used again with
        the same specs, in the same order, it returns the jobs stored then."""
        return self._enqueue(specs, owner, idempotency_key, admit, batch=True)

    def _enqueue(
        self,
        specs: Sequence[JobSpec],
        owner: str,
        idempotency_key: str | None,
        admit: Admission | None,
        batch: bool,
    ) -> tuple[list[Job], bool]:
        keys: list[str | None] = [None] * (len(specs) + batch)
        if idempotency_key:
            # A header value holds no newline: a batch's keys never meet a single job's. A
            # batch looks one key further, so that a shorter batch under its key conflicts.
            keys = [
                owned_key(owner, f"{idempotency_key}\n{index}" if batch else idempotency_key)
                for index in range(len(keys))
            ]
        jobs = [
            queued(spec, owner, self.max_attempts, idempotency_key=key)
            for spec, key in zip(specs, keys, strict=False)
        ]
        try:
            with self._write.begin() as session:
                if idempotency_key and (earlier := _keyed(session, keys)):
                    return _replay(earlier, idempotency_key, jobs), False
                if admit is not None:
                    admit(session, owner, len(jobs))
                session.add_all(with_tricks(jobs))
        except IntegrityError:  # a concurrent duplicate won (PostgreSQL)
            with self._read() as session:
                earlier = _keyed(session, keys) if idempotency_key else []
            if not earlier:
                raise
            return _replay(earlier, idempotency_key or "", jobs), False
        return jobs, True

    def get(self, job_id: str) -> Job | None:
        with self._read() as session:
            return session.get(Job, job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued, running or paused job. Returns the job as it now is (its status tells
        whether the cancel took effect), or None if there is no such job. A running job's
        worker finds its lease gone at its next write and stops."""
        with self._write.begin() as session:
            cancelled = session.scalars(
                cancelling(Job.id == job_id).returning(Job),
                execution_options={"synchronize_session": False},
            ).one_or_none()
            return cancelled or session.get(Job, job_id)

    def delete_artifacts(self, job_id: str) -> Job | None:
        """Mark a finished job's files deleted and forget where they were (the caller removes
        them); the job and its metrics stay. Returns the job as it now is (unchanged unless
        it had ended), or None if there is no such job."""
        with self._write.begin() as session:
            deleted = session.scalars(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(TERMINAL))
                .values(
                    artifacts_deleted_at=func.coalesce(Job.artifacts_deleted_at, utcnow()),
                    model_path=None,
                    checkpoint_path=None,
                    checkpoint_sha256=None,
                )
                .returning(Job),
                execution_options={"synchronize_session": False},
            ).one_or_none()
            return deleted or session.get(Job, job_id)

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # -- the worker's verbs --------------------------------------------------------------

    def claim(self, worker: str, device: str) -> tuple[Job, Lease] | None:
        """Take the oldest queued job, in one short write transaction."""
        claimed = self.claim_pack(worker, device)
        return claimed[0] if claimed else None

    def claim_pack(
        self, worker: str, device: str, size: int = 1, key: PackKey | None = None
    ) -> list[tuple[Job, Lease]]:
        """Take the jobs `claims.pick` picks (one, or a pack of up to `size` that `key` says
        train together), in one short write transaction."""
        with self._write.begin() as session:
            return [
                self._take(session, job_id, worker, device) for job_id in pick(session, size, key)
            ]

    def _take(self, session: Session, job_id: str, worker: str, device: str) -> tuple[Job, Lease]:
        token = secrets.token_hex(16)
        now = utcnow()
        job = session.scalars(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.RUNNING,
                attempts=Job.attempts + 1,
                worker=worker,
                device=device,
                lease_token=token,
                lease_expires_at=now + self.lease,
                heartbeat_at=now,
                started_at=now,
            )
            .returning(Job),
            execution_options={"synchronize_session": False},
        ).one()
        # The history is exactly the checkpointed epochs: the next one resumes after them.
        session.execute(
            delete(EpochMetrics).where(
                EpochMetrics.job_id == job.id, EpochMetrics.epoch > (job.checkpoint_epoch or 0)
            )
        )
        return job, Lease(job.id, token, job.attempts)

    def heartbeat(self, lease: Lease) -> bool:
        """Renew the lease; False if it is gone (cancelled, or expired and taken over)."""
        with self._write.begin() as session:
            return self._touch(session, lease)

    def record_epoch(
        self, lease: Lease, row: EpochRow, checkpoint: Checkpoint, trained_seconds: float
    ) -> bool:
        """Store one epoch's metrics and register its checkpoint, together, with the time the
        job has trained by then over all its attempts; False if the lease is gone."""
        with self._write.begin() as session:
            if not self._touch(
                session,
                lease,
                trained_seconds=trained_seconds,
                epochs_done=row.epoch,
                checkpoint_epoch=checkpoint.epoch,
                checkpoint_path=checkpoint.path,
                checkpoint_sha256=checkpoint.sha256,
            ):
                return False
            session.add(EpochMetrics(job_id=lease.job_id, attempt=lease.attempt, **dict(row)))
        return True

    def forget_checkpoint(self, lease: Lease) -> bool:
        """Start the job over from epoch 1: its checkpoint is unusable, so its history goes."""
        with self._write.begin() as session:
            if not self._touch(
                session,
                lease,
                epochs_done=0,
                checkpoint_epoch=None,
                checkpoint_path=None,
                checkpoint_sha256=None,
            ):
                return False
            session.execute(delete(EpochMetrics).where(EpochMetrics.job_id == lease.job_id))
        return True

    def finish(
        self,
        lease: Lease,
        result: JobResult,
        best_epoch: int | None = None,
        stopped_epoch: int | None = None,
        model_path: str | None = None,
        model_sha256: str | None = None,
    ) -> bool:
        """Mark the job succeeded with its result, best/stopped epoch and model."""
        with self._write.begin() as session:
            return self._touch(
                session,
                lease,
                status=JobStatus.SUCCEEDED,
                finished_at=utcnow(),
                result=result,
                best_epoch=best_epoch,
                stopped_epoch=stopped_epoch,
                model_path=model_path,
                model_sha256=model_sha256,
                **unleased(),
            )

    def release(self, lease: Lease) -> bool:
        """Hand a running job back to the queue at once (its worker is stopping); it keeps
        its checkpoint and history, and the attempt goes on when the job is claimed again:
        it is neither failed nor counted twice."""
        with self._write.begin() as session:
            return self._touch(
                session, lease, status=JobStatus.QUEUED, attempts=Job.attempts - 1, **unleased()
            )

    def fail(self, lease: Lease, reason: FailureReason, error: BaseException) -> JobStatus | None:
        """Record a failed attempt: the job is retried or fails, as jobqueue.retry decides.
        Returns the job's new status, or None if the lease is gone."""
        message = (str(error) or repr(error))[:MAX_ERROR_MESSAGE]
        with self._write.begin() as session:
            job = session.get(Job, lease.job_id)
            if job is None or job.lease_token != lease.token:  # its failures are not ours
                return None
            return self._fail(session, job, reason, type(error).__name__, message)

    def requeue_expired(self) -> list[tuple[str, JobStatus]]:
        """The sweep: running jobs whose lease expired (their worker was lost) go back to the
        queue, or fail with reason worker_lost once out of attempts."""
        now = utcnow()
        moved = []
        with self._write.begin() as session:
            expired = session.scalars(
                select(Job)
                .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
                # PostgreSQL: a job whose heartbeat is being written right now is skipped.
                .with_for_update(skip_locked=True)
            ).all()
            for job in expired:
                message = (
                    # Not naming the worker: the failure's own field holds it, for admins.
                    f"the worker stopped renewing the lease of attempt {job.attempts} "
                    "(killed, frozen or cut off)"
                )
                status = self._fail(session, job, FailureReason.WORKER_LOST, "WorkerLost", message)
                if status is not None:
                    moved.append((job.id, status))
        return moved

    def _fail(
        self, session: Session, job: Job, reason: FailureReason, error_type: str, message: str
    ) -> JobStatus | None:
        now = utcnow()
        failures = [
            *job.failures,
            {
                "attempt": job.attempts,
                "reason": reason.value,
                "worker": job.worker,
                "error_type": error_type,
                "message": message,
                "at": now.isoformat(),
            },
        ]
        status = after_failure(reason, len(failures), job.max_attempts)
        values: dict[str, Any] = {"status": status, "failures": failures, **unleased()}
        if status == JobStatus.FAILED:
            values.update(
                finished_at=now,
                failure_reason=reason.value,
                error_type=error_type,
                error_message=message,
            )
        lease = Lease(job.id, job.lease_token or "", job.attempts)
        return status if self._touch(session, lease, **values) else None

    def _touch(self, session: Session, lease: Lease, **values: Any) -> bool:
        """The fenced update every write about a running job goes through; while the job
        stays running, it also renews the lease."""
        if "status" not in values:
            now = utcnow()
            values = {"lease_expires_at": now + self.lease, "heartbeat_at": now, **values}
        return moved(session, fenced(lease).values(**values))


def _keyed(session: Session, keys: Sequence[str | None]) -> list[Job]:
    """The jobs stored under these keys, in their order."""
    rows = session.scalars(select(Job).where(Job.idempotency_key.in_(keys)))
    found = {job.idempotency_key: job for job in rows}
    return [found[key] for key in keys if key in found]


def _replay(earlier: list[Job], key: str, jobs: list[Job]) -> list[Job]:
    if len(earlier) != len(jobs) or any(
        before.spec != job.spec for before, job in zip(earlier, jobs, strict=False)
    ):
        raise IdempotencyConflict(key, earlier[0])
    return earlier


def cancelling(which: Any) -> Update:
    """Cancel the jobs matching `which` that may still be cancelled (queued, running or
    paused)."""
    return (
        update(Job)
        .where(which, Job.status.in_(sources_of(JobStatus.CANCELLED)))
        .values(status=JobStatus.CANCELLED, finished_at=utcnow(), **unleased())
    )


def fenced(lease: Lease) -> Update:
    """An update of a running job that only its lease's holder may make: it matches no row
    once the job was cancelled or its lease taken over."""
    return update(Job).where(
        Job.id == lease.job_id, Job.status == JobStatus.RUNNING, Job.lease_token == lease.token
    )


def moved(session: Session, statement: Update) -> bool:
    """Run a compare-and-set on one job: whether it matched (and so changed) the job."""
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def unleased() -> dict[str, Any]:
    """The values that end a claim."""
    return {"lease_token": None, "lease_expires_at": None}


def queued(spec: JobSpec, owner: str, max_attempts: int, idempotency_key: str | None = None) -> Job:
    """A new job, queued, as every way of submitting one makes it."""
    return Job(
        id=uuid.uuid4().hex,
        owner=owner,
        status=JobStatus.QUEUED,
        spec=spec.model_dump(mode="json"),
        created_at=utcnow(),
        idempotency_key=idempotency_key,
        attempts=0,
        max_attempts=max_attempts,
        failures=[],
        epochs_done=0,
    )


def with_tricks(jobs: Sequence[Job]) -> list[Job | JobTrick]:
    """New jobs and the job_tricks rows that let lists filter them by trick."""
    tricks = [
        JobTrick(job_id=job.id, trick=name)
        for job in jobs
        for name in dict.fromkeys(trick_names(job.spec))
    ]
    return [*jobs, *tricks]

"""Every job query, as a verb. Routes and the worker never build SQL themselves.

Every state change is a compare-and-set guarded by the lifecycle table and, for a worker's
writes, by its lease token: when it updates no row the caller has lost a race (the job was
cancelled, or its lease expired and the job moved on) and must stop, never overwrite.
"""

from __future__ import annotations

import secrets
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, Update, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.spec import JobSpec
from jobqueue.db import WRITE
from jobqueue.models import (
    EpochMetrics,
    Job,
    JobCount,
    JobTrick,
    Study,
    User,
    owned_key,
    trick_names,
    utcnow,
)
from jobqueue.retry import FailureReason, after_failure
from jobqueue.states import ACTIVE, TERMINAL, JobStatus, sources_of

MAX_ERROR_MESSAGE = 4000
# job_counts' change rows the sweep lets pile up before folding them: a count reads at most
# about this many rows.
FOLD_AT = 1000
# Where a page ends: the (created_at, id) of its last item; the next page starts after it.
Position = tuple[datetime, str]
# Queued jobs, oldest first, looked through for a claimed job's pack mates.
PACK_CANDIDATES = 256
# A job's stored spec → which jobs it can train together with (equal keys), and how many of
# them fit in one pack (the oldest job's count bounds its pack); None: it trains alone.
PackKey = Callable[[dict[str, Any]], tuple[str, int] | None]


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


class QuotaExceeded(Exception):
    """The owner's queued and running jobs would pass their quota."""

    def __init__(self, owner: str, quota: int, active: int, adding: int) -> None:
        jobs = "a job" if adding == 1 else f"{adding} jobs"
        super().__init__(
            f"{owner} has {active} active (queued or running) jobs and a quota of {quota}: "
            f"{jobs} more would pass it; wait for some to end or cancel some (the quota is "
            "the user's quota_active_jobs, else TRICKLAB_QUOTA_ACTIVE_JOBS)"
        )
        self.quota, self.active = quota, active


class JobStore:
    def __init__(self, engine: Engine, lease_seconds: float = 60.0, max_attempts: int = 3) -> None:
        self.engine = engine
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(**WRITE), expire_on_commit=False)

    # -- the service's verbs -------------------------------------------------------------

    def enqueue(
        self,
        spec: JobSpec,
        owner: str,
        idempotency_key: str | None = None,
        quota: int | None = None,
    ) -> tuple[Job, bool]:
        """Store a new queued job of `owner`'s, durable when this returns. With a key the
        owner already used for the same spec, the job stored then instead; returns (job,
        created). Raises QuotaExceeded if the owner would have more than `quota` active jobs."""
        jobs, created = self._enqueue([spec], owner, idempotency_key, quota, batch=False)
        return jobs[0], created

    def enqueue_many(
        self,
        specs: Sequence[JobSpec],
        owner: str,
        idempotency_key: str | None = None,
        quota: int | None = None,
    ) -> tuple[list[Job], bool]:
        """Store several queued jobs of `owner`'s in one transaction: all durable when this
        returns, or (QuotaExceeded) none. A key covers the whole batch: used again with the
        same specs, in the same order, it returns the jobs stored then."""
        return self._enqueue(specs, owner, idempotency_key, quota, batch=True)

    def _enqueue(
        self,
        specs: Sequence[JobSpec],
        owner: str,
        idempotency_key: str | None,
        quota: int | None,
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
        jobs = [self._new_job(spec, owner, key) for spec, key in zip(specs, keys, strict=False)]
        try:
            with self._write.begin() as session:
                if idempotency_key and (earlier := self._keyed(session, keys)):
                    return self._replay(earlier, idempotency_key, jobs), False
                self._within_quota(session, owner, quota, len(jobs))
                session.add_all([*jobs, *(trick for job in jobs for trick in _tricks_of(job))])
        except IntegrityError:  # a concurrent duplicate won (PostgreSQL)
            with self._read() as session:
                earlier = self._keyed(session, keys) if idempotency_key else []
            if not earlier:
                raise
            return self._replay(earlier, idempotency_key or "", jobs), False
        return jobs, True

    @staticmethod
    def _within_quota(session: Session, owner: str, quota: int | None, adding: int) -> None:
        if quota is None:
            return
        # PostgreSQL: one owner's submissions take turns, so that two cannot both fit; each
        # one's jobs and their job_counts rows are committed before the next counts.
        session.execute(select(User.id).where(User.name == owner).with_for_update())
        active = _active(session, owner)
        if active + adding > quota:
            raise QuotaExceeded(owner, quota, active, adding)

    def active_jobs(self, owner: str) -> int:
        """The owner's queued and running jobs."""
        with self._read() as session:
            return _active(session, owner)

    def _new_job(
        self,
        spec: JobSpec,
        owner: str,
        idempotency_key: str | None = None,
        study_id: str | None = None,
    ) -> Job:
        return Job(
            id=uuid.uuid4().hex,
            owner=owner,
            study_id=study_id,
            status=JobStatus.QUEUED,
            spec=spec.model_dump(mode="json"),
            created_at=utcnow(),
            idempotency_key=idempotency_key,
            attempts=0,
            max_attempts=self.max_attempts,
            failures=[],
            epochs_done=0,
        )

    @staticmethod
    def _keyed(session: Session, keys: Sequence[str | None]) -> list[Job]:
        """The jobs stored under these keys, in their order."""
        rows = session.scalars(select(Job).where(Job.idempotency_key.in_(keys)))
        found = {job.idempotency_key: job for job in rows}
        return [found[key] for key in keys if key in found]

    @staticmethod
    def _replay(earlier: list[Job], key: str, jobs: list[Job]) -> list[Job]:
        if len(earlier) != len(jobs) or any(
            before.spec != job.spec for before, job in zip(earlier, jobs, strict=False)
        ):
            raise IdempotencyConflict(key, earlier[0])
        return earlier

    def get(self, job_id: str) -> Job | None:
        with self._read() as session:
            return session.get(Job, job_id)

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
        trick: str | None = None,
        after: Position | None = None,
    ) -> tuple[Sequence[Job], int | None]:
        """A page of jobs, newest first (after `after`, the last of the page before), and the
        number of jobs matching the filters (None: any status, any owner, with or without
        any trick), from job_counts; None when filtering by trick, which nothing counts."""
        query = select(Job)
        if status is not None:
            query = query.where(Job.status == status)
        if owner is not None:
            query = query.where(Job.owner == owner)
        if trick is not None:
            query = query.where(Job.id.in_(select(JobTrick.job_id).where(JobTrick.trick == trick)))
        with self._read() as session:
            page = session.scalars(_page(query, Job, limit, offset, after)).all()
        if trick is not None:
            return page, None
        counts = self.count_jobs(owner)
        return page, counts.get(status, 0) if status else sum(counts.values())

    def count_jobs(self, owner: str | None = None) -> dict[JobStatus, int]:
        """How many jobs there are in each status (None: everyone's), from job_counts."""
        query = select(JobCount.status, func.sum(JobCount.delta)).group_by(JobCount.status)
        if owner is not None:
            query = query.where(JobCount.owner == owner)
        with self._read() as session:
            return {JobStatus(status): int(n) for status, n in session.execute(query) if n}

    def fold_counts(self, at_least: int = FOLD_AT) -> None:
        """Sum job_counts' change rows into one per owner and status, once there are
        `at_least` of them. One DELETE … RETURNING takes exactly the rows it folds, so a
        change committed meanwhile is kept for the next fold."""
        with self._write.begin() as session:
            if (session.scalar(select(func.count()).select_from(JobCount)) or 0) < at_least:
                return
            folded: Counter[tuple[str | None, str]] = Counter()
            changes = delete(JobCount).returning(JobCount.owner, JobCount.status, JobCount.delta)
            for owner, status, delta in session.execute(changes):
                folded[owner, status] += delta
            sums = [{"owner": o, "status": s, "delta": n} for (o, s), n in folded.items() if n]
            if sums:
                session.execute(insert(JobCount), sums)

    def metrics(self, job_id: str, since_epoch: int = 0) -> Sequence[EpochMetrics]:
        with self._read() as session:
            return session.scalars(
                select(EpochMetrics)
                .where(EpochMetrics.job_id == job_id, EpochMetrics.epoch > since_epoch)
                .order_by(EpochMetrics.epoch)
            ).all()

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job. Returns the job as it now is (its status tells
        whether the cancel took effect), or None if there is no such job. A running job's
        worker finds its lease gone at its next write and stops."""
        with self._write.begin() as session:
            cancelled = session.scalars(
                _cancel(Job.id == job_id).returning(Job),
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

    # -- retention ----------------------------------------------------------------------

    def ended_before(self, moment: datetime, keeping: str, limit: int = 500) -> list[str]:
        """Up to `limit` jobs, oldest ending first, that ended before `moment` and still keep
        their "metrics" or their "files" (`keeping`)."""
        kept = Job.metrics_archived_at if keeping == "metrics" else Job.artifacts_deleted_at
        with self._read() as session:
            return list(
                session.scalars(
                    select(Job.id)
                    .where(Job.finished_at < moment, Job.status.in_(TERMINAL), kept.is_(None))
                    .order_by(Job.finished_at)
                    .limit(limit)
                )
            )

    def archive_metrics(self, job_ids: Sequence[str]) -> int:
        """Remove these ended jobs' epoch metrics, once the caller has archived them, and
        mark them archived. Returns the rows removed."""
        with self._write.begin() as session:
            marked = session.scalars(
                update(Job)
                .where(
                    Job.id.in_(job_ids), Job.status.in_(TERMINAL), Job.metrics_archived_at.is_(None)
                )
                .values(metrics_archived_at=utcnow())
                .returning(Job.id),
                execution_options={"synchronize_session": False},
            ).all()
            if not marked:
                return 0
            removed = session.execute(delete(EpochMetrics).where(EpochMetrics.job_id.in_(marked)))
            return int(removed.rowcount or 0)  # type: ignore[attr-defined]

    # -- studies ------------------------------------------------------------------------

    def create_study(
        self,
        owner: str,
        name: str | None,
        request: dict[str, Any],
        seeds: list[int],
        variants: Sequence[tuple[dict[str, Any], Sequence[JobSpec]]],
        quota: int | None = None,
    ) -> Study:
        """Store a study of `owner`'s and all its jobs, queued, in one transaction: durable
        together, or (QuotaExceeded) not at all. Each variant comes as its document and its
        jobs' specs; the document gains the jobs' ids."""
        study_id = uuid.uuid4().hex
        jobs: list[Job] = []
        documents = []
        for document, specs in variants:
            variant_jobs = [self._new_job(spec, owner, study_id=study_id) for spec in specs]
            jobs += variant_jobs
            documents.append({**document, "jobs": [job.id for job in variant_jobs]})
        row = Study(
            id=study_id,
            owner=owner,
            name=name,
            request=request,
            variants=documents,
            seeds=seeds,
            created_at=utcnow(),
        )
        with self._write.begin() as session:
            self._within_quota(session, owner, quota, len(jobs))
            session.add_all([*jobs, *(trick for job in jobs for trick in _tricks_of(job)), row])
        return row

    def get_study(self, study_id: str) -> Study | None:
        with self._read() as session:
            return session.get(Study, study_id)

    def study_names(self, study_ids: Sequence[str]) -> dict[str, str]:
        with self._read() as session:
            rows = session.execute(select(Study.id, Study.name).where(Study.id.in_(study_ids)))
            return {study_id: name for study_id, name in rows}

    def list_studies(
        self,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
        after: Position | None = None,
    ) -> tuple[Sequence[Study], int]:
        """A page of studies, newest first (after `after`), and how many there are (None: any
        owner's), counted in an index: there are far fewer studies than jobs."""
        query = select(Study)
        count = select(func.count()).select_from(Study)
        if owner is not None:
            query = query.where(Study.owner == owner)
            count = count.where(Study.owner == owner)
        with self._read() as session:
            total = session.scalar(count) or 0
            page = session.scalars(_page(query, Study, limit, offset, after)).all()
        return page, total

    def best_test_accuracy(self, job_ids: Sequence[str]) -> dict[str, float]:
        """Each job's highest test accuracy over its epochs so far, computed by the database
        (the jobs with no epoch yet are left out)."""
        with self._read() as session:
            rows = session.execute(
                select(EpochMetrics.job_id, func.max(EpochMetrics.test_accuracy))
                .where(EpochMetrics.job_id.in_(job_ids))
                .group_by(EpochMetrics.job_id)
            )
            return {job_id: best for job_id, best in rows}

    def jobs_with_metrics(
        self, job_ids: Sequence[str]
    ) -> tuple[dict[str, Job], dict[str, list[EpochMetrics]]]:
        """The jobs with these ids, and each one's epoch metrics in order."""
        with self._read() as session:
            jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
            metrics: dict[str, list[EpochMetrics]] = {}
            for row in session.scalars(
                select(EpochMetrics)
                .where(EpochMetrics.job_id.in_(job_ids))
                .order_by(EpochMetrics.job_id, EpochMetrics.epoch)
            ):
                metrics.setdefault(row.job_id, []).append(row)
        return jobs, metrics

    def moves(self, job_ids: Sequence[str]) -> dict[str, tuple[str, int, int]]:
        """Where each of these jobs is: (status, epochs done, attempts), by primary key, a few
        hundred ids a query. What an event stream follows: any change is news."""
        found: dict[str, tuple[str, int, int]] = {}
        with self._read() as session:
            for start in range(0, len(job_ids), 500):
                rows = session.execute(
                    select(Job.id, Job.status, Job.epochs_done, Job.attempts).where(
                        Job.id.in_(job_ids[start : start + 500])
                    )
                )
                found.update(
                    {row.id: (row.status.value, row.epochs_done, row.attempts) for row in rows}
                )
        return found

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        with self._read() as session:
            rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids)))
            return {job_id: status for job_id, status in rows}

    def cancel_study(self, study_id: str) -> Study | None:
        """Mark the study cancelled and cancel its queued and running jobs; finished jobs
        keep their results. None if there is no such study."""
        with self._write.begin() as session:
            study = session.get(Study, study_id)
            if study is None:
                return None
            if study.cancelled_at is None:
                study.cancelled_at = utcnow()
            session.execute(
                _cancel(Job.id.in_(study.job_ids)),
                execution_options={"synchronize_session": False},
            )
        return study

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
        """Take the oldest queued job of the owner whose turn it is (see `_owners_in_turn`)
        and up to `size - 1` more that can train beside it (fewer if `key` says fewer fit),
        in one short write transaction: queued jobs of any owner among the next
        `PACK_CANDIDATES`, oldest first, with the same `key` (not None) and checkpoint epoch.
        A job with a failed attempt is taken alone, so a job that kills its worker takes no
        pack mates with it more than once."""
        queued = (
            select(Job.id, Job.owner, Job.spec, Job.checkpoint_epoch, Job.failures)
            .where(Job.status == JobStatus.QUEUED)
            .order_by(Job.created_at, Job.id)
        )
        with self._write.begin() as session:
            first = None
            for owner in _owners_in_turn(session):
                # PostgreSQL: a job another worker is claiming is skipped; SQLite's BEGIN
                # IMMEDIATE suffices there.
                first = session.execute(
                    queued.where(Job.owner == owner).limit(1).with_for_update(skip_locked=True)
                ).first()
                if first is not None:
                    break
            if first is None:
                return []
            session.execute(
                update(User).where(User.name == first.owner).values(last_claimed_at=utcnow())
            )
            ids = [first.id]
            pack = key(first.spec) if key and size > 1 and not first.failures else None
            if key is not None and pack is not None:
                mates = [
                    row.id
                    for row in session.execute(
                        queued.where(Job.id != first.id).limit(PACK_CANDIDATES)
                    )
                    if not row.failures
                    and row.checkpoint_epoch == first.checkpoint_epoch
                    and _same_pack(key(row.spec), pack)
                ][: min(size, pack[1]) - 1]
                # Those still free (unlocked, queued): no waiting on another claim, no deadlock.
                ids += session.scalars(
                    select(Job.id)
                    .where(Job.id.in_(mates), Job.status == JobStatus.QUEUED)
                    .order_by(Job.created_at, Job.id)
                    .with_for_update(skip_locked=True)
                ).all()
            return [self._take(session, job_id, worker, device) for job_id in ids]

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
        self, lease: Lease, metrics: dict[str, Any], checkpoint: Checkpoint, trained_seconds: float
    ) -> bool:
        """Store one epoch's metrics and register its checkpoint, together, with the time the
        job has trained by then over all its attempts; False if the lease is gone."""
        with self._write.begin() as session:
            if not self._touch(
                session,
                lease,
                trained_seconds=trained_seconds,
                epochs_done=metrics["epoch"],
                checkpoint_epoch=checkpoint.epoch,
                checkpoint_path=checkpoint.path,
                checkpoint_sha256=checkpoint.sha256,
            ):
                return False
            session.add(EpochMetrics(job_id=lease.job_id, attempt=lease.attempt, **metrics))
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

    def finish(self, lease: Lease, **outcome: Any) -> bool:
        """Mark the job succeeded with its result, best/stopped epoch and model."""
        with self._write.begin() as session:
            return self._touch(
                session,
                lease,
                status=JobStatus.SUCCEEDED,
                finished_at=utcnow(),
                **outcome,
                **_unleased(),
            )

    def release(self, lease: Lease) -> bool:
        """Hand a running job back to the queue at once (its worker is stopping); it keeps
        its checkpoint and history, and the attempt goes on when the job is claimed again:
        it is neither failed nor counted twice."""
        with self._write.begin() as session:
            return self._touch(
                session, lease, status=JobStatus.QUEUED, attempts=Job.attempts - 1, **_unleased()
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
        values: dict[str, Any] = {"status": status, "failures": failures, **_unleased()}
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
        result = session.execute(
            update(Job)
            .where(
                Job.id == lease.job_id,
                Job.status == JobStatus.RUNNING,
                Job.lease_token == lease.token,
            )
            .values(**values),
            execution_options={"synchronize_session": False},
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _owners_in_turn(session: Session) -> Sequence[str]:
    """The owners of queued jobs, whose job is claimed first first: fewest running jobs, then
    the one whose job was claimed least recently. One user's thousand queued jobs thus wait
    their turn behind another's one, however early they were queued."""
    running = (
        select(func.count())
        .select_from(Job)
        .where(Job.owner == User.name, Job.status == JobStatus.RUNNING)
        .scalar_subquery()
    )
    waiting = select(Job.id).where(Job.owner == User.name, Job.status == JobStatus.QUEUED).exists()
    return session.scalars(
        select(User.name)
        .where(waiting)
        .order_by(running, User.last_claimed_at.asc().nulls_first(), User.name)
    ).all()


def _same_pack(key: tuple[str, int] | None, pack: tuple[str, int]) -> bool:
    return key is not None and key[0] == pack[0]


def _cancel(which: Any) -> Update:
    """Cancel the jobs matching `which` that may still be cancelled (queued or running)."""
    return (
        update(Job)
        .where(which, Job.status.in_(sources_of(JobStatus.CANCELLED)))
        .values(status=JobStatus.CANCELLED, finished_at=utcnow(), **_unleased())
    )


def _unleased() -> dict[str, Any]:
    """The values that end a claim."""
    return {"lease_token": None, "lease_expires_at": None}


def _active(session: Session, owner: str) -> int:
    """The owner's queued and running jobs, from job_counts: a few rows, not a row a job."""
    return int(
        session.scalar(
            select(func.coalesce(func.sum(JobCount.delta), 0)).where(
                JobCount.owner == owner, JobCount.status.in_([s.value for s in ACTIVE])
            )
        )
        or 0
    )


def _page(
    query: Select[Any], model: type[Job | Study], limit: int, offset: int, after: Position | None
) -> Select[Any]:
    """Newest first, from after `after`: a range of an index ending in (created_at, id),
    however deep the page."""
    if after is not None:
        created, item_id = after
        query = query.where(
            model.created_at <= created, or_(model.created_at < created, model.id < item_id)
        )
    return query.order_by(model.created_at.desc(), model.id.desc()).limit(limit).offset(offset)


def _tricks_of(job: Job) -> list[JobTrick]:
    return [JobTrick(job_id=job.id, trick=name) for name in dict.fromkeys(trick_names(job.spec))]

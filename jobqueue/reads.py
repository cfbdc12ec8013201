"""The reads behind lists, reports and event streams: pages of jobs, studies and searches, a job's
epoch metrics, and what a study's report and its followers need."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, Select, func, or_, select

from jobqueue.counts import JobCounts
from jobqueue.db import Verbs
from jobqueue.models import EpochMetrics, Job, JobTrick, Search, Study
from jobqueue.states import JobStatus

# Where a page ends: the (created_at, id) of its last item; the next page starts after it.
Position = tuple[datetime, str]
ListedT = TypeVar("ListedT", Study, Search)


class Reads(Verbs):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.counts = JobCounts(engine)

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
        trick: str | None = None,
        after: Position | None = None,
        id_prefix: str | None = None,
    ) -> tuple[Sequence[Job], int | None]:
        """A page of jobs, newest first (after `after`, the last of the page before), and the
        number of jobs matching the filters (None: any status, any owner, with or without
        any trick), from job_counts; None when filtering by trick, which nothing counts.
        `id_prefix` keeps the jobs whose id starts with it, counted by reading them: few do."""
        query = select(Job)
        if id_prefix is not None:
            query = query.where(*_starting_with(Job, id_prefix))
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
        if id_prefix is not None:
            with self._read() as session:
                return page, session.scalar(select(func.count()).select_from(query.subquery()))
        counts = self.counts.by_status(owner)
        return page, counts.get(status, 0) if status else sum(counts.values())

    def list_studies(
        self,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
        after: Position | None = None,
        id_prefix: str | None = None,
    ) -> tuple[Sequence[Study], int]:
        """A page of studies, newest first (after `after`), and how many there are (None: any
        owner's; `id_prefix`: only those whose id starts with it), counted in an index: there
        are far fewer studies than jobs."""
        return self._list(Study, limit, offset, owner, after, id_prefix)

    def list_searches(
        self,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
        after: Position | None = None,
        id_prefix: str | None = None,
    ) -> tuple[Sequence[Search], int]:
        """A page of searches, as `list_studies` gives studies."""
        return self._list(Search, limit, offset, owner, after, id_prefix)

    def _list(
        self,
        model: type[ListedT],
        limit: int,
        offset: int,
        owner: str | None,
        after: Position | None,
        id_prefix: str | None,
    ) -> tuple[Sequence[ListedT], int]:
        query = select(model)
        count = select(func.count()).select_from(model)
        if owner is not None:
            query = query.where(model.owner == owner)
            count = count.where(model.owner == owner)
        if id_prefix is not None:
            query = query.where(*_starting_with(model, id_prefix))
            count = count.where(*_starting_with(model, id_prefix))
        with self._read() as session:
            total = session.scalar(count) or 0
            page = session.scalars(_page(query, model, limit, offset, after)).all()
        return page, total

    def metrics(self, job_id: str, since_epoch: int = 0) -> Sequence[EpochMetrics]:
        with self._read() as session:
            return session.scalars(
                select(EpochMetrics)
                .where(EpochMetrics.job_id == job_id, EpochMetrics.epoch > since_epoch)
                .order_by(EpochMetrics.epoch)
            ).all()

    def study_names(self, study_ids: Sequence[str]) -> dict[str, str]:
        with self._read() as session:
            rows = session.execute(select(Study.id, Study.name).where(Study.id.in_(study_ids)))
            return {study_id: name for study_id, name in rows}

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


def _starting_with(model: type[Job | Study | Search], id_prefix: str) -> tuple[Any, ...]:
    """The ids that start with `id_prefix` (hex digits) as a range of the primary key, which
    its index finds: every such id sorts from the prefix itself up to the prefix followed by
    "g", the character after "f"."""
    return (model.id >= id_prefix, model.id < id_prefix + "g")


def _page(
    query: Select[Any],
    model: type[Job | Study | Search],
    limit: int,
    offset: int,
    after: Position | None,
) -> Select[Any]:
    """Newest first, from after `after`: a range of an index ending in (created_at, id),
    however deep the page."""
    if after is not None:
        created, item_id = after
        query = query.where(
            model.created_at <= created, or_(model.created_at < created, model.id < item_id)
        )
    return query.order_by(model.created_at.desc(), model.id.desc()).limit(limit).offset(offset)

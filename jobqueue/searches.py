"""Searches, as verbs: a search, its trials and its jobs are stored, advanced and cancelled
here. What a search does next is decided elsewhere (search.planner), inside the transaction
`advance` holds, from what it loads; its jobs are ordinary jobs."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobqueue import counts
from jobqueue.db import Verbs
from jobqueue.models import EpochMetrics, Job, Search, Trial, User, utcnow
from jobqueue.pauses import ending, promoting
from jobqueue.states import JobStatus
from jobqueue.store import JobStore, cancelling, moved, with_tricks

# A search's statuses once it has ended (search.states.ENDED, which this module cannot import).
ENDED = ("succeeded", "failed", "cancelled")


@dataclass
class Loaded:
    """A search as `advance` hands it to its `decide`: the row (locked, to be updated in
    place), its trials (likewise), its jobs by id, each trial job's validation metrics by
    epoch as (val_loss, val_accuracy), and how many more jobs the owner's quota admits."""

    search: Search
    trials: list[Trial]
    jobs: dict[str, Job]
    metrics: dict[str, dict[int, tuple[float | None, float | None]]]
    headroom: int


@dataclass
class Moves:
    """What `decide` asks of the store beyond the rows it updated in place: new rows (jobs
    made by jobqueue.store.queued, trials), paused jobs to promote (to a new epoch limit, None
    for all) and paused jobs to end where they stopped."""

    add: list[Job | Trial] = field(default_factory=list)
    promote: dict[str, int | None] = field(default_factory=dict)
    end: list[str] = field(default_factory=list)


Decide = Callable[[Loaded], Moves]


class Searches(Verbs):
    def __init__(self, jobs: JobStore) -> None:
        super().__init__(jobs.engine)
        self.max_attempts = jobs.max_attempts

    def create(self, owner: str, name: str, request: dict[str, Any]) -> Search:
        """A new search of `owner`'s, queued with no trials yet: `advance` asks the first."""
        row = Search(
            id=uuid.uuid4().hex,
            owner=owner,
            name=name,
            request=request,
            status="queued",
            created_at=utcnow(),
        )
        with self._write.begin() as session:
            session.add(row)
        return row

    def get(self, search_id: str) -> Search | None:
        with self._read() as session:
            return session.get(Search, search_id)

    def trials(self, search_id: str) -> Sequence[Trial]:
        with self._read() as session:
            return session.scalars(
                select(Trial).where(Trial.search_id == search_id).order_by(Trial.number)
            ).all()

    def jobs(self, search_id: str) -> dict[str, Job]:
        with self._read() as session:
            return {job.id: job for job in session.scalars(_jobs_of(search_id))}

    def unended(self) -> Sequence[str]:
        """The searches still to advance, oldest first."""
        with self._read() as session:
            return session.scalars(
                select(Search.id).where(Search.status.not_in(ENDED)).order_by(Search.created_at)
            ).all()

    def cancel(self, search_id: str) -> Search | None:
        """Mark the search cancelled and cancel its jobs that have not ended (paused ones
        included); finished jobs keep their results. None if there is no such search."""
        with self._write.begin() as session:
            search = session.get(Search, search_id, with_for_update=True)
            if search is None:
                return None
            if search.status not in ENDED:
                search.status, search.finished_at = "cancelled", utcnow()
                session.execute(
                    cancelling(Job.search_id == search_id),
                    execution_options={"synchronize_session": False},
                )
                # The search is not advanced again: each unfinished trial takes its job's end
                # here (one may have ended unseen just before).
                for status, state in _TRIAL_ENDS.items():
                    ended = select(Job.id).where(Job.search_id == search_id, Job.status == status)
                    session.execute(
                        update(Trial)
                        .where(
                            Trial.search_id == search_id,
                            Trial.state.in_(_UNFINISHED_TRIAL),
                            Trial.job_id.in_(ended),
                        )
                        .values(state=state)
                    )
        return search

    def advance(self, search_id: str, default_quota: int, decide: Decide) -> Search | None:
        """Load the search under its row lock, let `decide` update it and its trials and say
        what else moves, and store that, all in one transaction: two advances of one search
        take turns, and a crash between them loses nothing. `default_quota`: the active jobs
        an owner may have unless their own quota says otherwise. Returns the search as it
        then stands (None: no such search)."""
        with self._write.begin() as session:
            search = session.get(Search, search_id, with_for_update=True)
            if search is None or search.status in ENDED:
                return search
            trials = list(
                session.scalars(
                    select(Trial).where(Trial.search_id == search_id).order_by(Trial.number)
                )
            )
            jobs = {job.id: job for job in session.scalars(_jobs_of(search_id))}
            owner = search.owner or ""
            # As Quota.admit: one owner's admissions take turns, so the count stays true.
            quota = session.scalar(
                select(User.quota_active_jobs).where(User.name == owner).with_for_update()
            )
            headroom = (quota or default_quota) - counts.active(session, owner)
            loaded = Loaded(search, trials, jobs, _metrics(session, trials), headroom)
            moves = decide(loaded)
            for job in moves.add:
                if isinstance(job, Job):
                    job.search_id = search_id
            session.add_all(with_tricks([row for row in moves.add if isinstance(row, Job)]))
            session.add_all([row for row in moves.add if isinstance(row, Trial)])
            for job_id, limit in moves.promote.items():
                moved(session, promoting(job_id, limit))
            for job_id in moves.end:
                moved(session, ending(job_id))
        return search


_UNFINISHED_TRIAL = ("running", "paused", "promoted")
_TRIAL_ENDS = {
    JobStatus.CANCELLED: "cancelled",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "failed",
}


def _jobs_of(search_id: str) -> Any:
    return select(Job).where(Job.search_id == search_id)


def _metrics(
    session: Session, trials: list[Trial]
) -> dict[str, dict[int, tuple[float | None, float | None]]]:
    """The validation metrics of the trials still training or paused: a finished trial's
    values are already on its row."""
    job_ids = [t.job_id for t in trials if t.job_id and t.state in _UNFINISHED_TRIAL]
    found: dict[str, dict[int, tuple[float | None, float | None]]] = {j: {} for j in job_ids}
    if job_ids:
        rows = session.execute(
            select(
                EpochMetrics.job_id,
                EpochMetrics.epoch,
                EpochMetrics.val_loss,
                EpochMetrics.val_accuracy,
            ).where(EpochMetrics.job_id.in_(job_ids))
        )
        for job_id, epoch, val_loss, val_accuracy in rows:
            found[job_id][epoch] = (val_loss, val_accuracy)
    return found

"""How many jobs each owner has in each status, from job_counts (see models.JobCount): a few
rows a count, however long the history."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from jobqueue.db import Verbs
from jobqueue.models import JobCount
from jobqueue.states import ACTIVE, JobStatus

# job_counts' change rows the sweep lets pile up before folding them: a count reads at most
# about this many rows.
FOLD_AT = 1000


def active(session: Session, owner: str) -> int:
    """The owner's queued and running jobs."""
    return int(
        session.scalar(
            select(func.coalesce(func.sum(JobCount.delta), 0)).where(
                JobCount.owner == owner, JobCount.status.in_([s.value for s in ACTIVE])
            )
        )
        or 0
    )


class JobCounts(Verbs):
    def by_status(self, owner: str | None = None) -> dict[JobStatus, int]:
        """How many jobs there are in each status (None: everyone's)."""
        query = select(JobCount.status, func.sum(JobCount.delta)).group_by(JobCount.status)
        if owner is not None:
            query = query.where(JobCount.owner == owner)
        with self._read() as session:
            return {JobStatus(status): int(n) for status, n in session.execute(query) if n}

    def active(self, owner: str) -> int:
        """The owner's queued and running jobs."""
        with self._read() as session:
            return active(session, owner)

    def fold(self, at_least: int = FOLD_AT) -> None:
        """Sum the change rows into one per owner and status, once there are `at_least` of
        them. One DELETE … RETURNING takes exactly the rows it folds, so a change committed
        meanwhile is kept for the next fold."""
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

"""Which queued jobs a worker takes next: the owners take turns, and jobs that can train
together are taken together. The store's claim (jobqueue.store) takes what this picks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jobqueue.models import Job, User, utcnow
from jobqueue.states import JobStatus

# Queued jobs, oldest first, looked through for a claimed job's pack mates.
PACK_CANDIDATES = 256
# A job's stored spec → which jobs it can train together with (equal keys), and how many of
# them fit in one pack (the oldest job's count bounds its pack); None: it trains alone.
PackKey = Callable[[dict[str, Any]], tuple[str, int] | None]

_QUEUED = (
    select(Job.id, Job.owner, Job.spec, Job.checkpoint_epoch, Job.epoch_limit, Job.failures)
    .where(Job.status == JobStatus.QUEUED)
    .order_by(Job.created_at, Job.id)
)


def pick(session: Session, size: int = 1, key: PackKey | None = None) -> list[str]:
    """In a write transaction: the oldest queued job of the owner whose turn it is, and up to
    `size - 1` more that can train beside it (fewer if `key` says fewer fit): queued jobs of
    any owner among the next `PACK_CANDIDATES`, oldest first, with the same `key` (not None),
    checkpoint epoch and epoch limit (a pack trains its jobs in lockstep). A job with a failed
    attempt is taken alone, so a job that kills its worker takes no pack mates with it more
    than once. Marks the owner served."""
    first = None
    for owner in _owners_in_turn(session):
        # PostgreSQL: a job another worker is claiming is skipped; SQLite's BEGIN IMMEDIATE
        # suffices there.
        first = session.execute(
            _QUEUED.where(Job.owner == owner).limit(1).with_for_update(skip_locked=True)
        ).first()
        if first is not None:
            break
    if first is None:
        return []
    session.execute(update(User).where(User.name == first.owner).values(last_claimed_at=utcnow()))
    pack = key(first.spec) if key and size > 1 and not first.failures else None
    if key is None or pack is None:
        return [first.id]
    mates = [
        row.id
        for row in session.execute(_QUEUED.where(Job.id != first.id).limit(PACK_CANDIDATES))
        if not row.failures
        and row.checkpoint_epoch == first.checkpoint_epoch
        and row.epoch_limit == first.epoch_limit
        and _same_pack(key(row.spec), pack)
    ][: min(size, pack[1]) - 1]
    # Those still free (unlocked, queued): no waiting on another claim, no deadlock.
    return [
        first.id,
        *session.scalars(
            select(Job.id)
            .where(Job.id.in_(mates), Job.status == JobStatus.QUEUED)
            .order_by(Job.created_at, Job.id)
            .with_for_update(skip_locked=True)
        ),
    ]


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

"""The job lifecycle on one screen: every status and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # accepted and durable, waiting for a worker
    RUNNING = "running"  # claimed by one worker, which holds its lease token
    PAUSED = "paused"  # a search's trial at its epoch limit, checkpointed: resumed or ended
    SUCCEEDED = "succeeded"  # trained; metrics complete and the model is stored
    FAILED = "failed"  # stopped by an error, recorded with its type and message
    CANCELLED = "cancelled"  # stopped at a user's request; never resumed


TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        # back to QUEUED only when its worker stops gracefully or is lost
        {
            JobStatus.QUEUED,
            JobStatus.PAUSED,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        }
    ),
    # Its search promotes it (QUEUED, a higher limit) or ends it where it stopped (SUCCEEDED).
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

TERMINAL = frozenset(status for status, targets in TRANSITIONS.items() if not targets)
# What a user's quota counts: the jobs waiting for a worker or training. A paused trial holds
# no worker; its search keeps its own number of trials in flight within the quota.
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
CANCELLABLE = frozenset(s for s, targets in TRANSITIONS.items() if JobStatus.CANCELLED in targets)


def can_transition(source: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[source]


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """The statuses a job may be in for a move to `target`: the guard of a compare-and-set."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)

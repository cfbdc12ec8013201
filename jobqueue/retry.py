"""Whether a failed attempt is retried: a pure decision, apart from the mechanism."""

from __future__ import annotations

from enum import StrEnum

from jobqueue.states import JobStatus


class FailureReason(StrEnum):
    WORKER_LOST = "worker_lost"  # the lease expired: process killed, machine gone, frozen
    INVALID_DATA = "invalid_data"  # missing or malformed dataset, or a split it cannot give
    DIVERGED = "diverged"  # the loss became NaN or infinite
    INVALID_SPEC = "invalid_spec"  # the stored spec cannot be read or trained
    TIMEOUT = "timeout"  # trained longer than TRICKLAB_MAX_JOB_SECONDS over its attempts
    ERROR = "error"  # anything else; may be transient (disk full, out of memory, ...)


# Retrying these would fail the same way.
PERMANENT = frozenset(
    {
        FailureReason.INVALID_DATA,
        FailureReason.DIVERGED,
        FailureReason.INVALID_SPEC,
        FailureReason.TIMEOUT,
    }
)


def after_failure(reason: FailureReason, failures: int, max_attempts: int) -> JobStatus:
    """Where a job goes after its `failures`-th failed attempt (this one included)."""
    if reason in PERMANENT or failures >= max_attempts:
        return JobStatus.FAILED
    return JobStatus.QUEUED

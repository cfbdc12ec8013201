"""A search's life and its trials' on one screen."""

from __future__ import annotations

from enum import StrEnum


class SearchStatus(StrEnum):
    QUEUED = "queued"  # trials queued, none started yet
    SEARCHING = "searching"  # trials sampled, trained, paused and promoted
    CONFIRMING = "confirming"  # the best configurations and the base on fresh seeds
    SUCCEEDED = "succeeded"  # every confirmation job succeeded: the report is complete
    FAILED = "failed"  # no trial completed, or a confirmation job failed
    CANCELLED = "cancelled"  # at its owner's request; its jobs were cancelled


ENDED = frozenset({SearchStatus.SUCCEEDED, SearchStatus.FAILED, SearchStatus.CANCELLED})


class TrialState(StrEnum):
    RUNNING = "running"  # its job is queued or training towards its first rung
    PAUSED = "paused"  # stopped at a rung, checkpointed: may still be promoted
    PROMOTED = "promoted"  # resumed from its checkpoint towards the next rung
    PRUNED = "pruned"  # the search phase ended with it paused: its job ended at that rung
    COMPLETED = "completed"  # trained every epoch (or early stopping ended it)
    FAILED = "failed"  # its spec was invalid or over a limit, or its job failed
    CANCELLED = "cancelled"  # its job was cancelled, or the search was


FINAL = frozenset(
    {TrialState.PRUNED, TrialState.COMPLETED, TrialState.FAILED, TrialState.CANCELLED}
)
# Those whose job waits for a worker or trains: what max_concurrent_trials bounds.
IN_FLIGHT = frozenset({TrialState.RUNNING, TrialState.PROMOTED})

import pytest

from jobqueue.retry import PERMANENT, FailureReason, after_failure
from jobqueue.states import JobStatus


@pytest.mark.parametrize("reason", [FailureReason.WORKER_LOST, FailureReason.ERROR])
def test_transient_failures_are_retried_until_max_attempts(reason):
    assert [after_failure(reason, n, max_attempts=3) for n in (1, 2, 3, 4)] == [
        JobStatus.QUEUED,
        JobStatus.QUEUED,
        JobStatus.FAILED,
        JobStatus.FAILED,
    ]


@pytest.mark.parametrize("reason", sorted(PERMANENT))
def test_failures_that_would_repeat_fail_at_once(reason):
    assert after_failure(reason, 1, max_attempts=3) == JobStatus.FAILED


def test_a_single_attempt_budget_never_retries():
    assert after_failure(FailureReason.WORKER_LOST, 1, max_attempts=1) == JobStatus.FAILED

"""The job counts by owner and status (job_counts and its triggers), against real databases."""

from sqlalchemy import func, select

from core.spec import JobSpec
from jobqueue.accounts import Accounts
from jobqueue.counts import JobCounts
from jobqueue.models import ADMIN, Job, JobCount
from jobqueue.retry import FailureReason
from jobqueue.states import JobStatus
from jobqueue.store import JobStore
from jobqueue.studies import Studies
from tests.support.data import RESULT


def truth(store: JobStore) -> dict:
    """Counts by owner and status as a scan of jobs finds them."""
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(Job.owner, Job.status, func.count()).group_by(Job.owner, Job.status)
        )
        return {(owner, status): n for owner, status, n in rows}


def counted(store: JobStore, owners) -> dict:
    return {(o, s): n for o in owners for s, n in JobCounts(store.engine).by_status(o).items()}


def test_counts_by_status_follow_every_move_and_survive_folding(any_store, any_reads):
    Accounts(any_store.engine).create_user("bob", "user", None)
    for seed in range(6):
        any_store.enqueue(JobSpec(seed=seed), ADMIN if seed % 2 else "bob")
    studies = Studies(any_store)
    studies.create("bob", "s", {}, [1, 2], [({"name": "v"}, [JobSpec(), JobSpec(seed=1)])])
    any_store.enqueue(JobSpec(), ADMIN)
    finished = any_store.claim("w", "CPU")[1]
    any_store.finish(finished, result=RESULT)
    failed = any_store.claim("w", "CPU")[1]
    any_store.fail(failed, FailureReason.ERROR, RuntimeError("boom"))  # back to the queue
    handed_back = any_store.claim("w", "CPU")[1]
    any_store.release(handed_back)
    any_store.cancel(any_reads.list_jobs(JobStatus.QUEUED, 1)[0][0].id)
    any_store.claim("w", "CPU")  # left running
    assert counted(any_store, [ADMIN, "bob"]) == truth(any_store)
    assert sum(JobCounts(any_store.engine).by_status().values()) == 9
    assert any_reads.list_jobs(owner="bob")[1] == 5
    JobCounts(any_store.engine).fold(at_least=1)
    with any_store.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(JobCount)) == len(
            truth(any_store)
        )
    assert counted(any_store, [ADMIN, "bob"]) == truth(any_store)

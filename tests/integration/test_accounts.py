"""Users' quotas against real databases (tokens and users through the API: test_auth.py)."""

from concurrent.futures import ThreadPoolExecutor

from core.spec import JobSpec
from jobqueue.accounts import Accounts, Quota, QuotaExceeded
from jobqueue.counts import JobCounts


def test_a_quota_holds_under_concurrent_submissions(any_store):
    Accounts(any_store.engine).create_user("alice", "user", None)

    def submit(seed: int) -> bool:
        try:
            any_store.enqueue(JobSpec(seed=seed), "alice", admit=Quota(5).admit)
        except QuotaExceeded:
            return False
        return True

    with ThreadPoolExecutor(16) as pool:
        accepted = list(pool.map(submit, range(32)))
    assert sum(accepted) == 5 == JobCounts(any_store.engine).active("alice")

"""Studies' verbs against real databases: a study and its jobs are stored together, refused
together, and cancelled together."""

import pytest

from core.spec import JobSpec
from jobqueue.accounts import Accounts, Quota, QuotaExceeded
from jobqueue.counts import JobCounts
from jobqueue.models import ADMIN
from jobqueue.reads import Reads
from jobqueue.states import JobStatus
from jobqueue.studies import Studies
from tests.support.data import RESULT

VARIANTS = [
    ({"name": "base", "tricks": []}, [JobSpec(seed=1), JobSpec(seed=2)]),
    ({"name": "+dropout", "tricks": ["dropout"]}, [JobSpec(seed=1, tricks=["dropout"])]),
]


def test_a_study_stores_its_jobs_queued_each_knowing_its_study(any_store):
    study = Studies(any_store).create(ADMIN, "s", {"repeats": 2}, [1, 2], VARIANTS)
    stored = Studies(any_store).get(study.id)
    assert [v["name"] for v in stored.variants] == ["base", "+dropout"]
    assert [len(v["jobs"]) for v in stored.variants] == [2, 1]
    jobs = [any_store.get(job_id) for job_id in stored.job_ids]
    assert {(job.status, job.study_id, job.owner) for job in jobs} == {
        (JobStatus.QUEUED, study.id, ADMIN)
    }
    assert [job.spec["seed"] for job in jobs] == [1, 2, 1]
    dropout = Reads(any_store.engine).list_jobs(trick="dropout")[0]
    assert [job.id for job in dropout] == stored.variants[1]["jobs"]
    assert Studies(any_store).get("0" * 32) is None


def test_a_study_over_the_quota_is_refused_whole(any_store):
    Accounts(any_store.engine).create_user("alice", "user", None)
    any_store.enqueue(JobSpec(), "alice")
    with pytest.raises(QuotaExceeded, match=r"alice has 1 active .* 3 jobs more would pass it"):
        Studies(any_store).create("alice", "s", {}, [1, 2], VARIANTS, Quota(3).admit)
    assert Reads(any_store.engine).list_studies(owner="alice") == ([], 0)
    assert JobCounts(any_store.engine).active("alice") == 1
    Studies(any_store).create("alice", "s", {}, [1, 2], VARIANTS, Quota(4).admit)
    assert JobCounts(any_store.engine).active("alice") == 4


def test_cancelling_a_study_cancels_its_active_jobs_and_keeps_the_finished(any_store):
    studies = Studies(any_store)
    study = studies.create(ADMIN, "s", {}, [1, 2], VARIANTS)
    finished, lease = any_store.claim("w", "CPU")
    any_store.finish(lease, result=RESULT)
    running, _ = any_store.claim("w", "CPU")
    cancelled = studies.cancel(study.id)
    assert cancelled.cancelled_at is not None
    statuses = Reads(any_store.engine).statuses(study.job_ids)
    assert statuses == {
        finished.id: JobStatus.SUCCEEDED,
        running.id: JobStatus.CANCELLED,
        study.job_ids[2]: JobStatus.CANCELLED,
    }
    assert studies.cancel(study.id).cancelled_at == cancelled.cancelled_at  # again: no change
    assert studies.cancel("0" * 32) is None

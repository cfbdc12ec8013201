"""The job verbs against real databases: a SQLite file, and PostgreSQL where configured."""

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.results import EpochRow
from core.spec import JobSpec
from jobqueue.accounts import Accounts
from jobqueue.db import init_db, make_engine
from jobqueue.models import ADMIN
from jobqueue.reads import Reads
from jobqueue.retry import FailureReason
from jobqueue.states import JobStatus
from jobqueue.store import Checkpoint, IdempotencyConflict, JobStore, Lease
from tests.support.data import EPOCH, RESULT


def record(store: JobStore, lease: Lease, epoch: int) -> bool:
    checkpoint = Checkpoint(epoch, f"jobs/{lease.job_id}/{epoch}.npz", "0" * 64)
    return store.record_epoch(lease, EpochRow(epoch=epoch, **EPOCH), checkpoint, 1.5 * epoch)


def claimed(store: JobStore, spec: JobSpec | None = None) -> Lease:
    store.enqueue(spec or JobSpec(), ADMIN)
    return store.claim("w", "CPU")[1]


def test_enqueue_then_get_returns_the_resolved_spec(any_store):
    job, created = any_store.enqueue(JobSpec.model_validate({"tricks": ["momentum"]}), ADMIN)
    stored = any_store.get(job.id)
    assert created and stored.status == JobStatus.QUEUED
    assert stored.spec["learning_rate"] == 0.01
    assert (stored.max_attempts, stored.failures) == (3, [])
    assert stored.created_at.tzinfo is not None
    assert any_store.get("nope") is None


def test_claim_takes_the_oldest_job_counts_an_attempt_and_leases_it(any_store):
    first, second = any_store.enqueue(JobSpec(), ADMIN)[0], any_store.enqueue(JobSpec(), ADMIN)[0]
    job, lease = any_store.claim("w1", "CPU")
    assert job.id == first.id and (lease.job_id, lease.attempt) == (first.id, 1)
    assert (job.status, job.attempts, job.worker, job.device) == (JobStatus.RUNNING, 1, "w1", "CPU")
    assert job.lease_expires_at > job.heartbeat_at
    assert any_store.claim("w2", "CPU")[0].id == second.id
    assert any_store.claim("w3", "CPU") is None


def by_width(spec: dict) -> tuple[str, int]:
    """A stand-in for the worker's pack key: jobs of one width train together, as many as
    the spec's `batch_size` says (a stand-in for the memory budget)."""
    return str(spec["hidden_units"]), spec["batch_size"]


def test_a_pack_is_the_oldest_job_and_its_oldest_compatible_mates(any_store):
    ids = [
        any_store.enqueue(JobSpec(seed=seed, hidden_units=[width]), ADMIN)[0].id
        for seed, width in enumerate([8, 16, 8, 8, 8])
    ]
    pack = any_store.claim_pack("w1", "CPU", 3, by_width)
    assert [job.id for job, _ in pack] == [ids[0], ids[2], ids[3]]
    assert all(job.status == JobStatus.RUNNING and job.attempts == 1 for job, _ in pack)
    assert [lease.job_id for _, lease in pack] == [job.id for job, _ in pack]
    assert len({lease.token for _, lease in pack}) == 3  # each job fenced on its own
    assert [job.id for job, _ in any_store.claim_pack("w2", "CPU", 3, by_width)] == [ids[1]]
    assert [job.id for job, _ in any_store.claim_pack("w2", "CPU", 3, by_width)] == [ids[4]]
    assert any_store.claim_pack("w2", "CPU", 3, by_width) == []


def test_a_failed_or_checkpointed_job_is_packed_only_with_its_kind(any_store):
    ids = [any_store.enqueue(JobSpec(seed=seed), ADMIN)[0].id for seed in range(6)]
    failed, *checkpointed = (any_store.claim("w", "CPU")[1] for _ in range(3))
    any_store.fail(failed, FailureReason.ERROR, RuntimeError("out of memory"))
    for lease in checkpointed:
        record(any_store, lease, 1)
        any_store.release(lease)

    def pack() -> list[str]:
        return [job.id for job, _ in any_store.claim_pack("w", "CPU", 8, by_width)]

    # One crash already took its pack down: the job that failed trains alone from now on.
    assert pack() == [ids[0]]
    assert pack() == ids[1:3]  # resumed from epoch 1 together, not with fresh jobs
    assert pack() == ids[3:]


def test_epochs_and_checkpoints_are_recorded_only_under_the_current_lease(any_store, any_reads):
    lease = claimed(any_store)
    assert record(any_store, lease, 1)
    assert not record(any_store, Lease(lease.job_id, "forged", 1), 2)
    assert [(m.epoch, m.attempt) for m in any_reads.metrics(lease.job_id)] == [(1, 1)]
    job = any_store.get(lease.job_id)
    assert (job.epochs_done, job.checkpoint_epoch) == (1, 1)
    assert record(any_store, lease, 2)
    assert [m.epoch for m in any_reads.metrics(lease.job_id, since_epoch=1)] == [2]


def test_heartbeats_renew_the_lease(any_store):
    lease = claimed(any_store)
    before = any_store.get(lease.job_id).lease_expires_at
    time.sleep(0.01)
    assert any_store.heartbeat(lease)
    assert any_store.get(lease.job_id).lease_expires_at > before
    assert not any_store.heartbeat(Lease(lease.job_id, "forged", 1))


def test_an_expired_lease_puts_the_job_back_and_fences_out_its_worker(any_store, any_reads):
    lease = claimed(any_store)
    record(any_store, lease, 1)
    assert any_store.requeue_expired() == []  # still leased
    time.sleep(0.6)
    assert any_store.requeue_expired() == [(lease.job_id, JobStatus.QUEUED)]
    job = any_store.get(lease.job_id)
    assert (job.status, job.lease_token, job.checkpoint_epoch) == (JobStatus.QUEUED, None, 1)
    assert [f["reason"] for f in job.failures] == ["worker_lost"]
    # The lost worker wakes up: every write it tries is refused.
    assert not any_store.heartbeat(lease)
    assert not record(any_store, lease, 2)
    assert not any_store.finish(lease, result=RESULT)
    # The next claim resumes after the checkpoint, with the history intact.
    job, _ = any_store.claim("w2", "CPU")
    assert (job.attempts, job.checkpoint_epoch) == (2, 1)
    assert [m.epoch for m in any_reads.metrics(job.id)] == [1]


def test_lost_workers_count_as_attempts_until_the_job_fails(any_store):
    lease = claimed(any_store)
    for attempt in (1, 2, 3):
        time.sleep(0.6)
        status = JobStatus.QUEUED if attempt < 3 else JobStatus.FAILED
        assert any_store.requeue_expired() == [(lease.job_id, status)]
        if attempt < 3:
            lease = any_store.claim("w", "CPU")[1]
    job = any_store.get(lease.job_id)
    assert (job.attempts, job.failure_reason, job.error_type) == (3, "worker_lost", "WorkerLost")
    assert [f["attempt"] for f in job.failures] == [1, 2, 3]


def test_errors_that_would_repeat_fail_at_once(any_store):
    lease = claimed(any_store)
    assert (
        any_store.fail(lease, FailureReason.INVALID_DATA, ValueError("no such file"))
        == JobStatus.FAILED
    )
    job = any_store.get(lease.job_id)
    assert (job.status, job.failure_reason, job.error_type, job.error_message) == (
        JobStatus.FAILED,
        "invalid_data",
        "ValueError",
        "no such file",
    )
    assert job.finished_at is not None and job.lease_token is None


def test_other_errors_are_retried(any_store):
    lease = claimed(any_store)
    assert any_store.fail(lease, FailureReason.ERROR, OSError("disk full")) == JobStatus.QUEUED
    assert any_store.fail(lease, FailureReason.ERROR, OSError("again")) is None  # lease gone
    job = any_store.get(lease.job_id)
    assert job.status == JobStatus.QUEUED and job.failures[0]["message"] == "disk full"


def test_cancel_is_final_and_fences_out_the_worker(any_store):
    lease = claimed(any_store)
    assert any_store.cancel(lease.job_id).status == JobStatus.CANCELLED
    assert not any_store.heartbeat(lease)
    assert not record(any_store, lease, 1)
    assert not any_store.finish(lease, result=RESULT)
    assert any_store.fail(lease, FailureReason.ERROR, RuntimeError("late")) is None
    assert not any_store.release(lease)
    time.sleep(0.6)
    assert any_store.requeue_expired() == []  # never retried
    assert any_store.get(lease.job_id).status == JobStatus.CANCELLED
    assert any_store.cancel("nope") is None


def test_cancel_racing_completion_ends_in_exactly_one_terminal_state(any_store):
    for _ in range(10):
        lease = claimed(any_store)
        barrier = threading.Barrier(2)

        def finish(lease=lease, barrier=barrier):
            barrier.wait()
            return any_store.finish(lease, result=RESULT)

        def cancel(lease=lease, barrier=barrier):
            barrier.wait()
            return any_store.cancel(lease.job_id).status == JobStatus.CANCELLED

        with ThreadPoolExecutor(2) as pool:
            finishing, cancelling = pool.submit(finish), pool.submit(cancel)
            finished, cancelled = finishing.result(timeout=30), cancelling.result(timeout=30)
        final = any_store.get(lease.job_id).status
        assert finished != cancelled
        assert final == (JobStatus.SUCCEEDED if finished else JobStatus.CANCELLED)


def test_release_hands_the_job_back_with_its_checkpoint(any_store, any_reads):
    lease = claimed(any_store)
    record(any_store, lease, 1)
    assert any_store.release(lease)
    job = any_store.get(lease.job_id)
    assert (job.status, job.lease_token, job.failures, job.checkpoint_epoch) == (
        JobStatus.QUEUED,
        None,
        [],
        1,
    )
    # The attempt goes on: a graceful hand-back is neither a failure nor a second attempt.
    assert (job.attempts, job.max_attempts, job.trained_seconds) == (0, 3, 1.5)
    again, lease = any_store.claim("w2", "CPU")
    assert (again.id, again.attempts, lease.attempt) == (job.id, 1, 1)
    assert [m.epoch for m in any_reads.metrics(job.id)] == [1]
    for _ in range(5):  # however often it is handed back
        assert any_store.release(lease)
        again, lease = any_store.claim("w2", "CPU")
    assert again.attempts == 1


def test_a_pack_holds_no_more_jobs_than_its_key_says_fit(any_store):
    ids = [any_store.enqueue(JobSpec(seed=seed, batch_size=2), ADMIN)[0].id for seed in range(5)]
    assert [job.id for job, _ in any_store.claim_pack("w", "CPU", 8, by_width)] == ids[:2]
    assert [job.id for job, _ in any_store.claim_pack("w", "CPU", 1, by_width)] == ids[2:3]


def test_only_an_ended_job_has_its_files_deleted_and_it_keeps_its_history(any_store, any_reads):
    lease = claimed(any_store)
    record(any_store, lease, 1)
    running = any_store.delete_artifacts(lease.job_id)
    assert (running.status, running.artifacts_deleted_at) == (JobStatus.RUNNING, None)
    any_store.finish(lease, result=RESULT, model_path="jobs/x/model.keras")
    deleted = any_store.delete_artifacts(lease.job_id)
    assert deleted.artifacts_deleted_at is not None
    assert (deleted.model_path, deleted.checkpoint_path, deleted.result) == (
        None,
        None,
        RESULT,
    )
    assert [m.epoch for m in any_reads.metrics(lease.job_id)] == [1]
    again = any_store.delete_artifacts(lease.job_id)  # idempotent: the first time is kept
    assert again.artifacts_deleted_at == deleted.artifacts_deleted_at
    assert any_store.delete_artifacts("nope") is None


def test_forgetting_a_checkpoint_starts_the_history_over(any_store, any_reads):
    lease = claimed(any_store)
    record(any_store, lease, 1)
    assert any_store.forget_checkpoint(lease)
    job = any_store.get(lease.job_id)
    assert (job.epochs_done, job.checkpoint_epoch, list(any_reads.metrics(job.id))) == (0, None, [])


def test_idempotency_key_returns_the_first_job_even_under_concurrency(any_store, any_reads):
    spec = JobSpec(seed=5)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: any_store.enqueue(spec, ADMIN, "key-1"), range(16)))
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert any_reads.list_jobs()[1] == 1
    with pytest.raises(IdempotencyConflict, match="'key-1' was already used for job"):
        any_store.enqueue(JobSpec(seed=6), ADMIN, "key-1")


def claim_all(url: str, worker: str, results) -> None:
    store = JobStore(make_engine(url))
    claimed = []
    while pack := store.claim_pack(worker, "CPU", 3, by_width):
        for job, lease in pack:
            claimed.append(job.id)
            store.finish(lease, result=RESULT)
    results.put(claimed)


def test_racing_worker_processes_never_claim_the_same_job_in_packs(database_url):
    engine = make_engine(database_url)
    init_db(engine)
    store = JobStore(engine)
    # Three interleaved kinds: each pack skips over the others' jobs.
    ids = {
        store.enqueue(JobSpec(seed=i, hidden_units=[8 + i % 3]), ADMIN)[0].id for i in range(200)
    }
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=claim_all, args=(database_url, f"w{n}", results)) for n in range(4)
    ]
    for process in processes:
        process.start()
    claimed = [job_id for _ in processes for job_id in results.get(timeout=120)]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert len(claimed) == len(set(claimed)) == len(ids)
    assert set(claimed) == ids
    assert Reads(engine).list_jobs(status=JobStatus.SUCCEEDED)[1] == len(ids)


def test_claims_go_round_the_owners_so_that_a_backlog_starves_nobody(any_store):
    accounts = Accounts(any_store.engine)
    for name in ("alice", "bob"):
        accounts.create_user(name, "user", None)
    for seed in range(20):  # alice's backlog, queued first
        any_store.enqueue(JobSpec(seed=seed), "alice")
    any_store.enqueue(JobSpec(seed=99), "bob")

    def claim_and_finish() -> str:
        job, lease = any_store.claim("w", "CPU")
        any_store.finish(lease, result=RESULT)
        return job.owner

    # One job at a time: bob's one job is the second claimed, not the twenty-first.
    assert [claim_and_finish() for _ in range(4)] == ["alice", "bob", "alice", "alice"]
    # Fewest running first, before whose turn it is: bob holds a job, so alice goes first,
    # though bob was served less recently.
    any_store.enqueue(JobSpec(seed=100), "bob")
    any_store.enqueue(JobSpec(seed=101), "bob")
    held, _ = any_store.claim("w1", "CPU")
    assert held.owner == "bob"
    assert any_store.claim("w2", "CPU")[0].owner == "alice"

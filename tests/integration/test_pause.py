"""A search's trial pauses at its epoch limit, checkpointed, and is promoted (it trains on as
if it had never stopped), ended where it stopped, or cancelled: through the store's verbs, an
in-process worker on tiny data, and the API."""

import re

import keras
import numpy as np
from sqlalchemy import update

from core.results import EpochRow
from core.spec import JobSpec
from jobqueue.artifacts import ArtifactStore
from jobqueue.models import ADMIN, Job
from jobqueue.pauses import Pauses
from jobqueue.retry import FailureReason
from jobqueue.states import JobStatus
from jobqueue.store import Checkpoint, JobStore
from tests.support.data import EPOCH, RESULT, TINY
from tests.support.inprocess import drain_queue
from worker.loop import Worker


def trial(store: JobStore, spec: JobSpec, epoch_limit: int | None, search_id: str = "s1") -> str:
    """A queued job of a search, to train up to `epoch_limit`, as its planner queues it."""
    job = store.enqueue(spec, ADMIN)[0]
    with store.engine.begin() as connection:
        connection.execute(
            update(Job).where(Job.id == job.id).values(epoch_limit=epoch_limit, search_id=search_id)
        )
    return job.id


def paused_by_hand(store: JobStore, epochs: int = 1) -> str:
    """A job paused after `epochs` epochs through the worker's verbs, without training."""
    job_id = trial(store, JobSpec.model_validate({**TINY, "epochs": 4}), epochs)
    lease = store.claim("w", "CPU")[1]
    for epoch in range(1, epochs + 1):
        checkpoint = Checkpoint(epoch, f"jobs/{job_id}/{epoch}.npz", "0" * 64)
        assert store.record_epoch(lease, EpochRow(epoch=epoch, **EPOCH), checkpoint, 1.0)
    assert Pauses(store).pause(lease, RESULT, 1, f"jobs/{job_id}/model.keras", "1" * 64)
    assert not Pauses(store).pause(lease, RESULT)  # once: the lease is gone with the pause
    return job_id


def rows(reads, job_id):
    """A job's stored epochs, every column but the time they took."""
    columns = [key for key in EPOCH if key != "seconds"]
    return [(m.epoch, *(getattr(m, key) for key in columns)) for m in reads.metrics(job_id)]


def weights(settings, job):
    return keras.saving.load_model(settings.artifacts_dir / job.model_path).get_weights()


def test_a_paused_and_promoted_exact_job_trains_as_if_it_had_never_stopped(settings, store, reads):
    spec = JobSpec.model_validate(
        {**TINY, "epochs": 4, "exact": True, "tricks": ["dropout", "batch_norm", "momentum"]}
    )
    limited, straight = trial(store, spec, 2), trial(store, spec, None)
    drain_queue(settings)

    paused = store.get(limited)
    assert paused.status == JobStatus.PAUSED
    assert (paused.epochs_done, paused.checkpoint_epoch, paused.result.epochs_trained) == (2, 2, 2)
    assert paused.lease_token is None and paused.finished_at is None
    assert paused.checkpoint_path and paused.model_path and paused.best_epoch in (1, 2)
    assert [m.epoch for m in reads.metrics(limited)] == [1, 2]

    assert Pauses(store).promote(limited, None)
    assert not Pauses(store).promote(limited, None)  # no longer paused
    promoted = store.get(limited)
    assert (promoted.status, promoted.epoch_limit, promoted.result) == (
        JobStatus.QUEUED,
        None,
        None,
    )
    drain_queue(settings)

    resumed, whole = store.get(limited), store.get(straight)
    assert resumed.status == whole.status == JobStatus.SUCCEEDED
    assert rows(reads, limited) == rows(reads, straight)
    assert resumed.result.model_dump(exclude={"seconds"}) == whole.result.model_dump(
        exclude={"seconds"}
    )
    for resumed_weights, whole_weights in zip(
        weights(settings, resumed), weights(settings, whole), strict=True
    ):
        np.testing.assert_array_equal(resumed_weights, whole_weights)
    # One attempt, resumed after the pause: no failure, and no second attempt.
    assert (resumed.attempts, resumed.failures) == (1, [])
    assert [m.attempt for m in reads.metrics(limited)] == [1] * 4


def test_a_pack_of_jobs_with_the_same_limit_pauses_together(settings, store, reads, caplog):
    specs = [JobSpec.model_validate({**TINY, "epochs": 3, "seed": seed}) for seed in range(4)]
    together = [trial(store, spec, 1) for spec in specs[:3]]
    later = trial(store, specs[3], 2)  # of the same pack key, but another limit
    caplog.set_level("INFO", logger="tricklab.worker")
    worker = Worker(store, ArtifactStore(settings.artifacts_dir), settings.data_dir, pack_size=8)
    assert worker.run_one()

    assert store.get(later).status == JobStatus.QUEUED  # not a mate of theirs
    for job_id in together:
        job = store.get(job_id)
        assert (job.status, job.epochs_done, job.checkpoint_epoch) == (JobStatus.PAUSED, 1, 1)
        assert re.search(rf"job={job_id} claimed .* pack=3", caplog.text)
        assert f"job={job_id} paused epochs=1" in caplog.text
        assert Pauses(store).promote(job_id, None)

    assert worker.run_one() and worker.run_one()  # the three, resumed together; `later` alone
    for job_id in together:
        job = store.get(job_id)
        assert (job.status, job.result.epochs_trained) == (JobStatus.SUCCEEDED, 3)
        assert [m.epoch for m in reads.metrics(job_id)] == [1, 2, 3]
        assert len(re.findall(rf"job={job_id} claimed .* pack=3", caplog.text)) == 2
    assert store.get(later).status == JobStatus.PAUSED


def test_early_stopping_before_the_limit_ends_the_job_as_always(settings, store):
    spec = {
        **TINY,
        "epochs": 40,
        "tricks": [{"name": "early_stopping", "patience": 2, "min_delta": 0.05}],
    }
    job_id = trial(store, JobSpec.model_validate(spec), 39)
    drain_queue(settings)

    done = store.get(job_id)
    assert done.status == JobStatus.SUCCEEDED
    assert done.stopped_epoch == done.best_epoch + 2 == done.result.epochs_trained < 39


def test_a_pause_is_no_failed_attempt(any_store):
    store = JobStore(any_store.engine, max_attempts=2)
    job_id = trial(store, JobSpec(), 1)
    lease = store.claim("w", "CPU")[1]
    assert Pauses(store).pause(lease, RESULT)
    paused = store.get(job_id)
    assert (paused.status, paused.attempts, paused.failures) == (JobStatus.PAUSED, 1, [])

    assert Pauses(store).promote(job_id, 2)
    _, lease = store.claim("w", "CPU")
    assert lease.attempt == 1  # the attempt goes on
    # Its first failure, of two allowed: retried, as if it had never paused.
    assert store.fail(lease, FailureReason.ERROR, RuntimeError("out of memory")) == JobStatus.QUEUED
    assert [f["attempt"] for f in store.get(job_id).failures] == [1]


def test_end_paused_succeeds_where_it_stopped(any_store):
    job_id = paused_by_hand(any_store, epochs=2)
    assert not Pauses(any_store).end_paused(trial(any_store, JobSpec(), 1))  # queued: not paused
    assert Pauses(any_store).end_paused(job_id)
    assert not Pauses(any_store).end_paused(job_id)

    job = any_store.get(job_id)
    assert (job.status, job.stopped_epoch, job.best_epoch) == (JobStatus.SUCCEEDED, 2, 1)
    assert job.finished_at is not None and job.result == RESULT
    assert (job.model_path, job.checkpoint_epoch) == (f"jobs/{job_id}/model.keras", 2)
    assert not Pauses(any_store).promote(job_id, None)


def test_a_paused_job_is_shown_paused_and_cancellable_over_http(client, store):
    job_id = paused_by_hand(store)
    shown = client.get(f"/v1/jobs/{job_id}").json()
    assert (shown["status"], shown["epoch_limit"], shown["epochs_done"]) == ("paused", 1, 1)
    listed = client.get("/v1/jobs", params={"status": "paused"}).json()["jobs"]
    assert [job["id"] for job in listed] == [job_id]

    cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert not Pauses(store).promote(job_id, None)  # cancelled is for good


def test_the_worker_tells_the_search_when_its_job_settles(settings, store, caplog):
    told = []

    def planner(search_id):
        told.append(search_id)
        raise RuntimeError("the planner broke")

    spec = JobSpec.model_validate(TINY)
    paused, finished = trial(store, spec, 1, "s1"), trial(store, spec, None, "s2")
    alone = store.enqueue(spec, ADMIN)[0].id  # of no search
    worker = Worker(
        store, ArtifactStore(settings.artifacts_dir), settings.data_dir, on_search_job=planner
    )
    while worker.run_one():
        pass

    assert [store.get(i).status for i in (paused, finished, alone)] == [
        JobStatus.PAUSED,
        JobStatus.SUCCEEDED,
        JobStatus.SUCCEEDED,
    ]
    assert told == ["s1", "s2"]
    assert "the planner broke" in caplog.text  # logged; the worker went on

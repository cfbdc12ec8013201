"""The worker in-process against a real SQLite file and tiny IDX files."""

import json

import keras
import numpy as np
import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from core import cost
from core.config import get_settings
from core.results import EpochRow
from core.spec import JobSpec
from jobqueue.artifacts import ArtifactStore, sha256_of
from jobqueue.models import ADMIN, Job
from jobqueue.states import JobStatus
from jobqueue.store import Checkpoint
from tests.support.data import EPOCH, TINY, write_dataset
from tests.support.inprocess import drain_queue
from worker.__main__ import main
from worker.loop import Worker


@pytest.fixture
def env_settings(settings, monkeypatch):
    """Point `python -m worker`'s configuration (TRICKLAB_* variables) at the test's files."""
    for name in ("database_url", "artifacts_dir", "data_dir"):
        monkeypatch.setenv(f"TRICKLAB_{name.upper()}", str(getattr(settings, name)))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_once_trains_a_job_records_every_epoch_and_stores_the_model(env_settings, store, reads):
    spec = {**TINY, "epochs": 3, "tricks": [{"name": "dropout", "rate": 0.2}]}
    job = store.enqueue(JobSpec.model_validate(spec), ADMIN)[0]
    assert main(["--once"]) == 0

    done = store.get(job.id)
    assert done.status == JobStatus.SUCCEEDED, done.error_message
    assert (done.attempts, done.epochs_done, done.stopped_epoch) == (1, 3, None)
    assert done.device.startswith("CPU")
    assert done.result.test_accuracy >= 0.9  # the tiny classes are easy
    epochs = reads.metrics(job.id)
    assert [m.epoch for m in epochs] == [1, 2, 3]
    for m in epochs:
        assert (
            0 <= m.test_accuracy <= 1 and m.seconds > 0 and m.learning_rate == pytest.approx(0.01)
        )
        assert m.val_loss is not None and m.train_objective == pytest.approx(m.train_loss, rel=1e-3)
    assert done.best_epoch == 1 + int(np.argmin([m.val_loss for m in epochs]))

    model_file = env_settings.artifacts_dir / done.model_path
    assert sha256_of(model_file) == done.model_sha256
    sidecar = json.loads((model_file.parent / "spec.json").read_text())
    assert sidecar["spec"] == done.spec and sidecar["model_sha256"] == done.model_sha256
    model = keras.saving.load_model(model_file)
    assert model.count_params() == done.result.parameters


def test_once_with_an_empty_queue_exits(env_settings):
    assert main(["--once"]) == 0


def test_early_stopping_stops_and_restores_the_best_epoch(settings, store, reads):
    spec = {
        **TINY,
        "epochs": 40,
        "tricks": [{"name": "early_stopping", "patience": 2, "min_delta": 0.05}],
    }
    job = store.enqueue(JobSpec.model_validate(spec), ADMIN)[0]
    drain_queue(settings)

    done = store.get(job.id)
    epochs = reads.metrics(job.id)
    assert done.status == JobStatus.SUCCEEDED
    assert done.stopped_epoch == done.best_epoch + 2 < 40
    assert [m.epoch for m in epochs] == list(range(1, done.stopped_epoch + 1))
    # The saved model holds the best epoch's weights, not the last epoch's.
    best = epochs[done.best_epoch - 1]
    assert done.result.val_loss == pytest.approx(best.val_loss, rel=1e-4)
    assert done.result.test_accuracy == pytest.approx(best.test_accuracy, abs=1e-6)


@pytest.mark.equivalence
def test_the_same_spec_and_seed_reproduce_the_same_run(settings, store, reads):
    spec = JobSpec.model_validate({**TINY, "tricks": ["dropout", "augmentation"], "seed": 7})
    first, second = store.enqueue(spec, ADMIN)[0], store.enqueue(spec, ADMIN)[0]
    other_seed = store.enqueue(spec.model_copy(update={"seed": 8}), ADMIN)[0]
    drain_queue(settings)

    def history(job):
        return [(m.train_loss, m.val_loss, m.test_accuracy) for m in reads.metrics(job.id)]

    assert history(first) == history(second)
    assert history(first) != history(other_seed)


def test_errors_fail_the_job_with_their_type_and_message(settings, store, tmp_path):
    settings.data_dir = write_dataset(tmp_path / "only" / "fashion-mnist").parent  # no mnist
    missing = store.enqueue(JobSpec.model_validate({**TINY, "dataset": "mnist"}), ADMIN)[0]
    too_big = store.enqueue(JobSpec.model_validate({**TINY, "validation_size": 50_000}), ADMIN)[0]
    # Each step multiplies the weights by 1 - 2·lr·l2 = -19: they overflow within an epoch.
    diverging = store.enqueue(
        JobSpec.model_validate(
            {**TINY, "learning_rate": 10, "tricks": ["momentum", {"name": "weight_decay", "l2": 1}]}
        ),
        ADMIN,
    )[0]
    healthy = store.enqueue(JobSpec.model_validate(TINY), ADMIN)[0]
    drain_queue(settings)

    failed = store.get(missing.id)
    assert (failed.status, failed.error_type, failed.failure_reason) == (
        JobStatus.FAILED,
        "DatasetError",
        "invalid_data",
    )
    assert failed.attempts == 1  # it would fail the same way again: no retry
    assert "dataset 'mnist' not found" in failed.error_message
    assert "leaves no training images" in store.get(too_big.id).error_message
    diverged = store.get(diverging.id)
    assert (diverged.error_type, diverged.failure_reason, diverged.model_path) == (
        "TrainingDiverged",
        "diverged",
        None,
    )
    assert "lower learning_rate" in diverged.error_message
    assert store.get(healthy.id).status == JobStatus.SUCCEEDED  # the worker carried on


def stored(store, document: dict) -> str:
    """A queued job whose spec is stored as given, unvalidated: as an older tricklab could
    have stored it (a study's derived seed past the largest one, once)."""
    job = store.enqueue(JobSpec.model_validate(TINY), ADMIN)[0]
    with store.engine.begin() as connection:
        connection.execute(update(Job).where(Job.id == job.id).values(spec=document))
    return job.id


@pytest.mark.parametrize("pack_size", [1, 8])
def test_a_stored_spec_that_cannot_be_read_fails_alone_and_the_others_train(
    settings, store, client, pack_size
):
    healthy = [
        store.enqueue(JobSpec.model_validate({**TINY, "seed": s}), ADMIN)[0].id for s in (1, 2)
    ]
    unreadable = [
        stored(store, {**JobSpec.model_validate(TINY).model_dump(), "seed": 2**31}),
        stored(store, {"tricks": "dropout", "epochs": "many"}),
    ]
    listed = client.get("/v1/jobs")  # shown as stored, not a 500
    assert listed.status_code == 200
    shown = {job["spec"].get("epochs"): job["epochs_total"] for job in listed.json()["jobs"]}
    assert shown == {2: 2, "many": None}

    drain_queue(settings, pack_size=pack_size)
    for job_id in healthy:
        assert store.get(job_id).status == JobStatus.SUCCEEDED
    for job_id in unreadable:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert (job["status"], job["attempts"], job["error"]["reason"]) == (
            "failed",
            1,
            "invalid_spec",
        )
        assert job["error"]["message"].startswith("the stored spec is not a valid job spec: ")
    assert (
        "seed: Input should be less than or equal to 2147483647"
        in store.get(unreadable[0]).error_message
    )


@pytest.mark.parametrize("pack_size", [1, 8])
def test_a_job_that_trains_past_its_time_fails_with_reason_timeout(settings, store, pack_size):
    spec = JobSpec.model_validate({**TINY, "epochs": 1000})
    ids = [store.enqueue(spec.model_copy(update={"seed": seed}), ADMIN)[0].id for seed in range(2)]
    drain_queue(settings, pack_size=pack_size, max_job_seconds=1.0)
    for job_id in ids:
        job = store.get(job_id)
        assert (job.status, job.failure_reason, job.attempts) == (JobStatus.FAILED, "timeout", 1)
        assert "its limit of 1 s over all its attempts (TRICKLAB_MAX_JOB_SECONDS)" in (
            job.error_message
        )
        assert job.epochs_done < 1000


def test_time_spent_in_earlier_attempts_counts(settings, store):
    store.enqueue(JobSpec.model_validate(TINY), ADMIN)
    _, lease = store.claim("w", "CPU")
    store.record_epoch(lease, EpochRow(epoch=1, **EPOCH), Checkpoint(1, "gone.npz", "0" * 64), 50.0)
    store.release(lease)  # 50 s trained; the limit is 30
    drain_queue(settings, max_job_seconds=30)
    job = store.get(lease.job_id)
    assert (job.status, job.failure_reason) == (JobStatus.FAILED, "timeout")


def test_the_worker_loop_outlives_a_passing_database_error(settings, store, monkeypatch, caplog):
    job = store.enqueue(JobSpec.model_validate(TINY), ADMIN)[0]
    worker = Worker(store, ArtifactStore(settings.artifacts_dir), settings.data_dir)
    claim_pack = store.claim_pack
    calls = iter([OperationalError("SELECT", {}, Exception("the database is restarting"))])

    def flaky(*args, **kwargs):
        if error := next(calls, None):
            raise error
        return claim_pack(*args, **kwargs)

    monkeypatch.setattr(store, "claim_pack", flaky)
    worker.run(once=True)  # the error: logged, not raised
    assert "could not claim or settle jobs" in caplog.text
    worker.run(once=True)
    assert store.get(job.id).status == JobStatus.SUCCEEDED


def test_a_pack_holds_only_as_many_jobs_as_fit_the_memory_budget(settings, store, reads):
    spec = JobSpec.model_validate(TINY)
    for seed in range(4):
        store.enqueue(spec.model_copy(update={"seed": seed}), ADMIN)
    artifacts = ArtifactStore(settings.artifacts_dir)

    def one_pack(budget: int) -> int:
        worker = Worker(store, artifacts, settings.data_dir, pack_size=8, pack_memory_bytes=budget)
        before = reads.list_jobs(JobStatus.SUCCEEDED)[1]
        assert worker.run_one()
        return reads.list_jobs(JobStatus.SUCCEEDED)[1] - before

    assert one_pack(int(2.5 * cost.memory_bytes(spec))) == 2
    assert one_pack(1) == 1  # a job that alone passes the budget still trains, alone

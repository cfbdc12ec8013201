"""Packing on tiny data: a job trains the same packed as alone, whatever it is packed with,\nand a worker packs queued jobs and settles each as if it had trained alone."""

import re
import time

import keras
import numpy as np
import pytest

from core.spec import JobSpec
from jobqueue.artifacts import ArtifactStore
from jobqueue.models import ADMIN
from jobqueue.states import JobStatus
from tests.support.data import EPOCH, TINY
from tests.support.inprocess import drain_queue
from worker import run, steps, training
from worker.checkpoints import Snapshot
from worker.loop import Worker
from worker.packing import Branch, pack_key, train_pack

pytestmark = pytest.mark.equivalence

SHARED = {**TINY, "epochs": 6, "learning_rate": 0.05}
# Dropout at 0.5, the rate under which early stopping ends the third branch early.
TRICKS = [{"name": "dropout", "rate": 0.5}, "batch_norm", "momentum", "cosine_decay"]
# Three jobs of one pack: what may differ between branches differs.
SPECS = [
    JobSpec.model_validate({**SHARED, "seed": 1, "tricks": TRICKS}),
    JobSpec.model_validate(
        {**SHARED, "seed": 2, "tricks": [*TRICKS, {"name": "weight_decay", "l2": 0.01}]}
    ),
    JobSpec.model_validate(
        {**SHARED, "seed": 3, "tricks": [*TRICKS, {"name": "early_stopping", "patience": 1}]}
    ),
]
TOLERANCE = 1e-5  # float32 sums in another order, nothing more


class Recorder:
    def __init__(self, refuse_at: int | None = None):
        self.rows, self.snapshots, self.refuse_at = [], {}, refuse_at

    def __call__(self, row, snapshot):
        if row.epoch == self.refuse_at:
            return False
        self.rows.append(row.model_dump(exclude={"seconds"}))
        self.snapshots[row.epoch] = snapshot
        return True


@pytest.fixture(scope="module")
def alone(splits):
    runs = []
    for spec in SPECS:
        recorder = Recorder()
        runs.append((recorder, training.train(spec, splits, recorder)))
    return runs


def assert_same_rows(rows, expected):
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in expected]
    for row, want in zip(rows, expected, strict=True):
        assert row.keys() == want.keys()
        for key, value in want.items():
            assert row[key] == pytest.approx(value, abs=TOLERANCE), (row["epoch"], key)


def test_each_packed_job_trains_exactly_as_it_would_alone(splits, alone):
    recorders = [Recorder() for _ in SPECS]
    outcomes = train_pack([Branch(s, r) for s, r in zip(SPECS, recorders, strict=True)], splits)

    assert alone[2][1].stopped_epoch is not None  # early stopping did end one branch early
    for recorder, outcome, (alone_recorder, trained) in zip(
        recorders, outcomes, alone, strict=True
    ):
        assert_same_rows(recorder.rows, alone_recorder.rows)
        assert (outcome.best_epoch, outcome.stopped_epoch) == (
            trained.best_epoch,
            trained.stopped_epoch,
        )
        packed, single = outcome.result.model_dump(), trained.result.model_dump()
        for key in single.keys() - {"seconds"}:
            assert packed[key] == pytest.approx(single[key], abs=TOLERANCE)
        for packed, single in zip(
            outcome.model.get_weights(), trained.model.get_weights(), strict=True
        ):
            np.testing.assert_allclose(packed, single, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.backends
def test_a_job_packed_with_others_is_unchanged_by_them(splits, alone):
    # The first job again, now beside two others of different seeds and decay.
    others = [s.model_copy(update={"seed": seed}) for seed, s in ((7, SPECS[1]), (8, SPECS[0]))]
    recorder = Recorder()
    train_pack([Branch(SPECS[0], recorder), *(Branch(s, Recorder()) for s in others)], splits)
    assert_same_rows(recorder.rows, alone[0][0].rows)


@pytest.mark.backends
def test_a_packed_checkpoint_resumes_alone_as_if_never_stopped(splits, alone, tmp_path):
    recorders = [Recorder() for _ in SPECS]
    train_pack([Branch(s, r) for s, r in zip(SPECS, recorders, strict=True)], splits)
    path = tmp_path / "checkpoint.npz"
    recorders[1].snapshots[2].save(path)

    resumed = Recorder()
    training.train(SPECS[1], splits, resumed, resume=Snapshot.load(path))
    assert_same_rows(resumed.rows, alone[1][0].rows[2:])


@pytest.mark.backends
def test_a_branch_whose_lease_is_lost_ends_alone(splits, alone):
    recorders = [Recorder(refuse_at=2), Recorder()]
    outcomes = train_pack([Branch(s, r) for s, r in zip(SPECS[:2], recorders, strict=True)], splits)
    assert isinstance(outcomes[0], run.LeaseLost)
    assert [r["epoch"] for r in recorders[0].rows] == [1]
    assert_same_rows(recorders[1].rows, alone[1][0].rows)


def test_only_compatible_specs_share_a_pack_key():
    assert len({pack_key(spec) for spec in SPECS}) == 1
    for change in ({"learning_rate": 0.01}, {"batch_size": 64}, {"hidden_units": [32]}):
        assert pack_key(SPECS[0].model_copy(update=change)) != pack_key(SPECS[0])
    assert pack_key(JobSpec.model_validate({**SHARED, "tricks": ["augmentation"]})) is None
    assert pack_key(SPECS[0].model_copy(update={"exact": True})) is None
    with pytest.raises(ValueError, match="pack_key"):
        train_pack([Branch(SPECS[0], Recorder()), Branch(JobSpec(), Recorder())], None)


# ---- a worker packing queued jobs ---------------------------------------------------------


def packing_worker(settings, store):
    return Worker(store, ArtifactStore(settings.artifacts_dir), settings.data_dir, pack_size=8)


def stored_rows(reads, job_id, like):
    return [{key: getattr(m, key) for key in like} for m in reads.metrics(job_id)]


def test_a_worker_packs_compatible_jobs_and_records_each_as_if_alone(settings, store, reads, alone):
    ids = [store.enqueue(spec, ADMIN)[0].id for spec in SPECS]
    apart = store.enqueue(SPECS[0].model_copy(update={"hidden_units": [16]}), ADMIN)[0].id
    assert packing_worker(settings, store).run_one()

    assert store.get(apart).status == JobStatus.QUEUED  # another architecture: not a mate
    jobs = [store.get(job_id) for job_id in ids]
    for job, (recorder, trained) in zip(jobs, alone, strict=True):
        assert job.status == JobStatus.SUCCEEDED, job.error_message
        assert (job.attempts, job.best_epoch, job.stopped_epoch) == (
            1,
            trained.best_epoch,
            trained.stopped_epoch,
        )
        assert_same_rows(stored_rows(reads, job.id, recorder.rows[0]), recorder.rows)
        assert job.result.test_accuracy == pytest.approx(
            trained.result.test_accuracy, abs=TOLERANCE
        )
        model = keras.saving.load_model(settings.artifacts_dir / job.model_path)
        for saved, single in zip(model.get_weights(), trained.model.get_weights(), strict=True):
            np.testing.assert_allclose(saved, single, rtol=TOLERANCE, atol=TOLERANCE)
    # The early-stopped job was finished when it stopped, not when the pack ended.
    assert jobs[2].finished_at < min(job.finished_at for job in jobs[:2])


def test_a_pack_ends_a_cancelled_job_alone_and_resumes_as_a_pack_after_a_stop(
    settings, store, reads, alone, monkeypatch
):
    ids = [store.enqueue(spec, ADMIN)[0].id for spec in SPECS]
    worker = packing_worker(settings, store)
    record_epoch = store.record_epoch

    def cancel_and_stop_at_epoch_2(lease, metrics, *args):
        if (lease.job_id, metrics.epoch) == (ids[0], 2):
            store.cancel(ids[1])  # as POST /v1/jobs/{id}/cancel would, mid-epoch-end
            worker.request_stop()  # as SIGTERM would
        return record_epoch(lease, metrics, *args)

    monkeypatch.setattr(store, "record_epoch", cancel_and_stop_at_epoch_2)
    assert worker.run_one()
    first, cancelled, third = (store.get(job_id) for job_id in ids)
    assert (first.status, first.checkpoint_epoch) == (JobStatus.QUEUED, 2)
    assert (third.status, third.checkpoint_epoch) == (JobStatus.QUEUED, 2)
    assert cancelled.status == JobStatus.CANCELLED
    assert [m.epoch for m in reads.metrics(ids[1])] == [1]

    monkeypatch.undo()
    assert packing_worker(settings, store).run_one()  # the rest, resumed from epoch 2 together
    for job_id, (recorder, _) in zip([ids[0], ids[2]], [alone[0], alone[2]], strict=True):
        assert store.get(job_id).status == JobStatus.SUCCEEDED
        assert_same_rows(stored_rows(reads, job_id, recorder.rows[0]), recorder.rows)
    # Handed back by a stopping worker, the attempt went on: one attempt, resumed after epoch 2.
    assert [m.attempt for m in reads.metrics(ids[0])] == [1] * 6
    assert store.get(ids[0]).attempts == 1


@pytest.mark.parametrize("pack_size", [1, 8])
def test_a_jobs_epoch_seconds_and_its_totals_are_all_wall_clock_time(
    settings, store, reads, monkeypatch, pack_size
):
    # Every epoch takes at least PAUSE seconds of wall clock, alone or packed.
    pause, train_epoch = 0.3, steps.train_epoch

    def slow_epoch(*args, **kwargs):
        time.sleep(pause)
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(steps, "train_epoch", slow_epoch)
    ids = [
        store.enqueue(JobSpec.model_validate({**TINY, "seed": s}), ADMIN)[0].id for s in range(3)
    ]
    drain_queue(settings, pack_size=pack_size)
    for job_id in ids:
        job, epochs = store.get(job_id), reads.metrics(job_id)
        assert job.status == JobStatus.SUCCEEDED
        assert all(m.seconds >= pause for m in epochs)  # the pack's epoch, not a share of it
        assert sum(m.seconds for m in epochs) <= min(job.trained_seconds, job.result.seconds)


def test_an_exact_job_trains_alone_and_reproduces_its_metrics_exactly(
    settings, store, reads, monkeypatch, caplog
):
    # The production path: XLA, Adam and batch norm, in a worker that packs up to 8 jobs.
    monkeypatch.setattr(run, "JIT_MIN_STEPS", 0)
    spec = JobSpec.model_validate(
        {**TINY, "epochs": 3, "learning_rate": 0.001, "tricks": ["dropout", "batch_norm"]}
    )
    exact = spec.model_copy(update={"exact": True})
    mates = [spec, spec.model_copy(update={"seed": 1})]
    ids = [store.enqueue(s, ADMIN)[0].id for s in (exact, mates[0], exact, mates[1])]
    caplog.set_level("INFO", logger="tricklab.worker")
    drain_queue(settings, pack_size=8)

    def pack_size(job_id):
        return int(re.findall(rf"job={job_id} claimed .* pack=(\d+)", caplog.text)[0])

    assert [pack_size(job_id) for job_id in ids] == [1, 2, 1, 2]  # the exact ones alone

    def history(job_id):
        job = store.get(job_id)
        assert job.status == JobStatus.SUCCEEDED
        scores = job.result.model_dump(exclude={"seconds"})
        rows = stored_rows(reads, job_id, [k for k in EPOCH if k != "seconds"])
        return rows, scores, (job.best_epoch, job.stopped_epoch)

    assert history(ids[0]) == history(ids[2])

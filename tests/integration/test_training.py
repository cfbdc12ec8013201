"""The training loop on tiny data: checkpoints, exact resume, and how the worker steers it."""

import keras
import numpy as np
import pytest

from core.spec import JobSpec, trick_catalogue
from tests.support.data import TINY, TINY_CNN
from worker import run, training, tricks
from worker.checkpoints import Snapshot

EVERYTHING_RANDOM = {
    **TINY,
    "epochs": 10,
    "tricks": [
        "dropout",
        "batch_norm",
        "augmentation",
        "cosine_decay",
        {"name": "early_stopping", "patience": 2, "min_delta": 0.05},
    ],
}


def train_recorded(spec, splits, **kwargs):
    rows, snapshots = [], {}

    def report(row, snapshot):
        rows.append(row.model_dump(exclude={"seconds"}))
        snapshots[row.epoch] = snapshot
        return True

    trained = training.train(spec, splits, report, **kwargs)
    return rows, snapshots, trained


@pytest.mark.backends
def test_epoch_order_depends_on_seed_and_epoch_only():
    first = run.epoch_order(3, 1, 100)
    assert sorted(first) == list(range(100))
    np.testing.assert_array_equal(first, run.epoch_order(3, 1, 100))
    assert not np.array_equal(first, run.epoch_order(3, 2, 100))
    assert not np.array_equal(first, run.epoch_order(4, 1, 100))


@pytest.mark.backends
@pytest.mark.equivalence
def test_a_resumed_run_continues_exactly_as_if_never_interrupted(splits, tmp_path):
    spec = JobSpec.model_validate(EVERYTHING_RANDOM)
    rows, snapshots, trained = train_recorded(spec, splits)
    # Resumed after its best epoch, the run must carry on early stopping's state (best loss,
    # best weights, patience spent) to stop where it stopped and keep the same weights.
    assert trained.best_epoch < trained.stopped_epoch < spec.epochs
    resume_at = trained.best_epoch + 1

    path = tmp_path / "checkpoint.npz"
    snapshots[resume_at].save(path)  # through the file, as a retried job would
    resumed_rows, _, resumed = train_recorded(spec, splits, resume=Snapshot.load(path))

    assert [r["epoch"] for r in resumed_rows] == list(range(resume_at + 1, len(rows) + 1))
    assert resumed_rows == rows[resume_at:]
    assert (resumed.best_epoch, resumed.stopped_epoch) == (
        trained.best_epoch,
        trained.stopped_epoch,
    )
    for a, b in zip(resumed.model.get_weights(), trained.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.equivalence
def test_compiling_the_train_step_changes_the_speed_not_the_results(splits, monkeypatch):
    spec = JobSpec.model_validate(
        {**TINY, "epochs": 3, "tricks": ["dropout", "batch_norm", "weight_decay", "momentum"]}
    )
    assert run.jit_compile(spec, run.JIT_MIN_STEPS) is True
    assert run.jit_compile(spec, 3 * 19) is False  # tiny runs: compiling costs more
    cnn = JobSpec.model_validate({**TINY_CNN, "tricks": ["dropout", "batch_norm"]})
    assert run.jit_compile(cnn, 10 * run.JIT_MIN_STEPS) == "auto"  # XLA slows its convolutions
    monkeypatch.setattr(run, "jit_compile", lambda spec, steps: True)
    compiled, _, _ = train_recorded(spec, splits)
    monkeypatch.setattr(run, "jit_compile", lambda spec, steps: False)
    plain, _, _ = train_recorded(spec, splits)
    assert [r["epoch"] for r in compiled] == [1, 2, 3]
    for a, b in zip(compiled, plain, strict=True):
        for key in a:  # XLA may order float sums differently: equal to float32 rounding
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_a_checkpoint_of_another_spec_is_refused(splits):
    _, snapshots, _ = train_recorded(JobSpec.model_validate({**TINY, "epochs": 1}), splits)
    other = JobSpec.model_validate({**TINY, "hidden_units": [8]})
    with pytest.raises(ValueError, match="belongs to another spec"):
        train_recorded(other, splits, resume=snapshots[1])


@pytest.mark.backends
def test_a_lost_lease_stops_training_at_once_without_reporting(splits):
    control = run.Control()
    control.lease_lost.set()
    with pytest.raises(run.LeaseLost):
        train_recorded(JobSpec.model_validate({**TINY, "epochs": 50}), splits, control=control)


@pytest.mark.backends
def test_a_refused_report_means_the_lease_is_gone(splits):
    spec = JobSpec.model_validate({**TINY, "epochs": 5})
    with pytest.raises(run.LeaseLost):
        training.train(spec, splits, lambda row, snapshot: row.epoch < 2)


@pytest.mark.backends
def test_a_stop_request_ends_after_the_epoch_is_reported(splits):
    control = run.Control()
    control.stop_requested.set()
    reported = []
    with pytest.raises(run.Interrupted):
        training.train(
            JobSpec.model_validate({**TINY, "epochs": 5}),
            splits,
            lambda row, snapshot: reported.append(row.epoch) or True,
            control,
        )
    assert reported == [1]


@pytest.mark.backends
def test_resuming_from_the_epoch_early_stopping_ended_trains_no_further(splits):
    # The worker died after reporting the stopping epoch and before finishing the job.
    spec = JobSpec.model_validate(
        {
            **TINY,
            "epochs": 40,
            "tricks": [{"name": "early_stopping", "patience": 1, "min_delta": 0.05}],
        }
    )
    rows, snapshots, trained = train_recorded(spec, splits)
    assert trained.stopped_epoch == len(rows) < 40

    resumed_rows, _, resumed = train_recorded(spec, splits, resume=snapshots[trained.stopped_epoch])
    assert resumed_rows == []
    assert (resumed.stopped_epoch, resumed.best_epoch) == (
        trained.stopped_epoch,
        trained.best_epoch,
    )
    assert resumed.result.test_accuracy == trained.result.test_accuracy


def l2_penalty(model, l2):
    hidden = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][:-1]
    return l2 * sum(float(np.sum(np.square(w))) for layer in hidden for w in layer.get_weights())


@pytest.mark.backends
def test_the_weight_decay_penalty_is_in_train_objective_and_not_in_train_loss(splits):
    spec = JobSpec.model_validate(
        {**TINY, "epochs": 1, "tricks": [{"name": "weight_decay", "l2": 0.01}]}
    )
    before = l2_penalty(tricks.build_model(spec), 0.01)  # the seed's initial weights
    (row,), _, trained = train_recorded(spec, splits)
    after = l2_penalty(trained.model, 0.01)
    # Both are epoch means over the same steps: they differ by the mean penalty of the epoch.
    assert 0.9 * min(before, after) < row["train_objective"] - row["train_loss"]
    assert row["train_objective"] - row["train_loss"] < 1.1 * max(before, after)
    described = {t["name"]: t["description"] for t in trick_catalogue()}["weight_decay"]
    assert "train_objective includes it" in described
    assert "train_loss and the other losses are the plain cross-entropy" in described

"""Chunks of steps per compiled call (worker.steps) take exactly the steps Keras' `fit` takes."""

import keras
import numpy as np
import pytest

from core.spec import JobSpec
from tests.support.data import TINY, TINY_CNN
from worker import run, steps, tricks

pytestmark = [pytest.mark.backends, pytest.mark.equivalence]

# Adam's steps follow the gradient's sign even where it is only float noise (the bias before
# batch norm, which cancels it), so Adam is tested without batch norm.
SGD = JobSpec.model_validate(
    {**TINY, "tricks": ["dropout", "batch_norm", "weight_decay", "momentum", "cosine_decay"]}
)
ADAM = JobSpec.model_validate({**TINY, "tricks": ["dropout", "weight_decay", "cosine_decay"]})
CNN = JobSpec.model_validate(
    {
        **TINY_CNN,
        "tricks": [
            {"name": "dropout", "spatial": True},
            "batch_norm",
            "weight_decay",
            "momentum",
            "cosine_decay",
        ],
    }
)


def trainer(model_class, splits, spec=SGD, jit_compile="auto"):
    """The spec's model behind an index lookup of the training images, compiled as a job's."""
    keras.backend.clear_session()
    model = tricks.build_model(spec)
    indices = keras.Input(shape=(), dtype="int32")
    images = run.Gather(run.Data.of(splits).device_images)(indices)
    wrapped = model_class(indices, model(images))
    loss, metrics = tricks.loss_and_metrics(spec)
    wrapped.compile(
        optimizer=tricks.optimizer(spec, 16), loss=loss, metrics=metrics, jit_compile=jit_compile
    )
    return wrapped


@pytest.fixture
def epoch(splits):
    order = run.epoch_order(0, 1, len(splits.x_train))
    return order, splits.y_train[order].astype(np.int32)


@pytest.mark.parametrize(
    ("spec", "chunk_steps", "jit_compile"),
    [(SGD, 256, "auto"), (ADAM, 4, "auto"), (SGD, 4, True), (CNN, 4, "auto")],
    ids=["sgd-one-chunk", "adam-chunks-of-4", "sgd-xla", "cnn-chunks-of-4"],
)
def test_an_epoch_in_chunks_equals_fit(splits, epoch, monkeypatch, spec, chunk_steps, jit_compile):
    # 500 images: 15 full batches and one of 20. In chunks of 4 steps: 4 + 4 + 4 + 3 (one row
    # of padding), then the partial batch alone (with XLA asked for: uncompiled on TensorFlow).
    monkeypatch.setattr(steps, "CHUNK_STEPS", chunk_steps)
    order, labels = epoch
    fitted = trainer(keras.Model, splits, spec, jit_compile)
    history = fitted.fit(order, labels, batch_size=32, shuffle=False, verbose=0)
    chunked = trainer(steps.Trainer, splits, spec, jit_compile)
    logs = steps.train_epoch(chunked, order, labels, 32)

    assert int(chunked.optimizer.iterations) == int(fitted.optimizer.iterations) == 16
    for ours, theirs in zip(chunked.get_weights(), fitted.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert logs is not None and logs.keys() == history.history.keys()
    for name, values in history.history.items():  # epoch means, merged from the chunks'
        assert float(logs[name]) == pytest.approx(values[-1], rel=1e-5), name


def test_a_stop_between_chunks_leaves_the_epoch_unfinished(splits, epoch, monkeypatch):
    monkeypatch.setattr(steps, "CHUNK_STEPS", 4)
    order, labels = epoch
    chunked = trainer(steps.Trainer, splits)
    calls = []

    def stop_after_two_chunks():
        calls.append(1)
        return len(calls) > 2

    assert steps.train_epoch(chunked, order, labels, 32, stop_after_two_chunks) is None
    assert int(chunked.optimizer.iterations) == 8


def test_a_set_smaller_than_a_batch_is_one_step(splits, epoch):
    order, labels = epoch
    chunked = trainer(steps.Trainer, splits)
    logs = steps.train_epoch(chunked, order[:20], labels[:20], 32)
    assert logs is not None and np.isfinite(logs["loss"])
    assert int(chunked.optimizer.iterations) == 1

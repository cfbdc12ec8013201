"""Spec → model → epochs → evaluate → model to save. No SQL: each epoch leaves through
`report`, with a snapshot to checkpoint, and the worker steers through a `Control`.

The training images live on the device, inside a training-only wrapper model that gathers
each batch by index; every epoch `fit` receives just that epoch's order of indices, drawn from
the seed and the epoch number. So a run resumed from a checkpoint sees exactly the data order
an uninterrupted run would have, and no image crosses from host to device per step.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from core.images import scale
from core.spec import NUM_CLASSES, Augmentation, JobSpec
from worker import tricks
from worker.checkpoints import Snapshot
from worker.datasets import Splits

# Steps run per call into the compiled train function: fewer Python round trips, the same
# numbers (measured on the 2-core CPU: 1.75× the samples per second of 1 step per call at
# 64; 256 adds a few percent more).
STEPS_PER_EXECUTION = 256
EVAL_BATCH = 1024  # evaluation batch size: any size gives the same numbers, larger is faster


class LeaseLost(Exception):
    """The job was cancelled or another worker holds it now: write nothing more about it."""


class Interrupted(Exception):
    """The worker was asked to stop; the job goes back to the queue."""


class TrainingDiverged(ArithmeticError):
    """The loss became NaN or infinite; retrying the same spec would diverge again."""


@dataclass
class Control:
    """How the worker steers a training from outside, from any thread."""

    lease_lost: threading.Event = field(default_factory=threading.Event)  # stop at once
    stop_requested: threading.Event = field(default_factory=threading.Event)  # after the epoch


@dataclass
class Trained:
    model: keras.Model
    best_epoch: int | None  # epoch with the lowest validation loss (1-based)
    stopped_epoch: int | None  # epoch at which early stopping ended the run, if it did
    result: dict[str, Any]  # the final model's scores


Report = Callable[[dict[str, Any], Snapshot], bool]


def train(
    spec: JobSpec,
    splits: Splits,
    report: Report,
    control: Control | None = None,
    resume: Snapshot | None = None,
) -> Trained:
    """Train from scratch, or from `resume` on. After each epoch, `report(metrics, snapshot)`
    must return True to go on (False: the lease is gone, so LeaseLost)."""
    control = control or Control()
    started = time.perf_counter()
    keras.backend.clear_session()  # fresh layer names and graph state for every job
    keras.utils.set_random_seed(spec.seed)

    x_train, y_train = scale(splits.x_train), targets(spec, splits.y_train)
    x_val, x_test = scale(splits.x_val), scale(splits.x_test)
    model = tricks.build_model(spec)
    trainer = _on_device(model, x_train)
    loss, metrics = tricks.loss_and_metrics(spec)
    steps_per_epoch = math.ceil(len(x_train) / spec.batch_size)
    optimizer = tricks.optimizer(spec, steps_per_epoch)
    trainer.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=metrics,
        steps_per_execution=STEPS_PER_EXECUTION,
        jit_compile=jit_compile(spec, spec.epochs * steps_per_epoch),
    )
    watch = resume.restore(model, optimizer) if resume else tricks.best_epoch(spec)
    stop_at_once = _StopWhen(control.lease_lost)

    done = resume.epoch if resume else 0
    # A checkpoint taken at the epoch early stopping ended: its worker died before finishing.
    stopped_epoch = done if resume and watch.exhausted else None
    last = done if stopped_epoch else spec.epochs
    for epoch in range(done + 1, last + 1):
        began = time.perf_counter()
        order = epoch_order(spec.seed, epoch, len(x_train))
        history = trainer.fit(
            order,
            y_train[order],
            batch_size=spec.batch_size,
            epochs=1,
            shuffle=False,
            callbacks=[stop_at_once],
            verbose=0,
        )
        if control.lease_lost.is_set():
            raise LeaseLost
        logs = {name: values[-1] for name, values in history.history.items()}
        if not math.isfinite(logs["loss"]):
            raise TrainingDiverged(
                f"the training loss became {logs['loss']} in epoch {epoch}; "
                "a lower learning_rate usually helps"
            )
        val = scores(model, x_val, splits.y_val)
        seconds = time.perf_counter() - began
        test = scores(model, x_test, splits.y_test)
        assert test is not None  # datasets.load refuses an empty test set
        row = {
            "epoch": epoch,
            "train_loss": as_float(logs[tricks.CROSSENTROPY]),
            "train_accuracy": as_float(logs["accuracy"]),
            "train_objective": as_float(logs["loss"]),
            "val_loss": val[0] if val else None,
            "val_accuracy": val[1] if val else None,
            "test_loss": test[0],
            "test_accuracy": test[1],
            "learning_rate": as_float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
            "seconds": seconds,
        }
        stop = watch.update(epoch, row["val_loss"], model)
        if not report(row, Snapshot.capture(epoch, model, optimizer, watch)):
            raise LeaseLost
        if stop:
            stopped_epoch = epoch
            break
        if control.stop_requested.is_set() and epoch < spec.epochs:
            raise Interrupted

    if watch.best_weights:  # early stopping keeps the best epoch's weights
        model.set_weights(watch.best_weights)
    result: dict[str, Any] = {"epochs_trained": stopped_epoch or spec.epochs}
    result["parameters"] = model.count_params()
    for part, x, y in (
        ("train", x_train, splits.y_train),
        ("val", x_val, splits.y_val),
        ("test", x_test, splits.y_test),
    ):
        if part_scores := scores(model, x, y):
            result[f"{part}_loss"], result[f"{part}_accuracy"] = part_scores
    result["seconds"] = time.perf_counter() - started
    return Trained(model, watch.best_epoch, stopped_epoch, result)


# XLA compiles a train step in about 1.5 s and then saves about 0.3 ms a step on the 2-core
# CPU: it pays off from about 5,000 steps (3 epochs of Fashion-MNIST at batch 32).
JIT_MIN_STEPS = 5000


def jit_compile(spec: JobSpec, steps: int) -> bool | str:
    """On TensorFlow, XLA-compile the train step wherever that changes only the speed and
    the run is long enough to repay the compilation: 1.6× the samples per second on the 2-core
    CPU, where Keras' "auto" would leave it off. Dropout masks come from a hash (core.layers),
    the same compiled or not; the augmentation layers draw from the backend's generator, whose
    numbers XLA changes, so those specs keep Keras' choice. On JAX, "auto" always compiles
    (uncompiled JAX is far slower), and torch keeps Keras' choice too."""
    if keras.backend.backend() != "tensorflow" or spec.trick(Augmentation):
        return "auto"
    return steps >= JIT_MIN_STEPS


def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The order of the training images in one epoch: a function of seed and epoch alone."""
    return np.random.default_rng([seed, epoch]).permutation(count).astype(np.int32)


def scores(
    model: keras.Model, images: np.ndarray, labels: np.ndarray
) -> tuple[float, float] | None:
    """Plain cross-entropy and accuracy in inference mode; None for an empty split."""
    if not len(images):
        return None
    # Plain calls, not model.predict: no function to trace for each new model, same numbers.
    probabilities = np.concatenate(
        [
            keras.ops.convert_to_numpy(model(images[start : start + EVAL_BATCH], training=False))
            for start in range(0, len(images), EVAL_BATCH)
        ]
    )
    losses = keras.losses.sparse_categorical_crossentropy(labels.astype(np.int32), probabilities)
    loss = float(np.mean(keras.ops.convert_to_numpy(losses), dtype=np.float64))
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == labels))
    return as_float(loss), as_float(accuracy)


def as_float(value: Any) -> float:
    """A float32 metric as the shortest decimal that reads back as the same float32, so an
    accuracy of 0.8278 is reported as 0.8278, not 0.8277999758720398."""
    return float(str(np.float32(value)))


def targets(spec: JobSpec, labels: np.ndarray) -> np.ndarray:
    """Labels as the loss takes them: class numbers, or one-hot rows for label smoothing."""
    y = labels.astype(np.int32)
    return np.eye(NUM_CLASSES, dtype=np.float32)[y] if tricks.one_hot_labels(spec) else y


class Gather(keras.layers.Layer):
    """Holds the training images as one device-resident variable; maps indices (of any
    shape) to images."""

    def __init__(self, images: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.images = self.add_weight(
            shape=images.shape,
            dtype="float32",
            initializer=lambda shape, dtype: images,
            trainable=False,
            name="images",
        )

    def call(self, indices: Any) -> Any:
        return keras.ops.take(self.images, indices, axis=0)


def _on_device(model: keras.Model, images: np.ndarray) -> keras.Model:
    """The model behind an index → image lookup: trained, never saved."""
    indices = keras.Input(shape=(), dtype="int32", name="index")
    return keras.Model(indices, model(Gather(images)(indices)), name="trainer")


class _StopWhen(keras.callbacks.Callback):
    """Ends `fit` within a few steps once the event is set (the lease was lost)."""

    def __init__(self, event: threading.Event) -> None:
        super().__init__()
        self.event = event

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.event.is_set():
            self.model.stop_training = True

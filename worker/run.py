"""One job's training, whichever way it trains: alone (`worker.training`) or side by side with
others in one stacked model (`worker.packing`). Both drivers only compute epochs; the rest is
here, once:

- a `Run` is one job's model, optimizer and early-stopping watch, built from its spec or
  resumed from a checkpoint. After each epoch the driver hands it the epoch's logs; it scores
  and records the epoch, checkpoints it through `report`, and says whether early stopping
  ends the training. Its `Outcome` is the final model (`Trained`) or the exception that
  stopped it: a lost lease, the time limit, a diverged loss, a stop request, or any error;
- a `Control` is how the worker steers a run from outside, from any thread;
- `Data` holds a dataset's images as the model sees them, and the training images on the
  device, where a `Gather` layer looks each batch up by index. Every epoch's order of indices
  comes from the seed and the epoch number alone (`epoch_order`), so a run resumed from a
  checkpoint sees exactly the data order an uninterrupted run would have.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from core.cost import EVAL_BATCH, eval_batch
from core.datasets import Splits
from core.images import scale
from core.results import EpochRow, JobResult
from core.spec import NUM_CLASSES, Augmentation, JobSpec
from worker import tricks
from worker.checkpoints import Snapshot

Scores = tuple[float, float] | None  # plain cross-entropy and accuracy; None: an empty split


class LeaseLost(Exception):
    """The job was cancelled or another worker holds it now: write nothing more about it."""


class Interrupted(Exception):
    """The worker was asked to stop; the job goes back to the queue."""


class TrainingDiverged(ArithmeticError):
    """The loss became NaN or infinite; retrying the same spec would diverge again."""


class TimedOut(Exception):
    """The job has trained for longer than it may, over all its attempts."""


# How a run stops by itself: any other exception is an error of its driver, which ends every
# run that it drives.
STOPS = (LeaseLost, Interrupted, TrainingDiverged, TimedOut)


@dataclass
class Control:
    """How the worker steers a training from outside, from any thread."""

    lease_lost: threading.Event = field(default_factory=threading.Event)  # stop at once
    stop_requested: threading.Event = field(default_factory=threading.Event)  # after the epoch
    # The job's training time over all its attempts (TRICKLAB_MAX_JOB_SECONDS), and the
    # time.monotonic() at which this attempt has used up what is left of it.
    time_limit: float = math.inf
    deadline: float = math.inf
    # Train up to this epoch, then pause (a search's rung); None: every epoch of the spec.
    epoch_limit: int | None = None

    def halt(self) -> LeaseLost | TimedOut | None:
        """Why training must stop at once, if it must: checked between chunks of steps. Once
        it says so, it keeps saying so."""
        if self.lease_lost.is_set():
            return LeaseLost()
        if time.monotonic() > self.deadline:
            return TimedOut(
                f"the job trained for longer than its limit of {self.time_limit:g} s over all "
                "its attempts (TRICKLAB_MAX_JOB_SECONDS)"
            )
        return None

    def halted(self) -> bool:
        return self.halt() is not None


@dataclass
class Trained:
    model: keras.Model
    best_epoch: int | None  # epoch with the lowest validation loss (1-based)
    stopped_epoch: int | None  # epoch at which early stopping ended the run, if it did
    result: JobResult  # the final model's scores
    paused: bool = False  # stopped at its epoch limit, before the spec's last epoch


# How a job's attempt ended: its final model, or the exception that stopped it.
Outcome = Trained | Exception

# After each epoch: report(metrics, snapshot) records it; False when the lease is gone.
Report = Callable[[EpochRow, Snapshot], bool]


@dataclass(frozen=True, eq=False)
class Data:
    """A dataset's splits with their images as the model sees them (scaled to [0, 1]), and
    the training images on the device. One per loaded dataset, shared by the jobs that train
    on it, so that no job scales or copies the training images again."""

    splits: Splits
    x_train: np.ndarray
    x_val: np.ndarray
    x_test: np.ndarray

    @classmethod
    @functools.lru_cache(maxsize=2)  # splits compare by identity: datasets.load caches them
    def of(cls, splits: Splits) -> Data:
        return cls(splits, scale(splits.x_train), scale(splits.x_val), scale(splits.x_test))

    @functools.cached_property
    def device_images(self) -> keras.Variable:
        """The training images, in one variable on the device that `Gather` reads."""
        return keras.Variable(self.x_train, trainable=False, name="images")

    def parts(self) -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
        return (
            ("train", self.x_train, self.splits.y_train),
            ("val", self.x_val, self.splits.y_val),
            ("test", self.x_test, self.splits.y_test),
        )

    def steps_per_epoch(self, spec: JobSpec) -> int:
        return math.ceil(len(self.x_train) / spec.batch_size)

    def targets(self, spec: JobSpec) -> np.ndarray:
        """The training labels as the loss takes them: class numbers, or one-hot rows for
        label smoothing."""
        y = self.splits.y_train.astype(np.int32)
        return np.eye(NUM_CLASSES, dtype=np.float32)[y] if tricks.one_hot_labels(spec) else y


@dataclass
class Run:
    """One job's training: its model, optimizer and best-epoch watch, what ends each of its
    epochs and what it ends with, the same whether it trains alone or packed with others."""

    spec: JobSpec
    data: Data
    report: Report
    control: Control
    started: float  # time.perf_counter() when its driver began
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    watch: tricks.BestEpoch
    done: int  # the epochs trained so far: 0, or the resumed checkpoint's epoch
    stopped_epoch: int | None = None  # set once early stopping ends the training
    outcome: Outcome | None = None  # set by the driver once the run has ended

    @classmethod
    def start(
        cls,
        spec: JobSpec,
        data: Data,
        report: Report,
        control: Control,
        resume: Snapshot | None,
        started: float,
    ) -> Run:
        model = tricks.build_model(spec)
        optimizer = tricks.optimizer(spec, data.steps_per_epoch(spec))
        optimizer.build(model.trainable_variables)
        watch = resume.restore(model, optimizer) if resume else tricks.best_epoch(spec)
        done = resume.epoch if resume else 0
        run = cls(spec, data, report, control, started, model, optimizer, watch, done)
        if watch.exhausted:  # checkpointed as early stopping ended: its worker died then
            run.stopped_epoch = done
        return run

    @property
    def last_epoch(self) -> int:
        """The epoch this training ends after, unless early stopping ends it first: the
        spec's last, or its epoch limit before that."""
        limit = self.control.epoch_limit
        return self.spec.epochs if limit is None else min(limit, self.spec.epochs)

    def epochs(self) -> range:
        """The epochs left to train."""
        last = self.done if self.stopped_epoch is not None else self.last_epoch
        return range(self.done + 1, last + 1)

    @property
    def jit_compile(self) -> bool | str:
        return jit_compile(self.spec, self.spec.epochs * self.data.steps_per_epoch(self.spec))

    def halt(self) -> LeaseLost | TimedOut:
        """Why this run stopped in the middle of an epoch (which only `Control.halt` does)."""
        reason = self.control.halt()
        assert reason is not None, "an epoch is left unfinished only when the run must halt"
        return reason

    def end_epoch(
        self,
        epoch: int,
        logs: dict[str, float],
        fit_seconds: float,
        scored: dict[str, Scores] | None = None,
    ) -> bool:
        """Score, record and checkpoint an epoch trained with these epoch-mean `logs`
        (objective, accuracy, crossentropy); True when early stopping ends the training.
        `scored`: the model's val and test `scores`, when already computed (their time
        counted in `fit_seconds`). Raises LeaseLost, TimedOut, TrainingDiverged, or
        Interrupted when the worker asked to stop."""
        if reason := self.control.halt():
            raise reason
        if not math.isfinite(logs["objective"]):
            raise TrainingDiverged(
                f"the training loss became {logs['objective']} in epoch {epoch}; "
                "a lower learning_rate usually helps"
            )
        if scored is None:  # alone: validation is timed as part of the epoch, test is not
            began = time.perf_counter()
            scored = {"val": self.scores(self.data.x_val, self.data.splits.y_val)}
            fit_seconds += time.perf_counter() - began
            scored["test"] = self.scores(self.data.x_test, self.data.splits.y_test)
        val, test = scored["val"], scored["test"]
        assert test is not None  # datasets.load refuses an empty test set
        row = EpochRow(
            epoch=epoch,
            train_loss=as_float(logs["crossentropy"]),
            train_accuracy=as_float(logs["accuracy"]),
            train_objective=as_float(logs["objective"]),
            val_loss=val[0] if val else None,
            val_accuracy=val[1] if val else None,
            test_loss=test[0],
            test_accuracy=test[1],
            learning_rate=as_float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)),
            seconds=fit_seconds,
        )
        stop = self.watch.update(epoch, row.val_loss, self.model)
        if not self.report(row, Snapshot.capture(epoch, self.model, self.optimizer, self.watch)):
            self.control.lease_lost.set()  # a refused report: the lease is gone
            raise self.halt()
        self.done = epoch
        if stop:
            self.stopped_epoch = epoch
        elif self.control.stop_requested.is_set() and epoch < self.last_epoch:
            raise Interrupted
        return stop

    def scores(self, images: np.ndarray, labels: np.ndarray) -> Scores:
        return scores(self.model, images, labels, eval_batch(self.spec))

    def finish(self, scored: dict[str, Scores] | None = None) -> Trained:
        """The final model (early stopping's best weights) and its scores (`scored`: those
        of each part, already computed); at the epoch limit, the model so far, paused."""
        if self.watch.best_weights:
            self.model.set_weights(self.watch.best_weights)
        parts: dict[str, Any] = {}
        for part, x, y in self.data.parts():
            if part_scores := (scored[part] if scored else self.scores(x, y)):
                parts[f"{part}_loss"], parts[f"{part}_accuracy"] = part_scores
        result = JobResult(
            epochs_trained=self.done,
            parameters=self.model.count_params(),
            seconds=time.perf_counter() - self.started,
            **parts,
        )
        paused = self.stopped_epoch is None and self.done < self.spec.epochs
        return Trained(self.model, self.watch.best_epoch, self.stopped_epoch, result, paused)


# Compiling a chunk of steps with XLA costs about 0.35 s more than tracing it, and then saves
# about 0.3 ms a step on the 2-core CPU (0.1 ms instead of 0.4 ms for the base model): it pays
# off from about 1,200 steps (one epoch of Fashion-MNIST at batch 32 is 1,563).
JIT_MIN_STEPS = 1200


def jit_compile(spec: JobSpec, steps: int) -> bool | str:
    """On TensorFlow, XLA-compile the MLP's train step wherever that changes only the speed
    and the run is long enough to repay the compilation: 4× the samples per second on the
    2-core CPU, where Keras' "auto" would leave it off. Dropout masks come from a hash
    (core.layers), the same compiled or not; the augmentation layers draw from the backend's
    generator, whose numbers XLA changes, so those specs keep Keras' choice. So does the CNN:
    XLA on the CPU runs its convolutions, looped over a chunk's steps, about 12 times slower
    than TensorFlow's own kernels do, and "auto" compiles only on a GPU. On JAX, "auto" always
    compiles (uncompiled JAX is far slower), and torch keeps Keras' choice too."""
    if keras.backend.backend() != "tensorflow" or spec.trick(Augmentation):
        return "auto"
    if spec.architecture != "mlp":
        return "auto"
    return steps >= JIT_MIN_STEPS


def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The order of the training images in one epoch: a function of seed and epoch alone."""
    return np.random.default_rng([seed, epoch]).permutation(count).astype(np.int32)


def scores(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, batch: int = EVAL_BATCH
) -> Scores:
    """Plain cross-entropy and accuracy in inference mode; None for an empty split."""
    if not len(images):
        return None
    return scores_of(inferred(model, images, batch=batch), labels)


def inferred(
    model: keras.Model, images: np.ndarray, axis: int = 0, batch: int = EVAL_BATCH
) -> np.ndarray:
    """The model's outputs in inference mode, `batch` images a call, joined along the
    outputs' batch `axis`. Plain calls, not model.predict: no function to trace for each new
    model, the same numbers."""
    return np.concatenate(
        [
            keras.ops.convert_to_numpy(model(images[start : start + batch], training=False))
            for start in range(0, len(images), batch)
        ],
        axis=axis,
    )


def scores_of(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """`scores` of these predicted class probabilities."""
    losses = keras.losses.sparse_categorical_crossentropy(labels.astype(np.int32), probabilities)
    loss = float(np.mean(keras.ops.convert_to_numpy(losses), dtype=np.float64))
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == labels))
    return as_float(loss), as_float(accuracy)


def as_float(value: Any) -> float:
    """A float32 metric as the shortest decimal that reads back as the same float32, so an
    accuracy of 0.8278 is reported as 0.8278, not 0.8277999758720398."""
    return float(str(np.float32(value)))


class Gather(keras.layers.Layer):
    """Maps indices (of any shape) to the images held by a device-resident variable."""

    def __init__(self, images: keras.Variable, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.images = images  # tracked: one of this layer's non-trainable variables

    def call(self, indices: Any) -> Any:
        return keras.ops.take(self.images, indices, axis=0)

"""Packing: compatible jobs trained side by side as one Keras program.

A small model leaves the cores idle between tiny kernels; K of them trained as one model with
stacked weights (each Dense kernel becomes one (K, in, out) tensor, one batched matmul for all
branches) keep them busy. Branch k is job k: its own weights, initialisation, data order,
dropout masks and weight decay, and nothing of it mixes with another branch. The loss is the
sum of the branches' losses, so each branch's gradient is its own loss's gradient; Adam and
SGD update each element from its own gradient alone, so each branch takes the steps it would
take alone.

Each branch is mirrored by the `training.Run` its job would have alone: its initial weights
come from there, and after every epoch its slices of the stacked variables (and of the
optimizer's) are copied back, where the single-job trainer's own code scores it, checkpoints
it (in the single-job format, so it resumes alone or in any pack) and follows its early
stopping. A branch that stops (early stopping, a lost lease, a diverged loss) keeps
being computed, ignored, until the pack ends; nothing it computes reaches the others.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from core.layers import mix, step_key, unit_floats
from core.spec import NUM_CLASSES, Augmentation, BatchNorm, Dropout, JobSpec, WeightDecay
from worker import tricks
from worker.checkpoints import Snapshot
from worker.datasets import Splits
from worker.training import (
    STEPS_PER_EXECUTION,
    Control,
    Data,
    Gather,
    Interrupted,
    LeaseLost,
    Report,
    Run,
    Trained,
    TrainingDiverged,
    epoch_order,
    jit_compile,
    targets,
)

# Tricks whose parameters may differ between the branches of one pack.
PER_BRANCH_TRICKS = ("weight_decay", "early_stopping")


def pack_key(spec: JobSpec) -> str | None:
    """Specs with equal keys can train in one pack: everything but the seed, weight decay and
    early stopping must match (same data, architecture, optimizer and schedule). None: the
    spec trains alone (augmentation draws from the backend's generator, not per branch)."""
    if spec.trick(Augmentation):
        return None
    shared = spec.model_dump(exclude={"seed"})
    shared["tricks"] = [t for t in shared["tricks"] if t["name"] not in PER_BRANCH_TRICKS]
    return json.dumps(shared, sort_keys=True)


@dataclass
class Branch:
    """One job of a pack: what `training.train` takes for a job trained alone."""

    spec: JobSpec
    report: Report
    control: Control = field(default_factory=Control)
    resume: Snapshot | None = None


Outcome = Trained | LeaseLost | Interrupted | TrainingDiverged


def train_pack(
    branches: Sequence[Branch],
    splits: Splits,
    ended: Callable[[int, Outcome], None] = lambda k, outcome: None,
) -> list[Outcome]:
    """Train the branches together; for each, what `training.train` would have returned or
    raised for it alone, also passed to `ended(k, outcome)` as soon as branch k ends. They
    must share a `pack_key` and resume from the same epoch."""
    started = time.perf_counter()
    specs = [branch.spec for branch in branches]
    keys = {pack_key(spec) for spec in specs}
    if len(keys) != 1 or None in keys:
        raise ValueError("a pack's specs must share one pack_key")
    if len({branch.resume.epoch if branch.resume else 0 for branch in branches}) != 1:
        raise ValueError("a pack's branches must resume from the same epoch")
    keras.backend.clear_session()
    spec = specs[0]  # what the branches share
    data = Data.of(splits)
    steps_per_epoch = math.ceil(len(data.x_train) / spec.batch_size)
    runs = [
        Run.start(b.spec, data, b.report, b.control, steps_per_epoch, b.resume) for b in branches
    ]
    optimizer = tricks.optimizer(spec, steps_per_epoch)
    trainer = _stacked_trainer(specs, data.x_train)
    trainer.compile(
        optimizer=optimizer,
        loss={"probabilities": _summed_loss(spec), "penalty": _summed_penalty},
        metrics={
            "probabilities": _branch_metrics(spec, len(specs)),
            "penalty": [_branch_mean(k) for k in range(len(specs))],
        },
        steps_per_execution=STEPS_PER_EXECUTION,
        jit_compile=jit_compile(spec, spec.epochs * steps_per_epoch),
    )
    optimizer.build(trainer.trainable_variables)
    mirror = _Mirror(trainer, optimizer, runs)
    mirror.into_pack()

    outcomes: list[Outcome | None] = [None] * len(runs)

    def end(k: int, outcome: Outcome) -> None:
        outcomes[k] = outcome
        ended(k, outcome)

    done = branches[0].resume.epoch if branches[0].resume else 0
    for k, run in enumerate(runs):
        if run.watch.exhausted:  # checkpointed as early stopping ended: its worker died then
            end(k, run.finish(done, started))
    y_train = targets(spec, splits.y_train)
    for epoch in range(done + 1, spec.epochs + 1):
        if None not in outcomes:
            break
        began = time.perf_counter()
        orders = np.stack([epoch_order(s.seed, epoch, len(data.x_train)) for s in specs], axis=1)
        history = trainer.fit(
            orders,
            {"probabilities": y_train[orders], "penalty": np.zeros(orders.shape, np.float32)},
            batch_size=spec.batch_size,
            epochs=1,
            shuffle=False,
            callbacks=[_StopWhenAllLost([branch.control for branch in branches])],
            verbose=0,
        )
        logs = {name: values[-1] for name, values in history.history.items()}
        fit_seconds = (time.perf_counter() - began) / len(branches)  # each branch's share
        mirror.out_of_pack([k for k, outcome in enumerate(outcomes) if outcome is None])
        for k, run in enumerate(runs):
            if outcomes[k] is not None:
                continue
            try:
                if run.end_epoch(epoch, _branch_logs(logs, k), fit_seconds):
                    end(k, run.finish(epoch, started))
            except (LeaseLost, Interrupted, TrainingDiverged) as error:
                end(k, error)
    for k, run in enumerate(runs):
        if outcomes[k] is None:
            end(k, run.finish(None, started))
    return outcomes  # type: ignore[return-value]  # every branch has ended


class _Mirror:
    """Each stacked variable of the pack (model and optimizer) beside the branches' own
    variables it holds: the optimizer's scalars (step count, learning rate) are shared; every
    other variable holds branch k's values at [k] of its (K, ...) reshape."""

    def __init__(self, trainer: keras.Model, optimizer: Any, runs: Sequence[Run]) -> None:
        images = trainer.get_layer("gather").images
        self.stacked = [v for v in trainer.variables if v is not images] + optimizer.variables
        self.own = [[*run.model.variables, *run.optimizer.variables] for run in runs]
        if any(len(own) != len(self.stacked) for own in self.own):
            raise AssertionError("the stacked model does not mirror the single-job model")

    def into_pack(self) -> None:
        for i, stacked in enumerate(self.stacked):
            values = [keras.ops.convert_to_numpy(own[i]) for own in self.own]
            value = values[0] if _shared(self.own[0][i]) else np.stack(values)
            stacked.assign(value.astype(stacked.dtype).reshape(stacked.shape))

    def out_of_pack(self, branches: Sequence[int]) -> None:
        """Into these branches' own variables (not those of ended ones: their final models)."""
        for i, stacked in enumerate(self.stacked):
            value = keras.ops.convert_to_numpy(stacked)
            for k in branches:
                variable = self.own[k][i]
                shape = variable.shape
                variable.assign(value if _shared(variable) else value.reshape(-1, *shape)[k])


def _shared(variable: Any) -> bool:
    return len(variable.shape) == 0


# ---- the stacked model ------------------------------------------------------------------


class _StackedDense(keras.layers.Layer):
    """K Dense layers side by side: (batch, K, in) → (batch, K, units), branch k with its own
    kernel[k] and bias[k]; also each branch's L2 penalty on them, as Keras' L2 regulariser
    on kernel and bias computes it, broadcast to (batch, K)."""

    def __init__(
        self, branches: int, units: int, l2: Sequence[float], activation: str | None = None
    ) -> None:
        super().__init__()
        self.branches, self.units, self.l2 = branches, units, list(l2)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape: tuple[int, ...]) -> None:
        shape = (self.branches, input_shape[-1], self.units)
        # Zeros here; each branch's initial values are copied from its single-job model.
        self.kernel = self.add_weight(shape=shape, initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=shape[::2], initializer="zeros", name="bias")

    def call(self, x: Any) -> tuple[Any, Any]:
        y = self.activation(ops.einsum("bki,kio->bko", x, self.kernel) + self.bias)
        squares = ops.sum(ops.square(self.kernel), axis=(1, 2)) + ops.sum(
            ops.square(self.bias), axis=1
        )
        penalty = ops.multiply(ops.convert_to_tensor(self.l2, "float32"), squares)
        return y, ops.broadcast_to(penalty, (ops.shape(x)[0], self.branches))


class _StackedHashDropout(keras.layers.Layer):
    """HashDropout per branch: branch k's mask is exactly the one its single-job HashDropout
    draws at the same step. State (K, 2): [branch k's seed, steps taken]."""

    def __init__(self, branches: int, rate: float) -> None:
        super().__init__()
        self.rate = rate
        # int32: every backend can assign it (a seed and a step count both fit in 31 bits).
        self.state = self.add_weight(
            shape=(branches, 2), initializer="zeros", dtype="int32", trainable=False
        )

    def call(self, x: Any, training: bool = False) -> Any:
        if not training:
            return x
        state = self.state.value * 1  # a copy, read before the assignment (as Keras' own)
        self.state.assign(ops.add(state, ops.convert_to_tensor([0, 1], "int32")))
        keys = step_key(state[:, 0], state[:, 1])  # (K,)
        batch, units = ops.shape(x)[0], ops.shape(x)[2]
        positions = ops.reshape(ops.arange(batch * units, dtype="int32"), (batch, 1, units))
        bits = mix(ops.bitwise_xor(ops.cast(positions, "uint32"), keys[None, :, None]))
        scaled = ops.multiply(x, 1.0 / (1.0 - self.rate))
        return ops.where(unit_floats(bits) >= self.rate, scaled, ops.zeros_like(x))


def _stacked_trainer(specs: Sequence[JobSpec], images: np.ndarray) -> keras.Model:
    """(batch, K) indices → {"probabilities": (batch, K, 10), "penalty": (batch, K)}, its
    variables in the order of the single-job model's (see `_Mirror`)."""
    spec, branches = specs[0], len(specs)
    l2 = [(t.l2 if (t := s.trick(WeightDecay)) else 0.0) for s in specs]
    indices = keras.Input(shape=(branches,), dtype="int32", name="indices")
    x = keras.layers.Reshape((branches, 28 * 28))(Gather(images, name="gather")(indices))
    penalties = []
    bn, dropout = spec.trick(BatchNorm), spec.trick(Dropout)
    for units in spec.hidden_units:
        x, penalty = _StackedDense(branches, units, l2, None if bn else "relu")(x)
        penalties.append(penalty)
        if bn:  # per branch and unit: one BatchNormalization over (K × units) columns
            x = keras.layers.Reshape((branches * units,))(x)
            x = keras.layers.BatchNormalization(momentum=bn.momentum)(x)
            x = keras.layers.Activation("relu")(keras.layers.Reshape((branches, units))(x))
        if dropout:
            x = _StackedHashDropout(branches, dropout.rate)(x)
    probabilities, _ = _StackedDense(branches, NUM_CLASSES, [0.0] * branches, "softmax")(x)
    penalty = penalties[0] if len(penalties) == 1 else keras.layers.Add()(penalties)
    outputs = {
        "probabilities": keras.layers.Identity(name="probabilities")(probabilities),
        "penalty": keras.layers.Identity(name="penalty")(penalty),
    }
    return keras.Model(indices, outputs, name="pack")


# ---- losses and per-branch metrics --------------------------------------------------------


def _summed_loss(spec: JobSpec) -> Any:
    per_sample = tricks.per_sample(spec).loss

    def loss(y_true: Any, y_pred: Any) -> Any:  # (batch, K) → the sum of the branches' means
        return ops.sum(per_sample(y_true, y_pred), axis=-1)

    return loss


def _summed_penalty(y_true: Any, y_pred: Any) -> Any:
    return ops.sum(y_pred, axis=-1)


def _branch_metrics(spec: JobSpec, branches: int) -> list[keras.metrics.Metric]:
    """Per branch, the single-job trainer's epoch logs: its loss (without the penalty, which
    `_branch_mean` follows), accuracy and plain cross-entropy."""
    per_sample = tricks.per_sample(spec)
    functions = {
        "objective": per_sample.loss,
        "accuracy": per_sample.accuracy,
        "crossentropy": per_sample.crossentropy,
    }
    return [
        keras.metrics.MeanMetricWrapper(_on_branch(function, k), name=f"{name}_{k}")
        for k in range(branches)
        for name, function in functions.items()
    ]


def _on_branch(function: Any, k: int) -> Any:
    return lambda y_true, y_pred: function(y_true[:, k], y_pred[:, k])


def _branch_mean(k: int) -> keras.metrics.Metric:
    return keras.metrics.MeanMetricWrapper(lambda _, y_pred: y_pred[:, k], name=f"penalty_{k}")


def _branch_logs(logs: dict[str, Any], k: int) -> dict[str, float]:
    def log(name: str) -> float:
        return float(next(value for key, value in logs.items() if key.endswith(f"{name}_{k}")))

    return {
        "objective": log("objective") + log("penalty"),
        "accuracy": log("accuracy"),
        "crossentropy": log("crossentropy"),
    }


class _StopWhenAllLost(keras.callbacks.Callback):
    """Ends `fit` within a few steps once every branch's lease is lost."""

    def __init__(self, controls: Sequence[Control]) -> None:
        super().__init__()
        self.controls = controls

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if all(control.lease_lost.is_set() for control in self.controls):
            self.model.stop_training = True

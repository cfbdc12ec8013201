"""Packing: compatible jobs trained side by side as one Keras program.

A small model leaves the cores idle between tiny kernels; K of them trained as one model with
stacked weights (each Dense kernel becomes one (K, in, out) tensor, one batched matmul for all
branches) keep them busy. Branch k is job k: its own weights, initialisation, data order,
dropout masks and weight decay, and nothing of it mixes with another branch. The loss is the
sum of the branches' losses, so each branch's gradient is its own loss's gradient; Adam and
SGD update each element from its own gradient alone, so each branch takes the steps it would
take alone, up to float rounding: the batched kernels sum in another order than a job's own,
and training amplifies the difference (a spec with `exact` never packs).

Each branch is mirrored by the `worker.run.Run` its job would have alone: its initial weights
come from there, and after every epoch its slices of the stacked variables (and of the
optimizer's) are copied back, where the run records it, checkpoints it (in the single-job
format, so it resumes alone or in any pack) and follows its early stopping; its validation
and test scores come from one inference pass of all branches. A branch that stops (early
stopping, a lost lease, a diverged loss) keeps being computed, ignored, until the pack ends;
nothing it computes reaches the others.
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

from core.datasets import Splits
from core.layers import HashDropout, mix, step_key, unit_floats
from core.spec import JobSpec
from worker import steps, tricks
from worker.checkpoints import Snapshot
from worker.run import (
    STOPS,
    Control,
    Data,
    Gather,
    Outcome,
    Report,
    Run,
    Scores,
    epoch_order,
    inferred,
    scores_of,
)

# Tricks whose parameters may differ between the branches of one pack.
PER_BRANCH_TRICKS = ("weight_decay", "early_stopping")


def pack_key(spec: JobSpec) -> str | None:
    """Specs with equal keys can train in one pack: everything but the seed, weight decay and
    early stopping must match (same data, architecture, optimizer and schedule). None: the
    spec trains alone: it asks for exact results, which only a run alone gives, or has a
    trick that is not `tricks.PACKABLE`."""
    if spec.exact or not tricks.packable(spec):
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


def train_pack(
    branches: Sequence[Branch],
    splits: Splits,
    ended: Callable[[int, Outcome], None] = lambda k, outcome: None,
) -> list[Outcome]:
    """Train the branches together; for each, what `training.train` would have returned or
    raised for it alone, also passed to `ended(k, outcome)` as soon as branch k ends. They
    must share a `pack_key`, resume from the same epoch and stop at the same epoch limit."""
    started = time.perf_counter()
    keys = {pack_key(branch.spec) for branch in branches}
    if len(keys) != 1 or None in keys:
        raise ValueError("a pack's specs must share one pack_key")
    if len({branch.resume.epoch if branch.resume else 0 for branch in branches}) != 1:
        raise ValueError("a pack's branches must resume from the same epoch")
    if len({branch.control.epoch_limit for branch in branches}) != 1:
        raise ValueError("a pack's branches must stop at the same epoch limit")
    keras.backend.clear_session()
    data = Data.of(splits)
    runs = [Run.start(b.spec, data, b.report, b.control, b.resume, started) for b in branches]
    pack = _Pack(runs, data)

    def end(k: int, outcome: Outcome) -> None:
        runs[k].outcome = outcome
        ended(k, outcome)

    for k, run in enumerate(runs):
        if run.stopped_epoch is not None:  # resumed where early stopping ended
            end(k, run.finish())
    for epoch in range(runs[0].done + 1, runs[0].last_epoch + 1):
        live = [k for k, run in enumerate(runs) if run.outcome is None]
        if not live:
            break
        pack.train_epoch(epoch, live, end)
    # Those whose final model is their last epoch's, still in the pack, are scored together.
    last = [k for k, run in enumerate(runs) if run.outcome is None and not run.watch.best_weights]
    by_part = {part: pack.scores(x, y) for part, x, y in data.parts()} if last else {}
    for k in last:
        end(k, runs[k].finish({part: scores[k] for part, scores in by_part.items()}))
    for k, run in enumerate(runs):
        if run.outcome is None:
            end(k, run.finish())
    return [run.outcome for run in runs]  # type: ignore[misc]  # every branch has ended


class _Pack:
    """The runs' stacked model, compiled as one, and its twin that scores every branch."""

    def __init__(self, runs: Sequence[Run], data: Data) -> None:
        self.runs, self.data = runs, data
        spec = self.spec = runs[0].spec  # what the branches share
        optimizer = tricks.optimizer(spec, data.steps_per_epoch(spec))
        self.trainer, self.scorer = _stacked_trainer(
            [run.model for run in runs], data.device_images
        )
        loss = {"probabilities": _summed_loss(spec)}
        metrics = {"probabilities": _branch_means(spec, len(runs))}
        self.penalised = "penalty" in self.trainer.output_names  # some branch has weight decay
        if self.penalised:
            loss["penalty"] = _summed_penalty
            metrics["penalty"] = [_BranchMean(_penalty, len(runs), "penalty")]
        self.trainer.compile(
            optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=runs[0].jit_compile
        )
        optimizer.build(self.trainer.trainable_variables)
        self.mirror = _Mirror(self.trainer, optimizer, runs)
        self.mirror.into_pack()
        self.y_train = data.targets(spec)

    def train_epoch(self, epoch: int, live: list[int], end: Callable[[int, Outcome], None]) -> None:
        """Train the pack one epoch and end it in each of the `live` branches, in turn:
        `end(k, outcome)` as soon as branch k ends."""
        began = time.perf_counter()
        count = len(self.y_train)
        orders = np.stack([epoch_order(r.spec.seed, epoch, count) for r in self.runs], axis=1)
        y = {"probabilities": self.y_train[orders]}
        if self.penalised:
            y["penalty"] = np.zeros(orders.shape, np.float32)
        logs = steps.train_epoch(
            self.trainer,
            orders,
            y,
            self.spec.batch_size,
            lambda: all(run.control.halted() for run in self.runs),
        )
        if logs is None:  # every branch's lease is lost, or its time up
            for k in live:
                end(k, self.runs[k].halt())
            return
        self.mirror.out_of_pack(live)
        val = self.scores(self.data.x_val, self.data.splits.y_val)
        # Wall clock, as the job's totals (trained_seconds, result seconds): the pack's epoch.
        fit_seconds = time.perf_counter() - began
        test = self.scores(self.data.x_test, self.data.splits.y_test)
        for k in live:
            run = self.runs[k]
            try:
                scored = {"val": val[k], "test": test[k]}
                if run.end_epoch(epoch, _branch_logs(logs, k), fit_seconds, scored):
                    end(k, run.finish())
            except STOPS as error:
                end(k, error)

    def scores(self, images: np.ndarray, labels: np.ndarray) -> list[Scores]:
        """`run.scores` of every branch, from one inference pass of all branches."""
        if not len(images):
            return [None] * len(self.runs)
        return [scores_of(p, labels) for p in inferred(self.scorer, images, axis=1)]  # (K, N, 10)


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
    """K Dense layers side by side: (K, batch, in) → (K, batch, units), branch k with its own
    kernel[k] and bias[k] (a (1, batch, in) input is shared by all branches). With weight
    decay on some branch, also each branch's L2 penalty on them, as Keras' L2 regularisers on
    kernel and bias compute it, broadcast to (batch, K)."""

    def __init__(self, layers: Sequence[keras.layers.Dense]) -> None:
        super().__init__()
        self.branches, self.units = len(layers), layers[0].units
        self.activation = layers[0].activation
        self.l2 = [
            [_l2(d.kernel_regularizer) for d in layers],
            [_l2(d.bias_regularizer) for d in layers],
        ]
        self.penalised = any(map(any, self.l2))

    def build(self, input_shape: tuple[int, ...]) -> None:
        shape = (self.branches, input_shape[-1], self.units)
        # Zeros here; each branch's initial values are copied from its single-job model.
        self.kernel = self.add_weight(shape=shape, initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=shape[::2], initializer="zeros", name="bias")

    def call(self, x: Any) -> Any:
        y = self.activation(ops.matmul(x, self.kernel) + self.bias[:, None, :])
        if not self.penalised:
            return y
        kernel_l2, bias_l2 = (ops.convert_to_tensor(l2, "float32") for l2 in self.l2)
        penalty = kernel_l2 * ops.sum(ops.square(self.kernel), axis=(1, 2)) + bias_l2 * ops.sum(
            ops.square(self.bias), axis=1
        )
        return y, ops.broadcast_to(penalty, (ops.shape(x)[1], self.branches))


def _l2(regularizer: keras.regularizers.Regularizer | None) -> float:
    if regularizer is None:
        return 0.0
    if isinstance(regularizer, keras.regularizers.L2):
        return float(regularizer.l2)
    raise ValueError(f"a pack cannot stack the regulariser {regularizer!r}")


class _StackedBatchNorm(keras.layers.Layer):
    """BatchNormalization per branch and unit on (K, batch, units): one BatchNormalization
    over (K × units) columns, whose [k] slices are branch k's own statistics."""

    def __init__(self, layer: keras.layers.BatchNormalization) -> None:
        super().__init__()
        self.norm = keras.layers.BatchNormalization(momentum=layer.momentum, epsilon=layer.epsilon)

    def call(self, x: Any, training: bool = False) -> Any:
        branches, units = ops.shape(x)[0], ops.shape(x)[2]
        x = ops.reshape(ops.transpose(x, (1, 0, 2)), (-1, branches * units))
        x = self.norm(x, training=training)
        return ops.transpose(ops.reshape(x, (-1, branches, units)), (1, 0, 2))


class _StackedHashDropout(keras.layers.Layer):
    """HashDropout per branch on (K, batch, units): branch k's mask is exactly the one its
    single-job HashDropout draws at the same step. State (K, 2): [branch k's seed, steps]."""

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
        batch, units = ops.shape(x)[1], ops.shape(x)[2]
        positions = ops.reshape(ops.arange(batch * units, dtype="int32"), (1, batch, units))
        bits = mix(ops.bitwise_xor(ops.cast(positions, "uint32"), keys[:, None, None]))
        scaled = ops.multiply(x, 1.0 / (1.0 - self.rate))
        return ops.where(unit_floats(bits) >= self.rate, scaled, ops.zeros_like(x))


Step = Callable[[Any], Any]


def _stacked(layers: Sequence[keras.layers.Layer]) -> Step | None:
    """One layer of the single-job model, `layers[k]` in branch k's, as one step on
    (K or 1, batch, ...) tensors; None for the input. The branches' layers differ only in
    their weights and weight decay (`pack_key`)."""
    layer = layers[0]
    if isinstance(layer, keras.layers.InputLayer):
        return None
    if isinstance(layer, keras.layers.Flatten):
        features = math.prod(layer.output.shape[1:])
        return lambda x: ops.reshape(x, (ops.shape(x)[0], -1, features))
    if isinstance(layer, keras.layers.Dense):
        return _StackedDense(layers)
    if isinstance(layer, keras.layers.BatchNormalization):
        return _StackedBatchNorm(layer)
    if isinstance(layer, keras.layers.Activation):
        return layer.activation
    if isinstance(layer, HashDropout):
        return _StackedHashDropout(len(layers), layer.rate)
    raise ValueError(f"a pack cannot stack the layer {layer.name} ({type(layer).__name__})")


def _stacked_trainer(
    models: Sequence[keras.Model], images: keras.Variable
) -> tuple[steps.Trainer, keras.Model]:
    """The branches' single-job models (`tricks.build_model`), stacked layer by layer:
    (batch, K) indices → {"probabilities": (batch, K, 10), and with weight decay
    "penalty": (batch, K)}, its variables in the order of the single-job model's (see
    `_Mirror`); and the same layers as (N, 28, 28) images → (K, N, 10) probabilities, to score
    every branch on the same images at once."""
    branches = len(models)
    layers = [_stacked(same) for same in zip(*(model.layers for model in models), strict=True)]

    def forward(x: Any) -> tuple[Any, list[Any]]:  # (K or 1, batch, 28, 28) → (K, batch, 10)
        penalties = []
        for layer in filter(None, layers):
            x = layer(x)
            if isinstance(x, tuple):  # a Dense with weight decay on some branch
                x, penalty = x
                penalties.append(penalty)
        return x, penalties

    indices = keras.Input(shape=(branches,), dtype="int32", name="indices")
    x = Gather(images, name="gather")(ops.transpose(indices))  # (K, batch, 28, 28)
    probabilities, penalties = forward(x)
    outputs = {
        "probabilities": keras.layers.Identity(name="probabilities")(
            ops.transpose(probabilities, (1, 0, 2))
        )
    }
    if penalties:
        penalty = penalties[0] if len(penalties) == 1 else keras.layers.Add()(penalties)
        outputs["penalty"] = keras.layers.Identity(name="penalty")(penalty)
    trainer = steps.Trainer(indices, outputs, name="pack")
    inputs = keras.Input(shape=(28, 28), name="images")
    scorer = keras.Model(inputs, forward(ops.expand_dims(inputs, 0))[0])
    return trainer, scorer


# ---- losses and per-branch metrics --------------------------------------------------------


def _summed_loss(spec: JobSpec) -> Any:
    per_sample = tricks.per_sample(spec).loss

    def loss(y_true: Any, y_pred: Any) -> Any:  # (batch, K) → the sum of the branches' means
        return ops.sum(per_sample(y_true, y_pred), axis=-1)

    return loss


def _summed_penalty(y_true: Any, y_pred: Any) -> Any:
    return ops.sum(y_pred, axis=-1)


class _BranchMean(keras.metrics.Metric):
    """Every branch's epoch mean of a per-sample function of (targets, outputs) that maps
    (batch, K, ...) to (batch, K): K MeanMetricWrappers' sums, in one (K,) state."""

    def __init__(self, function: Any, branches: int, name: str) -> None:
        super().__init__(name=name)
        self.function = function
        self.total = self.add_variable(shape=(branches,), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        values = ops.cast(self.function(y_true, y_pred), self.dtype)
        self.total.assign_add(ops.sum(values, axis=0))
        self.count.assign_add(ops.cast(ops.shape(values)[0], self.dtype))

    def result(self) -> Any:
        return ops.divide_no_nan(self.total, self.count)


def _branch_means(spec: JobSpec, branches: int) -> list[keras.metrics.Metric]:
    """The single-job trainer's epoch logs, for every branch: its loss (without the penalty,
    which a "penalty" `_BranchMean` follows), accuracy and plain cross-entropy."""
    per_sample = tricks.per_sample(spec)
    return [
        _BranchMean(per_sample.loss, branches, "objective"),
        _BranchMean(per_sample.accuracy, branches, "accuracy"),
        _BranchMean(per_sample.crossentropy, branches, "crossentropy"),
    ]


def _penalty(y_true: Any, y_pred: Any) -> Any:
    return y_pred


def _branch_logs(logs: dict[str, Any], k: int) -> dict[str, float]:
    def log(name: str) -> float:  # the (K,) epoch means of a `_BranchMean`; no penalty: 0
        values = [value for key, value in logs.items() if key.endswith(name)]
        return float(np.asarray(values[0])[k]) if values else 0.0

    return {
        "objective": log("objective") + log("penalty"),
        "accuracy": log("accuracy"),
        "crossentropy": log("crossentropy"),
    }

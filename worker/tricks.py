"""Spec → Keras model, loss and optimizer: one small function per trick.

Backend-neutral Keras 3 only (no `tf.`), so the same code trains on TensorFlow, JAX or torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from core.layers import HashDropout
from core.spec import (
    NUM_CLASSES,
    Augmentation,
    BatchNorm,
    CosineDecay,
    Dropout,
    EarlyStopping,
    JobSpec,
    LabelSmoothing,
    Momentum,
    WeightDecay,
)

# Names of the plain data-fit metric that every loss column reports (see `loss_and_metrics`).
CROSSENTROPY = "crossentropy"


# The tricks that a pack (worker.packing, which stacks the layers `build_model` builds) trains
# exactly as `build_model`, `optimizer` and `per_sample` do, each branch with its own; and those
# it refuses, with why. A trick in neither trains alone: a new trick packs only once a test
# shows the pack trains it as a job alone does.
PACKABLE = frozenset(
    {
        "dropout",
        "weight_decay",
        "batch_norm",
        "early_stopping",
        "momentum",
        "label_smoothing",
        "cosine_decay",
    }
)
NOT_PACKABLE = {
    "augmentation": "its layers draw from the backend's random generator, not one per branch",
}


# Likewise for architectures: a pack stacks Dense, batch norm and dropout layers only.
PACKABLE_ARCHITECTURES = frozenset({"mlp"})
NOT_PACKABLE_ARCHITECTURES = {
    "cnn": "a pack has no stacked convolution or pooling, and no equivalence test for them",
}


def packable(spec: JobSpec) -> bool:
    return spec.architecture in PACKABLE_ARCHITECTURES and all(
        trick.name in PACKABLE for trick in spec.tricks
    )


def build_model(spec: JobSpec) -> keras.Model:
    """mlp: Flatten → [Dense → (BatchNorm) → ReLU → (Dropout)] per hidden layer → Dense softmax.
    cnn: [Conv2D → (BatchNorm) → ReLU → MaxPooling 2×2 → (Dropout)] per conv block → Flatten →
    the same hidden layers, as its dense head → Dense softmax. Each trick is applied here, by the
    same functions on both architectures."""
    inputs = keras.Input(shape=(28, 28), name="image")
    x = inputs
    if augmentation := spec.trick(Augmentation):
        x = augment(x, augmentation, spec.seed)
    blocks = spec.conv_filters or []  # none on the mlp
    if blocks:
        x = keras.layers.Reshape((28, 28, 1))(x)  # one grayscale channel
    for index, filters in enumerate(blocks):
        x = conv_block(x, filters, spec, index)
    x = keras.layers.Flatten()(x)
    # Layer numbers count on across the blocks, and seed each layer's initial weights.
    for index, units in enumerate(spec.layer_widths, start=len(blocks)):
        x = hidden_layer(x, units, spec, index)
    outputs = keras.layers.Dense(
        NUM_CLASSES,
        activation="softmax",
        kernel_initializer=glorot(spec.seed, len(blocks) + len(spec.layer_widths)),
        name="classes",
    )(x)
    return keras.Model(inputs, outputs, name=f"tricklab_{spec.architecture}")


def derived_seed(seed: int, role: str, index: int = 0) -> int:
    """A seed for one random layer, from the spec's seed, the layer's role and position only:
    the same seed gives the same initial weights whichever tricks are on, so variants of a
    comparison start from identical models."""
    entropy = [seed, int.from_bytes(role.encode(), "big"), index]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0]) >> 1  # 31 bits


def glorot(seed: int, layer: int) -> keras.initializers.Initializer:
    return keras.initializers.GlorotUniform(seed=derived_seed(seed, "kernel", layer))


def hidden_layer(x: Any, units: int, spec: JobSpec, index: int) -> Any:
    x = activated(keras.layers.Dense(units, **linear_options(spec, index))(x), spec)
    return dropped(x, spec, index)


def conv_block(x: Any, filters: int, spec: JobSpec, index: int) -> Any:
    """A CNN block: a valid-padded convolution, activated as a hidden layer is, then 2×2 max
    pooling, then dropout (of whole feature maps with the dropout trick's `spatial`)."""
    assert spec.kernel_size is not None  # a validated cnn spec has one
    conv = keras.layers.Conv2D(filters, spec.kernel_size, **linear_options(spec, index))
    x = keras.layers.MaxPooling2D(2)(activated(conv(x), spec))
    return dropped(x, spec, index, maps=True)


def linear_options(spec: JobSpec, index: int) -> dict[str, Any]:
    """A hidden Dense or Conv2D layer's activation, weight decay and initial weights."""
    l2 = weight_decay(spec.trick(WeightDecay))
    return {
        "activation": None if spec.trick(BatchNorm) else "relu",
        "kernel_regularizer": l2,
        "bias_regularizer": l2,
        "kernel_initializer": glorot(spec.seed, index),
    }


def activated(x: Any, spec: JobSpec) -> Any:
    """A linear layer's output through its ReLU: already applied, unless batch norm comes
    between."""
    return batch_norm(x, bn) if (bn := spec.trick(BatchNorm)) else x


def dropped(x: Any, spec: JobSpec, index: int, maps: bool = False) -> Any:
    """Dropout after a hidden layer or (`maps`) a conv block's (batch, h, w, channels)."""
    if not (dropout := spec.trick(Dropout)):
        return x
    noise_shape = (None, 1, 1, None) if maps and dropout.spatial else None
    seed = derived_seed(spec.seed, "dropout", index)
    return HashDropout(dropout.rate, noise_shape=noise_shape, seed=seed)(x)


def weight_decay(trick: WeightDecay | None) -> keras.regularizers.Regularizer | None:
    # Keras adds every layer's regulariser penalty to model.losses, which its train step adds
    # to the loss it minimises (the notebook's custom loop forgot them, so its L2 did nothing).
    return keras.regularizers.L2(trick.l2) if trick else None


def batch_norm(x: Any, trick: BatchNorm) -> Any:
    x = keras.layers.BatchNormalization(momentum=trick.momentum)(x)
    return keras.layers.Activation("relu")(x)


def augment(x: Any, trick: Augmentation, seed: int) -> Any:
    """Random shift and flip, active only in training; images stay 28×28 in and out."""
    x = keras.layers.Reshape((28, 28, 1))(x)
    if trick.flip:
        x = keras.layers.RandomFlip("horizontal", seed=derived_seed(seed, "flip"))(x)
    if trick.shift:
        x = keras.layers.RandomTranslation(
            trick.shift,
            trick.shift,
            fill_mode="constant",
            fill_value=0.0,
            seed=derived_seed(seed, "shift"),
        )(x)
    return keras.layers.Reshape((28, 28))(x)


def optimizer(spec: JobSpec, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    assert spec.learning_rate is not None  # a validated spec always has one
    rate: float | keras.optimizers.schedules.LearningRateSchedule = spec.learning_rate
    if decay := spec.trick(CosineDecay):
        rate = cosine_decay(spec.learning_rate, decay, spec.epochs * steps_per_epoch)
    if momentum := spec.trick(Momentum):
        # SGD(nesterov=True) alone keeps momentum=0.0, which is plain SGD: the notebook's bug.
        return keras.optimizers.SGD(rate, momentum=momentum.momentum, nesterov=momentum.nesterov)
    return keras.optimizers.Adam(rate)


def cosine_decay(initial: float, trick: CosineDecay, total_steps: int) -> Any:
    return keras.optimizers.schedules.CosineDecay(
        initial, decay_steps=max(1, total_steps), alpha=trick.final_fraction
    )


@dataclass(frozen=True)
class PerSample:
    """Per-sample functions of (targets, probabilities): the loss minimised, and metrics that
    stay comparable across tricks: accuracy, and the plain cross-entropy (no L2 penalty, no
    label smoothing) that every *_loss column reports."""

    loss: Callable[[Any, Any], Any]
    accuracy: Callable[[Any, Any], Any]
    crossentropy: Callable[[Any, Any], Any]


def per_sample(spec: JobSpec) -> PerSample:
    if smoothing := spec.trick(LabelSmoothing):
        # Smoothing needs one-hot targets (see `one_hot_labels`).
        return PerSample(
            functools.partial(
                keras.losses.categorical_crossentropy, label_smoothing=smoothing.amount
            ),
            keras.metrics.categorical_accuracy,
            keras.losses.categorical_crossentropy,
        )
    return PerSample(
        keras.losses.sparse_categorical_crossentropy,
        keras.metrics.sparse_categorical_accuracy,
        keras.losses.sparse_categorical_crossentropy,
    )


def loss_and_metrics(spec: JobSpec) -> tuple[Callable[[Any, Any], Any], list[keras.metrics.Metric]]:
    """The loss (Keras averages it over the batch) and metrics a job's trainer compiles."""
    functions = per_sample(spec)
    return functions.loss, [
        keras.metrics.MeanMetricWrapper(functions.accuracy, name="accuracy"),
        keras.metrics.MeanMetricWrapper(functions.crossentropy, name=CROSSENTROPY),
    ]


def one_hot_labels(spec: JobSpec) -> bool:
    return spec.trick(LabelSmoothing) is not None


@dataclass
class BestEpoch:
    """Follows the validation loss: remembers its best epoch and, for the early_stopping
    trick, that epoch's weights, and says when `patience` epochs brought no improvement of at
    least `min_delta` (Keras' EarlyStopping rule). Its state is checkpointed with the model."""

    patience: int | None = None  # None: never stop early
    min_delta: float = 0.0
    best_loss: float = math.inf
    best_epoch: int | None = None
    wait: int = 0
    best_weights: list[np.ndarray] = field(default_factory=list)

    def update(self, epoch: int, val_loss: float | None, model: keras.Model) -> bool:
        """Take an epoch's validation loss; True when training should stop."""
        if val_loss is None:
            return False
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.wait = val_loss, epoch, 0
            if self.patience is not None:
                self.best_weights = [np.array(w) for w in model.get_weights()]
        else:
            self.wait += 1
        return self.exhausted

    @property
    def exhausted(self) -> bool:
        """Patience ran out: training stops (also when resuming from this state)."""
        return self.patience is not None and self.wait >= self.patience


def best_epoch(spec: JobSpec) -> BestEpoch:
    trick = spec.trick(EarlyStopping)
    if trick is None:
        return BestEpoch()
    return BestEpoch(patience=trick.patience, min_delta=trick.min_delta)

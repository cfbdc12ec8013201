"""What a job costs, from its spec alone: its model's parameters, its training steps and the
memory it trains in; and the limits (TRICKLAB_MAX_*) that the service checks every spec
against before queueing it, so that no one request can claim months of a worker or more
memory than the machine has."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from core.config import Settings
from core.datasets import DatasetError, SplitError, training_images
from core.spec import (
    DATASET_CLASSES,
    IMAGE_SHAPE,
    NUM_CLASSES,
    Augmentation,
    BatchNorm,
    Dropout,
    EarlyStopping,
    JobSpec,
    Momentum,
)

log = logging.getLogger("tricklab.service")
PIXELS = math.prod(IMAGE_SHAPE)
# Images per inference call when a worker scores a model: the same numbers at any size, and
# fewer calls are faster (Keras' eager call overhead is per call).
EVAL_BATCH = 4096
FLOAT_BYTES = 4
# Floats of one layer's output that one scoring call may hold (64 MiB): a CNN's first conv maps
# are 28 times an image's pixels, so it is scored in fewer images a call than the MLP.
EVAL_FLOATS = 2**24


def parameters(spec: JobSpec) -> int:
    """Every weight of the model, as Keras' count_params counts them (a test holds the two
    equal): each Conv2D and Dense layer's kernel and bias, and batch norm's four vectors a
    conv block (per channel) or hidden layer."""
    channels = [1, *(spec.conv_filters or [])]
    kernel = (spec.kernel_size or 0) ** 2
    conv = sum(kernel * inputs * filters + filters for inputs, filters in pairwise(channels))
    widths = [_flattened(spec), *spec.layer_widths, NUM_CLASSES]
    dense = sum(inputs * units + units for inputs, units in pairwise(widths))
    normalised = sum(channels[1:]) + sum(spec.layer_widths)
    return conv + dense + (4 * normalised if spec.trick(BatchNorm) else 0)


def _flattened(spec: JobSpec) -> int:
    """The features entering the first dense layer: the image, or the last block's maps."""
    if not spec.conv_filters:
        return PIXELS
    return spec.feature_maps()[-1] ** 2 * spec.conv_filters[-1]


def eval_batch(spec: JobSpec) -> int:
    """Images per inference call when a worker scores this spec's model: EVAL_BATCH, or fewer
    where its widest layer output would take more than EVAL_FLOATS."""
    sides = spec.feature_maps()
    maps = [f * sides[1 + 2 * b] ** 2 for b, f in enumerate(spec.conv_filters or [])]
    widest = max(PIXELS, *maps, *spec.layer_widths)
    return max(1, min(EVAL_BATCH, EVAL_FLOATS // widest))


def steps_per_epoch(spec: JobSpec, images: int) -> int:
    return math.ceil(images / spec.batch_size)


def memory_bytes(spec: JobSpec) -> int:
    """An estimate of the memory one job trains in, whether alone or as one branch of a pack:
    float32 copies of its parameters (the weights, their gradients, the optimizer's slots and
    early stopping's best weights) and the activations of the largest batch it computes (a
    training batch, kept for the backward pass, or an inference batch when scoring). The
    training images are one copy per worker process, shared by its jobs, and not counted."""
    slots = 1 if spec.trick(Momentum) else 2  # SGD's velocity; Adam's two moments
    copies = 2 + slots + (1 if spec.trick(EarlyStopping) else 0)
    # Per hidden layer: the Dense output, and batch norm's output and ReLU, and dropout's; per
    # conv block the same of its maps, dropout after the pooling, which adds one more.
    linear = 1 + (2 if spec.trick(BatchNorm) else 0)
    dropout = 1 if spec.trick(Dropout) else 0
    inputs = PIXELS * (4 if spec.trick(Augmentation) else 1)  # reshaped, flipped, shifted
    sides = spec.feature_maps()
    maps = sum(
        filters * (linear * sides[1 + 2 * block] ** 2 + (1 + dropout) * sides[2 + 2 * block] ** 2)
        for block, filters in enumerate(spec.conv_filters or [])
    )
    activations = inputs + maps + (linear + dropout) * sum(spec.layer_widths) + NUM_CLASSES
    widest = max(2 * spec.batch_size * activations, eval_batch(spec) * activations)
    return FLOAT_BYTES * (copies * parameters(spec) + widest)


@dataclass(frozen=True)
class Refusal:
    """Why a spec is not admitted: the field to change, a message naming the limit, the
    computed value and the setting that raises it."""

    field: str
    message: str
    context: dict[str, Any]


def refusals(spec: JobSpec, settings: Settings) -> list[Refusal]:
    """Every reason this deployment cannot train the spec; empty when it can."""
    try:
        images = training_images(spec.dataset, settings.data_dir, spec.validation_size)
    except DatasetError as error:
        return [_missing_data(spec, settings.data_dir, error)]
    found = [
        _over(
            _widest_field(spec),
            f"the model would have {parameters(spec):,} parameters",
            parameters(spec),
            settings.max_parameters,
            "TRICKLAB_MAX_PARAMETERS",
        ),
        _over(
            "epochs",
            f"{spec.epochs:,} epochs × {steps_per_epoch(spec, images):,} steps per epoch "
            f"(batch_size {spec.batch_size}) would be "
            f"{spec.epochs * steps_per_epoch(spec, images):,} training steps",
            spec.epochs * steps_per_epoch(spec, images),
            settings.max_steps_per_job,
            "TRICKLAB_MAX_STEPS_PER_JOB",
        ),
        _over(
            "batch_size",
            f"training would take an estimated {memory_bytes(spec):,} bytes of memory",
            memory_bytes(spec),
            settings.max_pack_memory_bytes,
            "TRICKLAB_MAX_PACK_MEMORY_BYTES",
        ),
    ]
    return [refusal for refusal in found if refusal is not None]


def _widest_field(spec: JobSpec) -> str:
    """The shape field to change for fewer parameters: the MLP's layers; the CNN's head, which
    holds most of its weights, unless its conv blocks hold more."""
    if spec.architecture == "mlp":
        return "hidden_units"
    with_head = parameters(spec)
    head = sum(a * b + b for a, b in pairwise([_flattened(spec), *spec.layer_widths, NUM_CLASSES]))
    return "dense_units" if 2 * head >= with_head else "conv_filters"


def _over(field: str, what: str, value: int, limit: int, setting: str) -> Refusal | None:
    if value <= limit:
        return None
    return Refusal(
        field,
        f"{what}; the limit is {limit:,} ({setting}, which the operator can raise)",
        {"value": value, "limit": limit, "setting": setting},
    )


def _missing_data(spec: JobSpec, data_dir: Path, error: DatasetError) -> Refusal:
    if isinstance(error, SplitError):
        return Refusal("validation_size", str(error), {})
    log.warning("dataset=%s unavailable: %s", spec.dataset, error)  # paths: for the operator
    present = [name for name in DATASET_CLASSES if _has(name, data_dir)]
    return Refusal(
        "dataset",
        f"dataset {spec.dataset!r} is not available on this deployment (available: "
        f"{', '.join(present) or 'none'}); an operator adds it by putting its four IDX files "
        "in TRICKLAB_DATA_DIR",
        {"available": ", ".join(present)},
    )


def _has(name: str, data_dir: Path) -> bool:
    try:
        training_images(name, data_dir, 0)
    except DatasetError:
        return False
    return True

"""Many training steps per compiled call.

`fit` launches one compiled train step per batch; even with `steps_per_execution`, every step
is its own launch with a tf.data fetch before it (on JAX, a Python call). For a small model
that overhead is most of the step: on the 2-core CPU a base-model step costs about 0.1 ms of
compute and `fit` took 0.3–0.5 ms. A `Trainer` takes a chunk of steps (indices and targets
shaped (steps, batch, ...)) and runs Keras' own train step on each row in a loop inside one
compiled function, so each step is the one `fit` would take, and `train_epoch` feeds it an
epoch a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import keras
import numpy as np
from keras import ops

# Steps per call: a lost lease or a stop request is noticed between calls.
CHUNK_STEPS = 256
PADDING = -1  # an index row of PADDING fills a short chunk up to CHUNK_STEPS: no step


class Trainer(keras.Model):
    """A functional model whose `train_on_batch` takes a chunk: (steps, batch, ...) inputs
    and targets, one training step per row (rows of PADDING indices are skipped, so chunks
    of fewer steps reuse the compiled function), and answers the chunk's metric means."""

    metrics_built = False  # see `_build`
    _plain_function: Any = None  # see `train_partial_batch`

    def train_step(self, *args: Any) -> Any:
        if keras.backend.backend() == "jax":
            return self._stateless_chunk(*args)
        return self._chunk(*args)

    def _chunk(self, data: Any) -> Any:
        """TensorFlow and torch: each step updates the variables in place."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        step = super().train_step

        def body(i: Any, carry: Any) -> Any:
            step((x[i], _at(y, i)))
            return carry

        ops.fori_loop(0, _steps(x), body, 0)
        return self.get_metrics_result()

    def _stateless_chunk(self, state: Any, data: Any) -> Any:
        """JAX: each step maps the state (every variable's value) to the next."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        step = super().train_step
        state = ops.fori_loop(0, _steps(x), lambda i, s: step(s, (x[i], _at(y, i)))[1], state)
        metrics = list(zip(self.metrics_variables, state[3], strict=True))
        with keras.StatelessScope(state_mapping=metrics):
            return self.get_metrics_result(), state

    def train_partial_batch(self, x: Any, y: Any) -> dict[str, Any]:
        """`train_on_batch` for an epoch's partial last batch. Its shape is one more, which
        XLA would compile the whole step again for (0.5–1 s on the 2-core CPU, for one step
        an epoch): on TensorFlow it runs uncompiled instead, traced once (0.2 s). JAX and
        torch keep their compiler's choice."""
        model: Any = self  # Keras' trainer attributes carry no types
        if keras.backend.backend() != "tensorflow" or not model.jit_compile:
            return model.train_on_batch(x, y, return_dict=True)
        compiled = model.train_function
        if self._plain_function is None:
            model.jit_compile = False
            model.make_train_function(force=True)
            self._plain_function, model.jit_compile = model.train_function, True
        model.train_function = self._plain_function
        try:
            return model.train_on_batch(x, y, return_dict=True)
        finally:
            model.train_function = compiled


def _steps(x: Any) -> Any:
    """The chunk's real steps: its rows that are not PADDING."""
    first = ops.reshape(x, (ops.shape(x)[0], -1))[:, 0]
    return ops.sum(ops.cast(ops.not_equal(first, PADDING), "int32"))


def _at(structure: Any, key: Any) -> Any:
    """Each array of a structure (the targets: one array, or a dict of them) indexed by key."""
    return keras.tree.map_structure(lambda array: array[key], structure)


def train_epoch(
    trainer: Trainer,
    indices: np.ndarray,
    targets: Any,
    batch_size: int,
    stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any] | None:
    """Train one epoch over `indices` ((N, ...) in training order; `targets` a structure of
    (N, ...) arrays beside them) in batches of `batch_size`, the last one smaller if N is not
    a multiple of it; the epoch means of the trainer's metrics. Checks `stop()` before every
    chunk: None once it is true, the epoch left unfinished."""
    if not trainer.metrics_built:
        _build(trainer, indices[:batch_size], _at(targets, slice(0, batch_size)))
    totals: dict[str, Any] = {}
    seen = 0
    for rows, samples in _chunks(len(indices), batch_size):
        if stop():
            return None
        x = _chunk(indices, rows, batch_size, PADDING)
        y = keras.tree.map_structure(partial(_chunk, rows=rows, batch_size=batch_size), targets)
        if samples < batch_size:
            logs = trainer.train_partial_batch(x, y)
        else:
            logs = trainer.train_on_batch(x, y, return_dict=True)
        for name, value in logs.items():  # the chunk's means, weighted by its samples
            totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64) * samples
        seen += samples
    return {name: total / seen for name, total in totals.items()}


def _chunks(count: int, batch_size: int) -> list[tuple[slice, int]]:
    """Each call's slice of the epoch and its number of samples: CHUNK_STEPS full batches at
    a time, then the partial batch alone (see `Trainer.train_partial_batch`)."""
    full = count // batch_size * batch_size
    span = CHUNK_STEPS * batch_size
    calls = [(slice(s, min(s + span, full)), min(span, full - s)) for s in range(0, full, span)]
    if full < count:
        calls.append((slice(full, count), count - full))
    return calls


def _chunk(array: np.ndarray, rows: slice, batch_size: int, fill: Any = 0) -> np.ndarray:
    """array[rows] as (steps, batch, ...): full batches padded with `fill` to CHUNK_STEPS
    steps, or the partial batch as one step."""
    part = array[rows]
    if len(part) < batch_size:
        return part[None]
    steps = part.reshape(-1, batch_size, *array.shape[1:])
    padded = np.full((CHUNK_STEPS, *steps.shape[1:]), fill, array.dtype)
    padded[: len(steps)] = steps
    return padded


def _build(trainer: Trainer, x: np.ndarray, y: Any) -> None:
    """Build the compiled loss and metrics from one batch, as `fit` would from its first
    (Keras would otherwise build them from a chunk, which the model cannot take). The
    model runs in inference mode, which changes no variable; the metrics are reset by every
    `train_on_batch`."""
    y_pred = trainer(x, training=False)
    trainer.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
    trainer.compute_metrics(x, y, y_pred)
    trainer.metrics_built = True

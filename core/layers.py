"""Keras layers of tricklab's own, registered so that saved models load with them.

`HashDropout` draws its masks from a counter-based hash of (seed, training step, position)
in 32-bit integer arithmetic, which every backend computes bit for bit the same, eagerly or
compiled by XLA. Keras' own dropout draws from the backend's random generator, whose numbers
change when XLA compiles the step: the trainer could not then compile steps without changing
a run's results.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

# lowbias32 (Chris Wellons' hash prospector): a bijective 32-bit mixer with a low bias.
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
_UNIT = 2.0**-24  # 24 random bits → a float32 in [0, 1), exactly


def mix(x: Any) -> Any:
    """lowbias32 of a uint32 tensor, element-wise."""
    x = ops.bitwise_xor(x, ops.right_shift(x, 16))
    x = ops.multiply(x, ops.convert_to_tensor(_MULTIPLIERS[0], "uint32"))
    x = ops.bitwise_xor(x, ops.right_shift(x, 15))
    x = ops.multiply(x, ops.convert_to_tensor(_MULTIPLIERS[1], "uint32"))
    return ops.bitwise_xor(x, ops.right_shift(x, 16))


def uniform(seed: Any, step: Any, shape: tuple[Any, ...]) -> Any:
    """Floats in [0, 1), a pure function of seed, step and position within `shape`."""
    count = math.prod(shape)  # the batch size may be a symbolic tensor: prod only multiplies
    positions = ops.cast(ops.reshape(ops.arange(count, dtype="int32"), shape), "uint32")
    return unit_floats(mix(ops.bitwise_xor(positions, step_key(seed, step))))


def step_key(seed: Any, step: Any) -> Any:
    """The key of one step's draws (element-wise over tensors of seeds and steps)."""
    return mix(ops.bitwise_xor(mix(ops.cast(seed, "uint32")), ops.cast(step, "uint32")))


def unit_floats(bits: Any) -> Any:
    """Random uint32 bits → floats in [0, 1), from their top 24 bits."""
    return ops.multiply(ops.cast(ops.right_shift(bits, 8), "float32"), _UNIT)


@keras.saving.register_keras_serializable(package="tricklab")
class HashDropout(keras.layers.Dropout):
    """Dropout (inverted: kept units are scaled by 1 / (1 - rate)) with masks from `uniform`.
    Its generator's state is [seed, steps taken], checkpointed with the model. A `noise_shape`
    with 1s shares one draw along those axes, as Keras' own: (None, 1, 1, None) drops whole
    feature maps (spatial dropout)."""

    def call(self, inputs: Any, training: bool = False) -> Any:
        if not training or self.rate <= 0:
            return inputs
        state = self.seed_generator.next()  # [seed, step], then step + 1
        shape = tuple(ops.shape(inputs))
        if self.noise_shape is not None:
            shape = tuple(
                s if n is None else n for n, s in zip(self.noise_shape, shape, strict=True)
            )
        noise = uniform(state[0], state[1], shape)  # broadcast along the shared axes
        scaled = ops.multiply(inputs, 1.0 / (1.0 - self.rate))
        return ops.where(noise >= self.rate, scaled, ops.zeros_like(inputs))

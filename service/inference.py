"""A fast forward pass for serving small models.

At inference a tricklab model is a chain of affine maps (Dense, and BatchNormalization with
its moving statistics) and element-wise activations; Dropout and the augmentation layers
pass images through untouched. numpy runs such a chain for a handful of images in tens of
microseconds, where one call into TensorFlow costs about 0.3 ms of dispatch alone, more than
the whole rest of a prediction request.

`numpy_forward` reads the layers of a loaded Keras model and returns that chain as a numpy
function, or None when the model holds anything else. The predictor checks the chain against
Keras itself on probe inputs before using it, and serves the model through Keras otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]
PASS_THROUGH = (
    keras.layers.InputLayer,
    keras.layers.Dropout,  # inactive at inference
    keras.layers.RandomFlip,
    keras.layers.RandomTranslation,
)


def numpy_forward(model: keras.Model) -> Forward | None:
    """The model's inference as numpy float32 operations, or None if it cannot be expressed."""
    steps: list[Forward] = []
    previous = None
    for layer in model.layers:
        if previous is not None and layer.input is not previous.output:
            return None  # not a simple chain
        previous = layer
        layer_steps = _steps(layer)
        if layer_steps is None:
            return None
        steps += layer_steps

    def forward(inputs: np.ndarray) -> np.ndarray:
        x = np.asarray(inputs, np.float32)
        for step in steps:
            x = step(x)
        return x

    return forward


def _steps(layer: keras.layers.Layer) -> list[Forward] | None:
    """One layer at inference as numpy steps, or None if it is not one of ours."""
    if isinstance(layer, PASS_THROUGH):
        return []
    if isinstance(layer, keras.layers.Flatten | keras.layers.Reshape):
        return [_reshape(tuple(layer.output.shape[1:]))]
    if isinstance(layer, keras.layers.BatchNormalization) and layer.axis in (-1, [-1]):
        return [_batch_norm(layer)]
    activation = _activation(getattr(layer, "activation", None))
    if activation is None:
        return None
    if isinstance(layer, keras.layers.Activation):
        return [activation]
    if isinstance(layer, keras.layers.Dense):
        kernel = np.asarray(layer.kernel, np.float32)
        bias = np.asarray(layer.bias, np.float32) if layer.use_bias else np.float32(0)
        return [_affine(kernel, bias), activation]
    return None


def _reshape(shape: tuple[int, ...]) -> Forward:
    return lambda x: x.reshape(len(x), *shape)


def _affine(kernel: np.ndarray, bias: np.ndarray | np.float32) -> Forward:
    return lambda x: x @ kernel + bias


def _batch_norm(layer: keras.layers.BatchNormalization) -> Forward:
    """At inference BN is affine: (x - mean) / sqrt(var + eps) * gamma + beta."""
    variance = np.asarray(layer.moving_variance, np.float32)
    scale = 1 / np.sqrt(variance + np.float32(layer.epsilon))
    if layer.scale:
        scale = scale * np.asarray(layer.gamma, np.float32)
    shift = -np.asarray(layer.moving_mean, np.float32) * scale
    if layer.center:
        shift = shift + np.asarray(layer.beta, np.float32)
    return lambda x: x * scale + shift


def _softmax(x: np.ndarray) -> np.ndarray:
    exponentials = np.exp(x - x.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def _activation(function: object) -> Forward | None:
    if function is None:
        return None
    name = keras.activations.serialize(function)
    if name == "linear":
        return lambda x: x
    if name == "relu":
        return lambda x: np.maximum(x, np.float32(0))
    if name == "softmax":
        return _softmax
    return None

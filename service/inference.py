"""A fast forward pass for serving small models.

At inference a tricklab model is a chain of affine maps (Dense, Conv2D, and
BatchNormalization with its moving statistics), 2×2 max pooling and element-wise activations;
Dropout and the augmentation layers pass images through untouched. numpy runs such a chain
for a handful of images in tens of microseconds (a convolution as one matmul of the image's
patches, "im2col"), where one call into TensorFlow costs about 0.3 ms of dispatch alone, more
than the whole rest of a prediction request.

`numpy_forward` reads the layers of a loaded Keras model and returns that chain as a numpy
function, or None when the model holds anything else. The predictor checks the chain against
Keras itself on probe inputs before using it, and serves the model through Keras otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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
    if isinstance(layer, keras.layers.BatchNormalization) and layer.axis in (-1, 3, [-1], [3]):
        return [_batch_norm(layer)]
    if isinstance(layer, keras.layers.MaxPooling2D):
        return _max_pooling(layer)
    activation = _activation(getattr(layer, "activation", None))
    if activation is None:
        return None
    if isinstance(layer, keras.layers.Activation):
        return [activation]
    if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D):
        kernel = np.asarray(layer.kernel, np.float32)
        bias = np.asarray(layer.bias, np.float32) if layer.use_bias else np.float32(0)
        if isinstance(layer, keras.layers.Dense):
            return [_affine(kernel, bias), activation]
        convolution = _convolution(layer, kernel, bias)
        return None if convolution is None else [convolution, activation]
    return None


def _convolution(
    layer: keras.layers.Conv2D, kernel: np.ndarray, bias: np.ndarray | np.float32
) -> Forward | None:
    """(n, h, w, c) → (n, h - kh + 1, w - kw + 1, filters): each output position's patch
    (kh, kw, c), flattened, times the kernel flattened alike. Only the convolutions tricklab
    builds: channels last, valid padding, stride and dilation 1, one group."""
    plain = (
        layer.data_format == "channels_last"
        and layer.padding == "valid"
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
    )
    if not plain:
        return None
    height, width, _, filters = kernel.shape
    matrix = kernel.reshape(-1, filters)  # rows in (kh, kw, c) order

    def convolve(x: np.ndarray) -> np.ndarray:
        # (n, h', w', c, kh, kw) views, then (n, h', w', kh, kw, c) as the kernel's rows
        patches = sliding_window_view(x, (height, width), axis=(1, 2))
        patches = patches.transpose(0, 1, 2, 4, 5, 3)
        return patches.reshape(*patches.shape[:3], -1) @ matrix + bias

    return convolve


def _max_pooling(layer: keras.layers.MaxPooling2D) -> list[Forward] | None:
    """Non-overlapping p×p max pooling (valid padding, channels last): a trailing row or
    column that fills no window is dropped, as Keras does."""
    size = tuple(layer.pool_size)
    plain = (
        layer.data_format == "channels_last"
        and layer.padding == "valid"
        and size[0] == size[1]
        and tuple(layer.strides) == size
    )
    if not plain:
        return None
    p = size[0]

    def pool(x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        x = x[:, : h // p * p, : w // p * p]
        return x.reshape(n, h // p, p, w // p, p, c).max(axis=(2, 4))

    return [pool]


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

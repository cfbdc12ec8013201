"""The numpy forward pass agrees with Keras on every model the worker builds, and declines
models it cannot express."""

import itertools

import keras
import numpy as np
import pytest

from core.spec import JobSpec
from service.inference import numpy_forward
from worker.tricks import build_model

TRICKS = ["dropout", "batch_norm", "augmentation", "weight_decay"]


def trained_looking(model: keras.Model, seed: int) -> keras.Model:
    """Move BatchNormalization's statistics and scales off their initial values, so that the
    comparison exercises them."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(size=shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, size=shape).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 2, size=shape).astype("float32"))
            layer.beta.assign(rng.normal(size=shape).astype("float32"))
    return model


@pytest.mark.parametrize(
    "tricks",
    [list(combo) for k in range(len(TRICKS) + 1) for combo in itertools.combinations(TRICKS, k)],
    ids=lambda tricks: "+".join(tricks) or "base",
)
def test_matches_keras_for_every_combination_of_layer_shaping_tricks(tricks):
    spec = JobSpec(tricks=[{"name": name} for name in tricks], hidden_units=[64, 32])
    model = trained_looking(build_model(spec), seed=len(tricks))
    forward = numpy_forward(model)
    assert forward is not None
    images = np.random.default_rng(1).random((32, 28, 28), np.float32)
    np.testing.assert_allclose(forward(images), model.predict_on_batch(images), atol=1e-6)


@pytest.mark.parametrize(
    "tricks",
    [list(combo) for k in range(len(TRICKS) + 1) for combo in itertools.combinations(TRICKS, k)],
    ids=lambda tricks: "+".join(tricks) or "base",
)
def test_matches_keras_on_the_cnn_for_every_combination_of_layer_shaping_tricks(tricks):
    spec = JobSpec.model_validate(
        {
            "architecture": "cnn",
            "tricks": [{"name": name} for name in tricks],
            # kernel 3: 28 → 26 → 13 → 11 → 5 → 3 → 1, odd maps whose last row pooling drops
            "conv_filters": [3, 5] if "dropout" in tricks else [2, 3, 4],
            "kernel_size": 5 if "dropout" in tricks else 3,
            "dense_units": [16, 8],
        }
    )
    model = trained_looking(build_model(spec), seed=len(tricks))
    forward = numpy_forward(model)
    assert forward is not None
    images = np.random.default_rng(1).random((32, 28, 28), np.float32)
    np.testing.assert_allclose(forward(images), model.predict_on_batch(images), atol=1e-6)


def test_declines_layers_it_does_not_know():
    for padding, strides in (("same", 1), ("valid", 2)):  # convolutions tricklab never builds
        inputs = keras.Input((28, 28))
        x = keras.layers.Reshape((28, 28, 1))(inputs)
        x = keras.layers.Conv2D(4, 3, padding=padding, strides=strides)(x)
        outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x))
        assert numpy_forward(keras.Model(inputs, outputs)) is None

    gelu = keras.Sequential(
        [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, activation="gelu")]
    )
    assert numpy_forward(gelu) is None


def test_declines_models_that_are_not_a_chain():
    inputs = keras.Input((28, 28))
    flat = keras.layers.Flatten()(inputs)
    a = keras.layers.Dense(10)(flat)
    b = keras.layers.Dense(10)(flat)  # a branch: b reads flat, not a
    outputs = keras.layers.Activation("softmax")(keras.layers.Add()([a, b]))
    assert numpy_forward(keras.Model(inputs, outputs)) is None

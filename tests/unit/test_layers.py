"""HashDropout: real dropout whose masks depend on the seed, the step and the position only,
so that compiling the train step with XLA, or not, gives the same masks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.layers import HashDropout, mix, uniform


def reference_mix(x: np.ndarray) -> np.ndarray:
    """lowbias32 in plain 64-bit numpy arithmetic, masked to 32 bits."""
    x = x.astype(np.uint64)
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_the_hash_is_lowbias32_bit_for_bit():
    x = np.array([0, 1, 2, 12345, 2**31, 2**32 - 1], dtype=np.uint32)
    assert np.array_equal(keras.ops.convert_to_numpy(mix(x)), reference_mix(x))


def test_uniform_numbers_are_uniform_and_differ_by_seed_and_step():
    draws = [
        keras.ops.convert_to_numpy(uniform(s, t, (64, 128))) for s, t in [(1, 0), (1, 1), (2, 0)]
    ]
    for draw in draws:
        assert draw.min() >= 0 and draw.max() < 1
        assert abs(draw.mean() - 0.5) < 0.01
        assert np.histogram(draw, bins=10, range=(0, 1))[0].min() > 700  # ≈ 819 each
    assert not np.array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])
    assert abs(np.corrcoef(draws[0].ravel(), draws[1].ravel())[0, 1]) < 0.02


def test_dropout_drops_the_rate_and_scales_the_rest():
    layer = HashDropout(0.3, seed=7)
    x = np.ones((256, 128), dtype=np.float32)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.7)}
    assert abs((out == 0).mean() - 0.3) < 0.01
    assert np.array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    second = keras.ops.convert_to_numpy(layer(x, training=True))
    assert not np.array_equal(out == 0, second == 0)  # a new mask each step


@pytest.mark.parametrize("jit", [False, True])
def test_masks_are_the_same_compiled_or_not(jit):
    x = np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32)
    eager = HashDropout(0.5, seed=3)
    expected = [keras.ops.convert_to_numpy(eager(x, training=True)) for _ in range(3)]
    compiled_layer = HashDropout(0.5, seed=3)
    step = tf.function(lambda v: compiled_layer(v, training=True), jit_compile=jit)
    assert all(np.array_equal(step(x).numpy(), e) for e in expected)


def test_a_model_with_it_saves_and_loads(tmp_path):
    inputs = keras.Input((8,))
    model = keras.Model(inputs, HashDropout(0.25, seed=1)(keras.layers.Dense(4)(inputs)))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    layer = loaded.layers[-1]
    assert isinstance(layer, HashDropout) and layer.rate == 0.25 and layer.seed == 1

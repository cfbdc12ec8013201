"""Loading Keras and its backend when a process starts, before it serves or trains."""

from __future__ import annotations

from core.native_noise import native_noise_dropped


def load_backend() -> None:
    """Import Keras (TensorFlow with it, by default) and let the backend look for its devices,
    as the first model or tensor would: the lines its native code writes meanwhile on a
    machine without a GPU, which look like failures and are none, are dropped."""
    with native_noise_dropped():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()

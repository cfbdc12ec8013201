"""The trained model as it is saved for serving and download: standard Keras layers only.

A downloaded `.keras` file must load with plain `keras.saving.load_model` where only Keras is
installed. Training uses tricklab's own `HashDropout` (`core/layers.py`), which such a process
cannot deserialize; but dropout is the identity at inference, so a standard
`keras.layers.Dropout` of the same rate serves the same outputs and needs no custom object (nor
HashDropout's generator state). Backend-neutral Keras 3 only: workers run on TensorFlow and JAX.
"""

from __future__ import annotations

import keras


def servable(model: keras.Model) -> keras.Model:
    """A copy of `model` with every Dropout subclass replaced by a standard Dropout of the same
    configuration; same model, layer and input names, same weights, same outputs at inference."""
    copy = keras.models.clone_model(model, clone_function=_standard)
    copy.set_weights(model.get_weights())  # Dropout holds no weights: the lists line up
    return copy


def _standard(layer: keras.layers.Layer) -> keras.layers.Layer:
    cls = keras.layers.Dropout if isinstance(layer, keras.layers.Dropout) else type(layer)
    return cls.from_config(layer.get_config())

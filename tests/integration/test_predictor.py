"""The predictor serves any model file it wrote through Keras, and the fast numpy chain only
where that chain is exact."""

import asyncio

import keras
import numpy as np

from jobqueue.artifacts import ArtifactStore, sha256_of
from jobqueue.models import Job
from service.serving import BatchPolicy, Predictor


def stored(artifacts: ArtifactStore, model: keras.Model) -> Job:
    name = "jobs/x/model.keras"
    artifacts.path(name).parent.mkdir(parents=True)
    model.save(artifacts.path(name))
    return Job(
        id="x",
        spec={"dataset": "fashion_mnist"},
        model_path=name,
        model_sha256=sha256_of(artifacts.path(name)),
    )


def test_a_model_the_numpy_chain_cannot_express_is_served_by_keras(tmp_path):
    inputs = keras.Input((28, 28))
    # a convolution tricklab never builds (same padding): the numpy chain declines it
    x = keras.layers.Conv2D(2, 3, padding="same")(keras.layers.Reshape((28, 28, 1))(inputs))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    artifacts = ArtifactStore(tmp_path)
    job = stored(artifacts, model)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)

    async def classify():
        predictor = Predictor(artifacts, 1, BatchPolicy(0, 256, 4096))
        loaded = await predictor.load(job)
        return loaded.runtime, await loaded.classify(images)

    runtime, result = asyncio.run(classify())
    assert runtime == "keras"
    expected = model.predict_on_batch(images.astype(np.float32) / 255)
    served = np.array([p.probabilities for p in result.predictions])
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-7)

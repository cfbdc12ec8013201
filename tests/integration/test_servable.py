"""A saved servable model loads with plain Keras in a process that cannot import tricklab, and
answers exactly as the trained model does at inference."""

from __future__ import annotations

import json
import zipfile
from typing import Any

import keras
import numpy as np
import pytest

from core.spec import JobSpec
from service.inference import numpy_forward
from tests.support.data import TINY, TINY_CNN
from tests.support.plain_keras import load_without_tricklab
from worker import run, training
from worker.servable import servable

pytestmark = pytest.mark.equivalence

VARIANTS = {
    "base": [],
    "dropout": ["dropout"],
    "dropout+batch_norm": ["dropout", "batch_norm"],
    "augmentation": ["augmentation"],
    "cnn+spatial_dropout+batch_norm": [{"name": "dropout", "spatial": True}, "batch_norm"],
}


@pytest.fixture(scope="module")
def saved(splits: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each variant trained, its servable model saved, and what a plain-Keras process answers
    for fixed inputs next to the trained model's own inference-mode outputs."""
    folder = tmp_path_factory.mktemp("servable")
    (folder / "trained").mkdir()  # the models as trained, outside the loader's glob
    scaled = run.Data.of(splits).x_test[:16]
    noise = np.random.default_rng(0).random((16, 28, 28), np.float32)
    inputs = np.concatenate([scaled, noise]).astype(np.float32)
    np.save(folder / "inputs.npy", inputs)
    expected = {}
    for name, tricks in VARIANTS.items():
        shape = TINY_CNN if name.startswith("cnn") else TINY
        spec = JobSpec.model_validate({**shape, "tricks": tricks})
        trained = training.train(spec, splits, lambda row, snapshot: True)
        expected[name] = keras.ops.convert_to_numpy(trained.model(inputs, training=False))
        servable(trained.model).save(folder / f"{name}.keras")
        trained.model.save(folder / "trained" / f"{name}.keras")
    answers = load_without_tricklab(folder, cwd=tmp_path_factory.mktemp("cwd"))
    return {"folder": folder, "inputs": inputs, "expected": expected, "answers": answers}


@pytest.mark.backends
@pytest.mark.parametrize("variant", VARIANTS)
def test_loads_without_tricklab_and_answers_as_the_trained_model(saved, variant):
    answer = saved["answers"][variant]
    assert "error" not in answer, answer["error"][:2000]
    assert answer["imported"] == []  # loading needed nothing of tricklab
    assert all(module.startswith("keras.") for module in answer["modules"]), answer["modules"]
    np.testing.assert_allclose(
        np.asarray(answer["outputs"], np.float32), saved["expected"][variant], rtol=0, atol=1e-6
    )


@pytest.mark.backends
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_saved_config_names_only_standard_keras_classes(saved, variant):
    with zipfile.ZipFile(saved["folder"] / f"{variant}.keras") as archive:
        config = json.loads(archive.read("config.json"))
    assert config["module"].startswith("keras") and config["registered_name"] == "Functional"
    architecture = "cnn" if variant.startswith("cnn") else "mlp"
    assert config["config"]["name"] == f"tricklab_{architecture}"
    layers = config["config"]["layers"]
    assert [layer["config"]["name"] for layer in layers if layer["class_name"] == "InputLayer"] == [
        "image"
    ]
    for layer in layers:
        assert layer["module"].startswith("keras."), layer
        assert layer["registered_name"] in (None, layer["class_name"]), layer
    assert "tricklab>" not in json.dumps(config)
    if "dropout" in variant:
        assert "Dropout" in {layer["class_name"] for layer in layers}
    if "spatial" in variant:  # spatial dropout: a standard Dropout sharing its draw over maps
        shapes = [
            layer["config"]["noise_shape"] for layer in layers if "Dropout" in layer["class_name"]
        ]
        assert shapes == [[None, 1, 1, None], [None, 1, 1, None], None]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("saved_as", ["servable", "trained"])
def test_the_service_runs_it_and_models_saved_as_trained_on_the_numpy_path(
    saved, variant, saved_as
):
    """The service (which registers HashDropout, for models saved before servable models)
    loads both, and its numpy fast path recognises both."""
    folder = saved["folder"] if saved_as == "servable" else saved["folder"] / "trained"
    model = keras.saving.load_model(folder / f"{variant}.keras", compile=False, safe_mode=True)
    forward = numpy_forward(model)
    assert forward is not None
    # The predictor's own test before it serves through numpy: float32 sums in another order.
    np.testing.assert_allclose(
        forward(saved["inputs"]), saved["expected"][variant], rtol=1e-4, atol=1e-6
    )

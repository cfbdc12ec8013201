"""The CNN through the user's door: a job submitted over HTTP, trained by the worker's own loop
(alone, though packable MLP jobs wait beside it), then served: predictions, the model's
metadata, the downloadable model; compared with MLP jobs, and studied."""

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient

from core import cost
from core.spec import JobSpec
from jobqueue.artifacts import ArtifactStore
from jobqueue.db import make_engine
from jobqueue.models import ADMIN
from jobqueue.store import JobStore
from service.app import create_app
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY, TINY_CNN, tiny_images
from tests.support.images import encode
from tests.support.inprocess import drain_queue, settings_in
from worker.loop import Worker

pytestmark = pytest.mark.slow

CNN_TRICKS = ["batch_norm", {"name": "dropout", "spatial": True}, "weight_decay"]
IMAGES, LABELS = tiny_images(4, seed=11)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    settings = settings_in(tmp_path_factory.mktemp("cnn"), data_dir)
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        spec = {**TINY_CNN, "epochs": 3, "tricks": CNN_TRICKS}
        cnns = [client.post("/v1/jobs", json={**spec, "seed": seed}) for seed in (0, 1)]
        assert [r.status_code for r in cnns] == [201, 201], cnns[0].text
        mlps = [client.post("/v1/jobs", json={**TINY, "seed": seed}).json() for seed in (0, 1)]
        store = JobStore(make_engine(settings.database_url))
        worker = Worker(store, ArtifactStore(settings.artifacts_dir), data_dir, pack_size=8)
        assert worker.run_one()  # the oldest job, and whatever may share its pack
        alone = [client.get(f"/v1/jobs/{r.json()['id']}").json()["status"] for r in cnns]
        drain_queue(settings, pack_size=8)
        ids = [r.json()["id"] for r in cnns]
        yield client, ids[0], [job["id"] for job in mlps], settings, alone


def test_a_cnn_job_trains_alone_and_records_its_epochs(trained):
    client, cnn, _, _, alone = trained
    # Two CNN jobs that differ only by their seed would share a pack if CNNs could be packed.
    assert alone == ["succeeded", "queued"]
    job = client.get(f"/v1/jobs/{cnn}").json()
    assert job["status"] == "succeeded", job
    assert job["spec"]["architecture"] == "cnn"
    assert (job["spec"]["conv_filters"], job["spec"]["hidden_units"]) == ([4, 8], None)
    assert job["result"]["parameters"] == cost.parameters(JobSpec.model_validate(job["spec"]))
    assert len(client.get(f"/v1/jobs/{cnn}/metrics").json()["epochs"]) == 3
    assert job["result"]["test_accuracy"] > 0.3  # the tiny set's bands: learnable in 3 epochs


def test_a_cnn_is_served_on_the_numpy_path_with_the_downloaded_models_numbers(trained, tmp_path):
    client, cnn, *_ = trained
    files = [("file", (f"{i}.png", encode(image), "image/png")) for i, image in enumerate(IMAGES)]
    uploaded = client.post(f"/v1/jobs/{cnn}/predict", files=files)
    assert uploaded.status_code == 200, uploaded.text
    predictions = uploaded.json()["predictions"]
    assert len(predictions) == len(IMAGES)
    metadata = client.get(f"/v1/jobs/{cnn}/model/metadata").json()
    assert (metadata["runtime"], metadata["spec"]["architecture"]) == ("numpy", "cnn")
    assert metadata["input"]["shape"] == [28, 28]

    tensor = {"name": "images", "shape": [4, 28, 28], "datatype": "UINT8"}
    v2 = client.post(
        f"/v2/models/{cnn}/infer", json={"inputs": [{**tensor, "data": IMAGES.ravel().tolist()}]}
    )
    assert v2.status_code == 200, v2.text
    outputs = {output["name"]: output for output in v2.json()["outputs"]}
    np.testing.assert_array_equal(
        np.array(outputs["probabilities"]["data"], np.float32).reshape(4, 10),
        np.array([p["probabilities"] for p in predictions], np.float32),
    )

    download = client.get(f"/v1/jobs/{cnn}/model")
    assert download.status_code == 200
    path = tmp_path / "model.keras"  # load_model reads a file
    path.write_bytes(download.content)
    model = keras.saving.load_model(path, compile=False)
    assert {type(layer).__name__ for layer in model.layers} >= {"Conv2D", "MaxPooling2D"}
    expected = model.predict_on_batch(IMAGES.astype("float32") / 255)
    served = np.array([p["probabilities"] for p in predictions], np.float32)
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-6)


def test_a_spec_mixing_architectures_is_refused_naming_the_field(trained):
    client, *_ = trained
    response = client.post("/v1/jobs", json={**TINY_CNN, "hidden_units": [64]})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["field"] == "hidden_units"
    assert "architecture 'cnn' is shaped by conv_filters, kernel_size, dense_units" in error["msg"]
    spatial = client.post("/v1/jobs", json={"tricks": [{"name": "dropout", "spatial": True}]})
    assert spatial.status_code == 422 and "use spatial false on 'mlp'" in spatial.text
    catalogue = {trick["name"]: trick for trick in client.get("/v1/tricks").json()["tricks"]}
    assert "On the CNN" in catalogue["batch_norm"]["description"]
    assert "spatial" in catalogue["dropout"]["parameters"]


def test_studies_and_compare_work_on_the_cnn_and_across_architectures(trained):
    client, _, mlps, settings, _ = trained
    study = client.post(
        "/v1/studies",
        json={"base": {**TINY_CNN, "epochs": 1}, "tricks": ["batch_norm"], "repeats": 2},
    )
    assert study.status_code == 201, study.text
    drain_queue(settings, pack_size=8)
    report = client.get(f"/v1/studies/{study.json()['id']}/report").json()
    assert [v["name"] for v in report["variants"]] == ["base", "base + batch_norm"]
    assert {v["spec"]["architecture"] for v in report["variants"]} == {"cnn"}
    (effect,) = report["effects"]
    assert (effect["trick"], effect["seeds"]) == ("batch_norm", [0, 1])
    assert effect["pairs"] == [{"without": "base", "with": "base + batch_norm"}]

    # Compared with the MLP's base jobs: two variants named base, told apart by their fields.
    base = report["variants"][0]["jobs"]
    compared = client.get("/v1/compare", params={"jobs": ",".join([*base, *mlps])}).json()
    assert sorted(v["name"] for v in compared["variants"]) == [
        'base (architecture="cnn", epochs=1, conv_filters=[4, 8], kernel_size=3, dense_units=[16])',
        'base (architecture="mlp", epochs=2, hidden_units=[32, 16])',
    ]
    assert [len(v["runs"]) for v in compared["variants"]] == [2, 2]  # two seeds each


def test_a_cnn_that_trains_past_its_time_fails_with_reason_timeout(trained):
    settings = trained[3]
    store = JobStore(make_engine(settings.database_url))
    job, _ = store.enqueue(JobSpec.model_validate({**TINY_CNN, "epochs": 1000}), ADMIN)
    drain_queue(settings, max_job_seconds=1.0)
    done = store.get(job.id)
    assert (done.status, done.failure_reason) == ("failed", "timeout")
    assert "(TRICKLAB_MAX_JOB_SECONDS)" in done.error_message
    assert done.epochs_done < 1000

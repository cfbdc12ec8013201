"""The Open Inference Protocol against a real server, through the stock Triton HTTP client
(tritonclient.http, unmodified), which speaks the binary tensor data extension by default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.auth import ADMIN_HEADERS
from tests.support.cluster import Cluster, wait_for
from tests.support.data import TINY, tiny_images

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

pytestmark = pytest.mark.e2e
IMAGES, LABELS = tiny_images(5, seed=23)


def auth() -> dict[str, str]:
    """The admin's headers, a new dict each call: tritonclient's infer writes
    Inference-Header-Content-Length into the dict it is given, which a later call would send."""
    return dict(ADMIN_HEADERS)


class Served:
    """A live API with one succeeded job (its model) and one that stays queued."""

    def __init__(self, cluster: Cluster, model: str, queued: str) -> None:
        self.cluster, self.model, self.queued = cluster, model, queued
        self.client = httpclient.InferenceServerClient(cluster.url.removeprefix("http://"))

    def v1_probabilities(self, images: np.ndarray) -> np.ndarray:
        answer = self.cluster.client.post(
            f"/v1/jobs/{self.model}/predict", json={"instances": images.tolist()}
        )
        assert answer.status_code == 200, answer.text
        rows = [p["probabilities"] for p in answer.json()["predictions"]]
        return np.array(rows, dtype=np.float32)  # each the shortest decimal of a float32


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("v2")
    with Cluster(root, data_dir, f"sqlite:///{root / 'tricklab.db'}") as cluster:
        cluster.start_api()
        model = cluster.client.post("/v1/jobs", json=TINY).json()["id"]
        cluster.start_worker("worker")
        wait_for(
            lambda: cluster.client.get(f"/v1/jobs/{model}").json()["status"] == "succeeded",
            120,
            "the model's job to succeed",
        )
        cluster.kill("worker")  # so that the next job stays queued
        queued = cluster.client.post("/v1/jobs", json=TINY).json()["id"]
        served = Served(cluster, model, queued)
        yield served
        served.client.close()


def images_input(images: np.ndarray, binary: bool = True) -> object:
    datatype = "UINT8" if images.dtype == np.uint8 else "FP32"
    tensor = httpclient.InferInput("images", list(images.shape), datatype)
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


def test_health_and_server_metadata(served):
    client = served.client
    assert client.is_server_live() and client.is_server_ready()  # no token needed
    metadata = client.get_server_metadata(headers=auth())
    assert metadata["name"] == "tricklab" and "binary_tensor_data" in metadata["extensions"]
    with pytest.raises(InferenceServerException) as refused:
        client.get_server_metadata()
    assert refused.value.status() == "401" and "Authorization: Bearer" in refused.value.message()


def test_model_metadata_and_readiness(served):
    client = served.client
    metadata = client.get_model_metadata(served.model, headers=auth())
    assert metadata["name"] == served.model and metadata["versions"] == ["1"]
    ((images,),) = [metadata["inputs"]]
    assert (images["name"], images["datatype"], images["shape"]) == (
        "images",
        "UINT8",
        [-1, 28, 28],
    )
    assert images["parameters"]["datatypes"] == "UINT8,FP32"
    assert images["parameters"]["range"] == "0-255"
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
    assert outputs == {"probabilities": ("FP32", [-1, 10]), "labels": ("INT64", [-1])}
    assert client.get_model_metadata(served.model, "1", headers=auth()) == metadata

    assert client.is_model_ready(served.model, headers=auth())
    assert client.is_model_ready(served.model, "1", headers=auth())
    assert not client.is_model_ready(served.model, "2", headers=auth())
    assert not client.is_model_ready(served.queued, headers=auth())
    assert not client.is_model_ready("0" * 32, headers=auth())
    assert not client.is_model_ready(served.model)  # no token
    with pytest.raises(InferenceServerException) as queued:
        client.get_model_metadata(served.queued, headers=auth())
    assert queued.value.status() == "409" and "is queued" in queued.value.message()


def test_binary_inference_gives_v1s_probabilities(served):
    """The client's defaults: binary input, every output binary."""
    result = served.client.infer(
        served.model, [images_input(IMAGES)], headers=auth(), request_id="r-1"
    )
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (5, 10)
    np.testing.assert_array_equal(probabilities, served.v1_probabilities(IMAGES))
    labels = result.as_numpy("labels")
    assert labels.dtype == np.int64 and labels.tolist() == LABELS.tolist()
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == served.model
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])


def test_json_inference_fp32_and_uint8_agree(served):
    requested = [
        httpclient.InferRequestedOutput("probabilities", binary_data=False),
        httpclient.InferRequestedOutput("labels", binary_data=False),
    ]
    expected = served.v1_probabilities(IMAGES)
    for images in (IMAGES, IMAGES.astype(np.float32)):
        result = served.client.infer(
            served.model,
            [images_input(images, binary=False)],
            outputs=requested,
            headers=auth(),
        )
        assert all("data" in o for o in result.get_response()["outputs"])
        np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)
        assert result.as_numpy("labels").tolist() == LABELS.tolist()


def test_mixed_encodings_some_outputs_and_a_version(served):
    # Binary input, only the labels, as JSON.
    result = served.client.infer(
        served.model,
        [images_input(IMAGES[:2])],
        outputs=[httpclient.InferRequestedOutput("labels", binary_data=False)],
        headers=auth(),
    )
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("labels").tolist() == LABELS[:2].tolist()
    # JSON input, only the probabilities, binary; through the versioned path.
    result = served.client.infer(
        served.model,
        [images_input(IMAGES[2:].astype(np.float32), binary=False)],
        model_version="1",
        outputs=[httpclient.InferRequestedOutput("probabilities")],
        headers=auth(),
    )
    assert result.as_numpy("labels") is None
    np.testing.assert_array_equal(
        result.as_numpy("probabilities"), served.v1_probabilities(IMAGES[2:])
    )


def test_errors_come_in_the_protocols_shape(served):
    client = served.client

    def refusal(
        model: str, inputs: list[object], headers: dict[str, str] | None
    ) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as refused:
            client.infer(model, inputs, headers=headers)
        return refused.value.status(), refused.value.message()

    flat = httpclient.InferInput("images", [2, 784], "UINT8")
    flat.set_data_from_numpy(IMAGES[:2].reshape(2, 784))
    status, message = refusal(served.model, [flat], auth())
    assert status == "400" and "shape [2, 784]" in message and "[N, 28, 28]" in message
    wrong = httpclient.InferInput("images", [1, 28, 28], "FP64")
    wrong.set_data_from_numpy(IMAGES[:1].astype(np.float64))
    status, message = refusal(served.model, [wrong], auth())
    assert status == "400" and "datatype 'FP64'" in message
    status, message = refusal(served.model, [images_input(IMAGES)], None)
    assert status == "401" and "Authorization: Bearer" in message
    status, message = refusal(served.queued, [images_input(IMAGES)], auth())
    assert status == "409" and "is queued" in message

    bob = served.cluster.client.post("/v1/users", json={"name": "bob"}).json()
    bobs = {"Authorization": f"Bearer {bob['token']}"}
    status, message = refusal(served.model, [images_input(IMAGES)], bobs)
    assert status == "404" and served.model in message  # as if it did not exist
    with pytest.raises(InferenceServerException) as unsupported:
        client.get_model_config(served.model, headers=auth())
    assert unsupported.value.status() == "404" and "does not serve" in unsupported.value.message()

"""Predictions from a job trained once for this module, over every input path."""

import base64
import hashlib
import json

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from threadpoolctl import threadpool_info

from core.images import PixelBudget, decode_image, scale
from jobqueue.db import make_engine
from jobqueue.reads import Reads
from jobqueue.retry import FailureReason
from jobqueue.states import JobStatus
from jobqueue.store import JobStore
from service import bodies
from service.app import create_app
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY, tiny_images
from tests.support.dying_parser import die
from tests.support.images import encode, png_declaring
from tests.support.inprocess import drain_queue, settings_in

BUDGET = PixelBudget(per_image=4_000_000, total=16_000_000)

IMAGES, LABELS = tiny_images(4, seed=11)
LIMIT = 100_000  # bytes of request body


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("predict")
    settings = settings_in(
        root,
        data_dir,
        max_predict_files=5,
        max_predict_instances=5,
        max_request_bytes=LIMIT,
        max_request_pixels=8_000_000,
    )
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        job = client.post("/v1/jobs", json={**TINY, "epochs": 3}).json()
        drain_queue(settings)
        client.post("/v1/jobs", json=TINY)  # stays queued: no worker runs after this
        yield client, job["id"], settings


def test_the_service_runs_its_tiny_matmuls_on_one_blas_thread(trained):
    # More threads spin on a core that other requests and processes need (see service.app).
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas)


def files(*contents: bytes) -> list:
    return [("file", (f"image{n}.png", data, "image/png")) for n, data in enumerate(contents)]


def test_json_instances_give_labels_class_names_and_probabilities_in_order(trained):
    client, job_id, _ = trained
    response = client.post(f"/v1/jobs/{job_id}/predict", json={"instances": IMAGES.tolist()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == LABELS.tolist()
    names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
    assert [p["class_name"] for p in predictions] == [names[label] for label in LABELS]
    for p in predictions:
        assert len(p["probabilities"]) == 10 and sum(p["probabilities"]) == pytest.approx(
            1, abs=1e-5
        )


def test_png_uploads_match_json_instances_and_the_downloaded_model(trained):
    client, job_id, _ = trained
    as_json = client.post(f"/v1/jobs/{job_id}/predict", json={"instances": IMAGES.tolist()}).json()
    as_png = client.post(
        f"/v1/jobs/{job_id}/predict", files=files(*(encode(i) for i in IMAGES))
    ).json()
    assert as_png == as_json

    model_bytes = client.get(f"/v1/jobs/{job_id}/model").content
    path = trained[2].artifacts_dir / "downloaded.keras"
    path.write_bytes(model_bytes)
    direct = keras.saving.load_model(path).predict(scale(IMAGES), verbose=0)
    served = np.array([p["probabilities"] for p in as_json["predictions"]])
    np.testing.assert_allclose(served, direct, rtol=1e-5, atol=1e-7)


def test_any_size_and_colour_mode_is_converted_like_the_training_data(trained):
    client, job_id, _ = trained
    photo = (
        Image.fromarray(255 - IMAGES[0]).resize((280, 280), Image.Resampling.NEAREST).convert("RGB")
    )
    jpeg = encode(photo, "JPEG", quality=95)
    response = client.post(
        f"/v1/jobs/{job_id}/predict", files=[("file", ("photo.jpg", jpeg, "image/jpeg"))]
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == LABELS[0]


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("image/png", encode(IMAGES[1])),
        # A dark-on-light, non-square colour photo: inverted, trimmed and fitted on every path.
        (
            "image/jpeg",
            encode(Image.fromarray(255 - IMAGES[2]).resize((140, 112)).convert("RGB"), "JPEG"),
        ),
        ("image/webp", encode(Image.fromarray(IMAGES[3]).convert("RGBA"), "WEBP", lossless=True)),
        ("image/gif", encode(IMAGES[0], "GIF")),
    ],
)
def test_every_way_of_sending_an_image_gives_the_same_probabilities(trained, kind, data):
    client, job_id, _ = trained
    url = f"/v1/jobs/{job_id}/predict"
    answers = [
        client.post(url, files=[("file", ("picture", data, kind))]),
        client.post(url, content=data, headers={"content-type": kind}),
        client.post(url, json={"instances": [b64(data)]}),
        # The pixels the one preprocessing function makes of the file, sent as an array.
        client.post(url, json={"instances": [decode_image(data, BUDGET).tolist()]}),
    ]
    assert [answer.status_code for answer in answers] == [200] * 4, answers[-1].text
    first, *others = [answer.json()["predictions"] for answer in answers]
    assert all(other == first for other in others)


def test_json_mixes_pixel_arrays_and_encoded_images_in_order(trained):
    client, job_id, _ = trained
    instances = [IMAGES[0].tolist(), b64(encode(IMAGES[1])), IMAGES[2].tolist()]
    response = client.post(f"/v1/jobs/{job_id}/predict", json={"instances": instances})
    assert [p["label"] for p in response.json()["predictions"]] == LABELS[:3].tolist()


def test_model_metadata_describes_input_classes_training_and_result(trained):
    client, job_id, _ = trained
    client.post(f"/v1/jobs/{job_id}/predict", json={"instances": IMAGES[:1].tolist()})
    response = client.get(f"/v1/jobs/{job_id}/model/metadata")
    assert response.status_code == 200, response.text
    metadata, job = response.json(), client.get(f"/v1/jobs/{job_id}").json()
    model = client.get(job["links"]["model"]).content
    assert job["links"]["model_metadata"] == f"/v1/jobs/{job_id}/model/metadata"
    assert (metadata["input"]["shape"], metadata["input"]["range"]) == ([28, 28], [0, 255])
    assert metadata["class_names"][:2] == ["T-shirt/top", "Trouser"]
    assert len(metadata["class_names"]) == 10
    assert (metadata["spec"], metadata["result"]) == (job["spec"], job["result"])
    assert metadata["model_sha256"] == hashlib.sha256(model).hexdigest()
    assert metadata["model_bytes"] == len(model)
    assert metadata["trained_on"] == job["device"]
    assert (metadata["loaded"], metadata["runtime"]) == (True, "numpy")

    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["jobs"][0]["id"]
    assert client.get(f"/v1/jobs/{queued}/model/metadata").status_code == 409
    assert client.get("/v1/jobs/00000000000000000000000000000000/model/metadata").status_code == 404


def detail(response) -> str:
    return json.dumps(response.json()["detail"], ensure_ascii=False)


def raw(data: bytes) -> dict:
    return {"content": data, "headers": {"content-type": "image/png"}}


@pytest.mark.parametrize(
    ("make_request", "status", "message"),
    [
        (lambda: {"files": files(b"")}, 400, "file 1 ('image0.png'): the file is empty"),
        (
            lambda: {"files": files(encode(IMAGES[0]), b"not an image")},
            400,
            "file 2 ('image1.png'): not an image",
        ),
        (lambda: {"files": files(encode(IMAGES[0])[:60])}, 400, "corrupt or truncated"),
        (lambda: {"files": files(png_declaring(100_000, 100_000))}, 400, "too large"),
        (
            lambda: {"files": files(*[encode(IMAGES[0])] * 6)},
            400,
            "6 parts in the form; at most 5 files",
        ),
        (
            lambda: {"files": [("picture", ("a.png", encode(IMAGES[0]), "image/png"))]},
            400,
            "no 'file' part",
        ),
        (
            lambda: {"data": {"file": "text"}, "files": [("other", ("x", b"x"))]},
            400,
            "must be a file upload",
        ),
        (
            lambda: {"content": b"hello", "headers": {"content-type": "text/plain"}},
            415,
            "'text/plain'",
        ),
        (
            lambda: {"content": b"{oops", "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        (lambda: {"json": {"instances": []}}, 422, "instances: List should have at least 1 item"),
        (
            lambda: {"json": {"instances": [[[0] * 28] * 27]}},
            422,
            "instances[0]: List should have at least 28",
        ),
        (
            lambda: {"json": {"instances": [[[0] * 28] * 27 + [[0] * 29]]}},
            422,
            "instances[0][27]: List should have at most 28",
        ),
        (
            lambda: {"json": {"instances": [[["a"] * 28] * 28]}},
            422,
            "instances[0][0][0]: Input should be a valid number",
        ),
        (lambda: {"json": {"instances": [[[256] * 28] * 28]}}, 422, "less than or equal to 255"),
        (lambda: {"json": {"images": []}}, 422, "instances: Field required"),
        (lambda: {"json": {"instances": [[[0] * 28] * 28] * 6}}, 400, "6 instances; at most 5"),
        (
            lambda: {
                "content": b'{"instances": [[[NaN]]]}',
                "headers": {"content-type": "application/json"},
            },
            422,
            "finite number",
        ),
        (
            lambda: {"content": b"[" * 50_000, "headers": {"content-type": "application/json"}},
            400,
            "nested too deeply",
        ),
        (
            lambda: {
                "content": b'{"instances": [[[' + b"9" * 5000 + b"]]]}",
                "headers": {"content-type": "application/json"},
            },
            400,
            "a number of more than 4300 digits; pixels are numbers within 0–255",
        ),
        (lambda: {"json": {"instances": ["abc"]}}, 422, "instances[0]: an instance is a 28×28"),
        (
            lambda: {"json": {"instances": [{"b64": "@@@"}]}},
            422,
            "instances[0].b64: not valid base64",
        ),
        (lambda: {"json": {"instances": [{"png": "AA=="}]}}, 422, "instances[0].png: Extra"),
        (lambda: {"json": {"instances": [{"b64": 7}]}}, 422, "instances[0].b64: must be a string"),
        (
            lambda: {"json": {"instances": [b64(encode(IMAGES[0])[:60])]}},
            400,
            "instances[0].b64: corrupt",
        ),
        (lambda: {"json": {"instances": [b64(b"text")]}}, 400, "instances[0].b64: not an image"),
        (lambda: raw(b""), 400, "the body: the file is empty"),
        (lambda: raw(b"not an image"), 400, "the body: not an image"),
        (lambda: raw(encode(IMAGES[0])[:60]), 400, "the body: corrupt or truncated"),
        (lambda: raw(png_declaring(100_000, 100_000)), 400, "far over the limit of 4,000,000"),
        (lambda: raw(png_declaring(7_000, 7_000)), 400, "7000×7000 pixels; the limit"),
        (lambda: raw(png_declaring(2_001, 2_000)), 400, "(TRICKLAB_MAX_IMAGE_PIXELS)"),
        (
            lambda: {"files": files(*[encode(np.zeros((2_000, 1_000), np.uint8))] * 5)},
            400,
            "file 5 ('image4.png'): the pictures of this request hold more than 8,000,000",
        ),
        (lambda: raw(b"x" * (LIMIT + 1)), 413, f"the request body is {LIMIT + 1:,} bytes"),
        (lambda: {"files": files(b"x" * LIMIT)}, 413, "the limit is 100,000 bytes"),
        (lambda: {**raw(b""), "content": iter([b"x" * 60_000] * 2)}, 413, "over 100,000 bytes"),
    ],
)
def test_bad_input_gets_a_clear_4xx(trained, make_request, status, message):
    client, job_id, _ = trained
    response = client.post(f"/v1/jobs/{job_id}/predict", **make_request())
    assert response.status_code == status, response.text
    assert message in detail(response)


def test_predicting_with_a_job_that_has_not_succeeded_is_a_conflict(trained):
    client, _, settings = trained
    store = JobStore(make_engine(settings.database_url))
    for _ in range(3):
        client.post("/v1/jobs", json=TINY)
    running, _ = store.claim("w", "CPU")  # the oldest queued job
    failed, lease = store.claim("w", "CPU")
    store.fail(lease, FailureReason.INVALID_DATA, ValueError("no such split"))
    queued, cancelled = (j.id for j in Reads(store.engine).list_jobs(JobStatus.QUEUED, 2)[0])
    client.post(f"/v1/jobs/{cancelled}/cancel")
    for job_id, status in (
        (queued, "queued"),
        (running.id, "running"),
        (failed.id, "failed"),
        (cancelled, "cancelled"),
    ):
        for request in ({"json": {"instances": IMAGES[:1].tolist()}}, raw(encode(IMAGES[0]))):
            response = client.post(f"/v1/jobs/{job_id}/predict", **request)
            assert response.status_code == 409, response.text
            assert f"is {status}" in response.json()["detail"]
    unknown_id = "0" * 32
    unknown = client.post(f"/v1/jobs/{unknown_id}/predict", json={"instances": IMAGES[:1].tolist()})
    assert unknown.status_code == 404
    assert f"no job with id '{unknown_id}'" in unknown.json()["detail"]


def test_a_tampered_model_file_is_never_loaded(tmp_path, data_dir):
    settings = settings_in(tmp_path, data_dir)
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        job_id = client.post("/v1/jobs", json=TINY).json()["id"]
        drain_queue(settings)
        (model_file,) = (settings.artifacts_dir / "jobs" / job_id).glob("*/model.keras")
        model_file.write_bytes(model_file.read_bytes() + b"tampered")
        response = client.post(
            f"/v1/jobs/{job_id}/predict", json={"instances": IMAGES[:1].tolist()}
        )
        assert response.status_code == 503
        assert "does not match the checksum" in response.json()["detail"]


def test_garbage_of_every_kind_gets_a_4xx_never_a_500(trained):
    client, job_id, _ = trained
    url = f"/v1/jobs/{job_id}/predict"
    rng = np.random.default_rng(5)
    png = encode(IMAGES[0])
    for trial in range(60):
        size = int(rng.integers(0, 300))
        junk = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        flipped = bytearray(png)  # a real PNG with a few bytes changed
        for position in rng.integers(0, len(png), 3):
            flipped[position] ^= 0xFF
        requests = [
            raw(junk),
            raw(bytes(flipped)),
            {"files": files(bytes(flipped))},
            {"content": junk, "headers": {"content-type": "multipart/form-data; boundary=x"}},
            {"content": junk, "headers": {"content-type": "multipart/form-data"}},
            {"content": junk, "headers": {"content-type": "application/json"}},
            {"json": {"instances": [b64(bytes(flipped))]}},
            {"json": {"instances": [[[float(v) for v in junk[:28]]] * 28]}},
            {"json": {"instances": [{"b64": junk.decode("latin-1")}]}},
            {"json": [trial]},
        ]
        for request in requests:
            response = client.post(url, **request)
            assert response.status_code < 500, (trial, request, response.text)
            assert response.status_code == 200 or response.json()["detail"]


def long_floats(images: np.ndarray) -> list:
    """Pixels as JSON numbers of many digits: a few images make a body of tens of KiB."""
    return (images + 0.123456789012345).tolist()


def test_json_over_the_inline_size_is_read_in_a_worker_process_alike(trained, monkeypatch):
    client, job_id, _ = trained
    pixels = long_floats(np.concatenate([IMAGES, IMAGES[:1]]))  # 5 images: the fixture's most
    wrong = json.loads(json.dumps(pixels))
    wrong[4][27][27] = 256
    tensor = {"name": "images", "datatype": "FP32", "shape": [5, 28, 28], "data": pixels}
    requests = [
        (f"/v1/jobs/{job_id}/predict", {"instances": pixels}, 200),
        (f"/v1/jobs/{job_id}/predict", {"instances": wrong}, 422),
        (f"/v2/models/{job_id}/infer", {"inputs": [tensor]}, 200),
        (f"/v2/models/{job_id}/infer", {"inputs": [{**tensor, "shape": [5, 28, "x"]}]}, 400),
    ]
    for path, document, status in requests:
        body = json.dumps(document).encode()
        assert bodies.OFFLOAD_BYTES < len(body) < LIMIT
        post = {"content": body, "headers": {"content-type": "application/json"}}
        offloaded = client.post(path, **post)
        with monkeypatch.context() as inline:
            inline.setattr(bodies, "OFFLOAD_BYTES", LIMIT)
            at_once = client.post(path, **post)
        assert offloaded.status_code == status, offloaded.text
        assert (offloaded.status_code, offloaded.json()) == (at_once.status_code, at_once.json())


def test_a_body_whose_parsing_process_dies_is_a_503_to_retry_in_each_doors_shape(
    trained, monkeypatch
):
    client, job_id, _ = trained
    pixels = long_floats(np.concatenate([IMAGES, IMAGES[:1]]))  # 5: over OFFLOAD_BYTES
    tensor = {"name": "images", "datatype": "FP32", "shape": [5, 28, 28], "data": pixels}
    doors = [
        (f"/v1/jobs/{job_id}/predict", {"instances": pixels}, "detail"),
        (f"/v2/models/{job_id}/infer", {"inputs": [tensor]}, "error"),
    ]
    json_type = {"content-type": "application/json"}
    for path, document, key in doors:
        body = json.dumps(document).encode()
        assert bodies.OFFLOAD_BYTES < len(body) < LIMIT
        with monkeypatch.context() as dying:
            dying.setattr(bodies, "predict_instances", die)
            dying.setattr(bodies, "infer_request", die)
            lost = client.post(path, content=body, headers=json_type)
        assert (lost.status_code, lost.headers["retry-after"]) == (503, "1"), lost.text
        assert lost.json() == {key: "the process reading the body was lost; send it again"}
        # Sent again, it is read by a fresh worker process.
        assert client.post(path, content=body, headers=json_type).status_code == 200

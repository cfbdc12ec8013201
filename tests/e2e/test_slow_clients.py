"""Slow and silent clients against a real `python -m service` (uvicorn): uploads that announce
a large body and send nothing must not turn other requests away, and a client too slow with
its headers or its body loses its connection."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.data import TINY, tiny_images
from tests.support.images import encode
from tests.support.raw_http import closed, connect, head, read_head, read_response

pytestmark = pytest.mark.e2e
LARGEST = 32 * 2**20  # TRICKLAB_MAX_REQUEST_BYTES' default: allowed, so only the budget guards


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple]:
    """An API with a model ready to predict, the default limits, and a body timeout longer
    than any test here: what holds the silent uploads' slots is theirs to hold."""
    root = tmp_path_factory.mktemp("slow-clients")
    cluster = Cluster(
        root, data_dir, f"sqlite:///{root / 'tricklab.db'}", BODY_TIMEOUT_SECONDS="600"
    )
    try:
        cluster.start_api()
        job_id = cluster.client.post("/v1/jobs", json=TINY).json()["id"]
        assert cluster.start_worker("worker", "-m", "worker", "--once").wait(120) == 0
        path = f"/v1/jobs/{job_id}/predict"
        image = encode(tiny_images(1, seed=3)[0][0])
        warm = cluster.client.post(path, content=image, headers={"content-type": "image/png"})
        assert warm.status_code == 200, warm.text  # the model is loaded: uploads wait for bodies
        yield cluster, path
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("impatient")
    cluster = Cluster(
        root,
        data_dir,
        f"sqlite:///{root / 'tricklab.db'}",
        HEADER_TIMEOUT_SECONDS="1",
        BODY_TIMEOUT_SECONDS="1",
    )
    try:
        cluster.start_api()
        yield cluster
    finally:
        cluster.close()


def test_silent_uploads_do_not_turn_other_requests_away(trained):
    cluster, path = trained
    # Like curl with a large file: headers announcing 32 MiB, `Expect: 100-continue`, and the
    # body only once the server asks for it, which it does when the app starts reading. So
    # "100 Continue" on every socket shows all 60 are in the app, waiting; then nothing comes.
    upload = head("POST", path, LARGEST, "image/png", "Expect: 100-continue")
    silent: list[socket.socket] = []
    try:
        for _ in range(60):
            silent.append(connect(cluster.url))
            silent[-1].sendall(upload)
        for sock in silent:
            answer = read_head(sock)
            assert answer.startswith(b"HTTP/1.1 100 Continue\r\n"), answer

        submitted = cluster.client.post("/v1/jobs", json={**TINY, "epochs": 1})
        assert submitted.status_code == 201, submitted.text
        assert cluster.client.get("/healthz").status_code == 200

        for sock in silent:  # still waiting for their bodies: open, and not answered
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in silent:
            sock.close()


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(impatient):
    for sent in (b"", b'{"epo'):  # nothing of the body, or a part of it
        with connect(impatient.url) as sock:
            sock.sendall(head("POST", "/v1/jobs", 100, "application/json") + sent)
            status, headers, body = read_response(sock)
            assert status == 408, body
            assert headers["connection"] == "close"
            assert "TRICKLAB_BODY_TIMEOUT_SECONDS" in json.loads(body)["detail"]
            assert closed(sock)
    assert impatient.client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"],
    ids=["nothing", "half a header line"],
)
def test_a_connection_that_does_not_complete_its_headers_in_time_is_closed(impatient, sent):
    with connect(impatient.url) as sock:
        sock.sendall(sent)
        assert closed(sock)
    assert impatient.client.get("/healthz").status_code == 200


def test_a_large_body_for_a_route_that_takes_no_images_is_refused_at_once(impatient):
    with connect(impatient.url) as sock:
        sock.sendall(head("POST", "/v1/jobs", LARGEST, "application/json"))  # and no body
        status, _, body = read_response(sock)
    assert status == 413, body
    detail = json.loads(body)["detail"]
    assert f"the request body is {LARGEST:,} bytes" in detail
    assert "TRICKLAB_MAX_JSON_BYTES" in detail

"""Prediction bodies built to hurt, against `python -m service` (uvicorn) with a model trained
by `python -m worker --once`: JSON that takes seconds to parse must not stall anyone else, and
bytes that no decoder expects are a 4xx, never a 500."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.data import TINY
from tests.support.raw_http import connect, head, read_response

pytestmark = pytest.mark.e2e
# Millions of empty arrays: a few MiB that take json and pydantic seconds to turn into objects.
EMPTY_ARRAYS = 3_000_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("hostile-bodies")
    cluster = Cluster(root, data_dir, f"sqlite:///{root / 'tricklab.db'}")
    try:
        cluster.start_api()
        job_id = cluster.client.post("/v1/jobs", json=TINY).json()["id"]
        assert cluster.start_worker("worker", "-m", "worker", "--once").wait(120) == 0
        assert cluster.client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        yield cluster, job_id
    finally:
        cluster.close()


def slow_json(door: str, job_id: str) -> tuple[str, bytes]:
    arrays = b",".join([b"[]"] * EMPTY_ARRAYS)
    if door == "v1":
        return f"/v1/jobs/{job_id}/predict", b'{"instances": [' + arrays + b"]}"
    tensor = b'{"name": "images", "datatype": "FP32", "shape": [1, 28, 28], "data": [%s]}'
    return f"/v2/models/{job_id}/infer", b'{"inputs": [' + tensor % arrays + b"]}"


@pytest.mark.parametrize("door", ["v1", "v2"])
def test_health_probes_answer_while_a_huge_json_body_is_parsed(served, door):
    cluster, job_id = served
    path, body = slow_json(door, job_id)
    times: dict[str, float] = {}
    answers: list[tuple[int, dict[str, str], bytes]] = []
    sock = connect(cluster.url)

    def send_and_wait() -> None:
        sock.sendall(head("POST", path, len(body), "application/json") + body)
        times["sent"] = time.monotonic()
        answers.append(read_response(sock))
        times["done"] = time.monotonic()

    sender = threading.Thread(target=send_and_wait)
    sender.start()
    probes: list[float] = []  # when each health probe was answered
    with httpx.Client(base_url=cluster.url, timeout=60) as probe:
        while "sent" not in times:
            time.sleep(0.001)
        while "done" not in times:
            assert probe.get("/healthz").status_code == 200
            probes.append(time.monotonic())
    sender.join()
    sock.close()
    ((status, _, content),) = answers
    assert status == 400, content
    assert str(EMPTY_ARRAYS) in content.decode() or b"elements" in content, content
    # Parsed on the event loop, the body held every probe for the whole parse: one gap as long
    # as the request itself. Parsed elsewhere, probes go on answering throughout.
    took = times["done"] - times["sent"]
    moments = [times["sent"], *probes, times["done"]]
    longest = max(later - earlier for earlier, later in itertools.pairwise(moments))
    assert len(probes) >= 5, (len(probes), took)
    assert longest < took / 3, (longest, took, len(probes))


def test_a_multipart_boundary_that_is_not_utf8_is_a_400(served):
    cluster, job_id = served
    # Headers are latin-1 on the wire: 0xff alone is no UTF-8 character.
    content_type = "multipart/form-data; boundary=XX"
    body = b"--\xff\xfe\r\nContent-Disposition: form-data; name=file; filename=x.png\r\n\r\nx\r\n--\xff\xfe--\r\n"
    request = head("POST", f"/v1/jobs/{job_id}/predict", len(body), content_type)
    with connect(cluster.url) as sock:
        sock.sendall(request.replace(b"boundary=XX", b"boundary=\xff\xfe") + body)
        status, _, content = read_response(sock)
    assert status == 400, content
    assert "not an image" in json.loads(content)["detail"], content
    with connect(cluster.url) as sock:
        sock.sendall(request.replace(b"boundary=XX", b"boundary=\xff\xfd") + body)
        status, _, content = read_response(sock)
    assert status == 400, content
    assert "closing boundary --\xff\xfd--" in json.loads(content)["detail"], content

"""Prediction serving over real HTTP: `python -m service` (uvicorn) with a model trained by a
real `python -m worker --once`, hit by concurrent clients."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from tests.support.auth import ADMIN_HEADERS
from tests.support.cluster import Cluster, wait_for
from tests.support.data import TINY, tiny_images
from tests.support.images import encode

pytestmark = pytest.mark.e2e
IMAGES, LABELS = tiny_images(16, seed=31)
LIMIT, IN_FLIGHT = 1_000_000, 4_000_000  # bytes: one body, all bodies being received


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("serving")
    cluster = Cluster(
        root,
        data_dir,
        f"sqlite:///{root / 'tricklab.db'}",
        MAX_REQUEST_BYTES=str(LIMIT),
        MAX_IN_FLIGHT_BYTES=str(IN_FLIGHT),
        PREDICT_BATCH_WINDOW_MS="20",  # wide, so that concurrent requests surely meet
        MAX_REQUESTS_PER_USER="512",  # one client's flood: the bytes' budget turns it away
    )
    try:
        cluster.start_api()
        job_id = cluster.client.post("/v1/jobs", json=TINY).json()["id"]
        assert cluster.start_worker("worker", "-m", "worker", "--once").wait(120) == 0
        assert cluster.client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        yield cluster, f"/v1/jobs/{job_id}/predict"
    finally:
        cluster.close()


async def post_all(url: str, requests: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests))
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=limits, headers=ADMIN_HEADERS
    ) as client:
        return await asyncio.gather(*(client.post(**request) for request in requests))


def png_request(path: str, data: bytes) -> dict:
    return {"url": path, "content": data, "headers": {"content-type": "image/png"}}


def test_concurrent_single_image_requests_share_forward_passes(served):
    cluster, path = served
    alone = [
        cluster.client.post(**png_request(path, encode(image))).json()["predictions"][0]
        for image in IMAGES
    ]
    responses = asyncio.run(post_all(cluster.url, [png_request(path, encode(i)) for i in IMAGES]))
    assert [r.status_code for r in responses] == [200] * len(IMAGES)
    batch_sizes = [int(r.headers["tricklab-batch-size"]) for r in responses]
    assert max(batch_sizes) > 1, batch_sizes
    for response, expected, label in zip(responses, alone, LABELS, strict=True):
        (prediction,) = response.json()["predictions"]
        assert prediction["label"] == expected["label"] == label
        np.testing.assert_allclose(
            prediction["probabilities"], expected["probabilities"], atol=1e-6
        )
    metadata = cluster.client.get(path.replace("predict", "model/metadata")).json()
    assert (metadata["loaded"], metadata["runtime"]) == (True, "numpy")


def test_bodies_over_the_limit_get_413_without_being_read(served):
    cluster, path = served
    declared = cluster.client.post(**png_request(path, b"\0" * (LIMIT + 1)))
    assert declared.status_code == 413
    assert f"the request body is {LIMIT + 1:,} bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        for _ in range(20):
            yield b"\0" * 100_000

    chunked = cluster.client.post(path, content=chunks(), headers={"content-type": "image/png"})
    assert chunked.status_code == 413
    assert f"over {LIMIT:,} bytes" in chunked.json()["detail"]
    assert cluster.client.get("/readyz").status_code == 200


def peak_memory_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


def test_a_flood_of_uploads_is_turned_away_not_buffered(served):
    cluster, path = served
    # A noise picture compresses to nothing: about 0.9 MB of PNG, just under the limit.
    noise = np.random.default_rng(0).integers(0, 256, (950, 950), dtype=np.uint8)
    upload = encode(noise)
    assert LIMIT * 0.8 < len(upload) < LIMIT
    pid = cluster.processes["api"].pid
    before = peak_memory_kib(pid)
    flood = 150  # about 135 MB of bodies at once, against 4 MB allowed in flight
    responses = asyncio.run(post_all(cluster.url, [png_request(path, upload)] * flood))

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 503} and statuses[200] >= 1, statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1"
    assert "TRICKLAB_MAX_IN_FLIGHT_BYTES" in busy.json()["detail"]
    growth_mib = (peak_memory_kib(pid) - before) / 1024
    assert growth_mib < 100, f"the API's peak memory grew by {growth_mib:.0f} MiB"
    wait_for(lambda: cluster.client.get("/readyz").status_code == 200, 10, "the API to answer")

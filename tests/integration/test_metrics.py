"""The API's Prometheus metrics: parsed by the official parser, moving as jobs are submitted
and predictions served, naming no job and no user."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from core.spec import JobSpec
from jobqueue.models import ADMIN
from tests.support.data import TINY, TINY_TRAIN
from tests.support.images import encode
from tests.support.inprocess import drain_queue


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_a_token(client):
    answer = client.get("/metrics", headers={"Authorization": ""})
    assert answer.status_code == 401


def test_the_counters_move_as_jobs_are_submitted_and_predictions_served(client, settings):
    before = scrape(client)
    job = client.post("/v1/jobs", json=TINY).json()
    after = scrape(client)
    submitted = {"route": "/v1/jobs", "method": "POST", "status": "201"}
    assert value(after, "tricklab_http_requests_total", **submitted) == 1 + value(
        before, "tricklab_http_requests_total", **submitted
    )
    assert value(after, "tricklab_jobs", status="queued") == 1
    assert value(after, "tricklab_jobs", status="succeeded") == 0

    drain_queue(settings)
    image = {"file": encode(np.zeros((28, 28), np.uint8))}
    for _ in range(2):  # the first loads the model, the second finds it in memory
        assert client.post(f"/v1/jobs/{job['id']}/predict", files=image).status_code == 200
    client.get(f"/v1/jobs/{'0' * 32}")  # a 404, counted under its route's template
    samples = scrape(client)
    assert value(samples, "tricklab_jobs", status="succeeded") == 1
    assert value(samples, "tricklab_model_cache_lookups_total", result="miss") >= 1
    assert value(samples, "tricklab_model_cache_lookups_total", result="hit") >= 1
    assert value(samples, "tricklab_model_load_seconds_count") == 1
    assert value(samples, "tricklab_predict_batch_size_count") == 2
    assert value(samples, "tricklab_predict_batch_size_sum") == 2
    predicted = {"route": "/v1/jobs/{job_id}/predict", "method": "POST", "status": "200"}
    assert value(samples, "tricklab_http_requests_total", **predicted) == 2
    missing = {"route": "/v1/jobs/{job_id}", "method": "GET", "status": "404"}
    assert value(samples, "tricklab_http_requests_total", **missing) == 1
    latency = {"route": "/v1/jobs/{job_id}/predict", "method": "POST"}
    assert value(samples, "tricklab_http_request_duration_seconds_count", **latency) == 2
    assert value(samples, "tricklab_event_streams_open") == 0

    text = client.get("/metrics").text
    assert job["id"] not in text and "admin" not in text  # no job, no user


def test_a_workers_counters_move_as_it_trains(settings, store):
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    names = [
        ("tricklab_worker_epochs_total", {}),
        ("tricklab_worker_samples_total", {}),
        ("tricklab_worker_pack_size_count", {}),
        ("tricklab_worker_job_duration_seconds_count", {"outcome": "succeeded"}),
        ("tricklab_worker_failures_total", {"reason": "invalid_data"}),
    ]
    before = [sample(name, **labels) for name, labels in names]
    store.enqueue(JobSpec.model_validate(TINY), ADMIN)  # 2 epochs
    store.enqueue(JobSpec.model_validate({**TINY, "validation_size": 50_000}), ADMIN)  # too big
    drain_queue(settings)
    after = [sample(name, **labels) for name, labels in names]
    trained = TINY_TRAIN - TINY["validation_size"]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2 * trained, 2, 1, 1]
    assert sample("tricklab_worker_samples_per_second") > 0
    (device,) = [
        s
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name == "tricklab_worker_device_info"
    ]
    assert device.value == 1 and device.labels["device"]

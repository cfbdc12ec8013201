"""Prometheus metrics of real processes: a worker's own endpoint and the API's, parsed with
the official parser while a job trains and a stream follows it."""

from __future__ import annotations

import socket

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import Cluster, wait_for
from tests.support.data import TINY

pytestmark = pytest.mark.e2e


def samples(text: str) -> dict[str, float]:
    """name{labels} → value; labels sorted, as 'name{a=b,c=d}'."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_the_api_and_a_worker_serve_metrics_that_move_as_a_job_trains(tmp_path, data_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    database = f"sqlite:///{tmp_path / 'tricklab.db'}"
    # A heartbeat every 0.1 s: a job of 3 epochs, model saved, lasts several of them.
    with Cluster(
        tmp_path, data_dir, database, WORKER_METRICS=f"127.0.0.1:{port}", HEARTBEAT_SECONDS="0.1"
    ) as cluster:
        cluster.start_api()
        job = cluster.client.post("/v1/jobs", json={**TINY, "epochs": 3}).json()
        with cluster.client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            lines = stream.iter_lines()
            next(lines)  # the stream is open
            api = samples(cluster.client.get("/metrics").text)
            assert api["tricklab_event_streams_open"] == 1
            assert api["tricklab_jobs{status=queued}"] == 1
            cluster.start_worker("worker")
            for _ in lines:  # to its end
                pass
        worker_metrics = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: httpx.get(worker_metrics).status_code == 200, 30, "worker metrics")
        worker = samples(httpx.get(worker_metrics).text)
        assert worker["tricklab_worker_epochs_total"] == 3
        assert worker["tricklab_worker_job_duration_seconds_count{outcome=succeeded}"] == 1
        # Renewed while it trained, by a heartbeat every 0.1 s at most, and never lost.
        held = worker["tricklab_worker_job_duration_seconds_sum{outcome=succeeded}"]
        assert 1 <= worker["tricklab_worker_lease_renewals_total"] <= held / 0.1
        assert worker["tricklab_worker_leases_lost_total"] == 0
        assert any(name.startswith("tricklab_worker_device_info{") for name in worker)
        api = samples(cluster.client.get("/metrics").text)
        assert api["tricklab_jobs{status=succeeded}"] == 1
        assert api["tricklab_event_streams_open"] == 0
        assert job["id"] not in httpx.get(worker_metrics).text

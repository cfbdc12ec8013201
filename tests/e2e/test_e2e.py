"""Real processes: `python -m service` (uvicorn) and `python -m worker`, talking over HTTP."""

from __future__ import annotations

import io
import signal
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from PIL import Image

from tests.support.cluster import Cluster, serving, wait_for
from tests.support.data import TINY, tiny_images
from tests.support.images import encode

pytestmark = pytest.mark.e2e
IMAGES, LABELS = tiny_images(3, seed=21)


@pytest.fixture
def stack(tmp_path: Path, data_dir: Path) -> Iterator[Cluster]:
    with serving(tmp_path, data_dir) as cluster:
        yield cluster


def status_of(client: httpx.Client, job_id: str) -> str:
    return str(client.get(f"/v1/jobs/{job_id}").json()["status"])


def test_submit_follow_metrics_and_predict(stack):
    cluster, client = stack, stack.client
    job = client.post("/v1/jobs", json={**TINY, "epochs": 2}).json()
    seen: list[int] = []

    def finished() -> bool:
        since = seen[-1] if seen else 0
        metrics = client.get(f"/v1/jobs/{job['id']}/metrics", params={"since_epoch": since}).json()
        seen.extend(e["epoch"] for e in metrics["epochs"])
        return metrics["status"] in ("succeeded", "failed")

    wait_for(finished, 120, "the job to finish")
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert seen == [1, 2]  # each epoch seen exactly once while polling with since_epoch

    uploads = [("file", (f"{n}.png", encode(image), "image/png")) for n, image in enumerate(IMAGES)]
    from_png = client.post(f"/v1/jobs/{job['id']}/predict", files=uploads)
    assert from_png.status_code == 200, from_png.text
    assert [p["label"] for p in from_png.json()["predictions"]] == LABELS.tolist()
    from_json = client.post(f"/v1/jobs/{job['id']}/predict", json={"instances": IMAGES.tolist()})
    assert from_json.json() == from_png.json()

    worker_log = cluster.log("worker")
    for event in ("claimed", "epoch=1/2", "epoch=2/2", "succeeded"):
        assert f"job={job['id']} {event}" in worker_log


def test_cancel_stops_a_running_job_within_an_epoch(stack):
    cluster, client = stack, stack.client
    long_job = client.post("/v1/jobs", json={**TINY, "epochs": 1000}).json()
    wait_for(
        lambda: client.get(f"/v1/jobs/{long_job['id']}").json()["epochs_done"] >= 1,
        120,
        "the first epoch",
    )
    cancelled = client.post(f"/v1/jobs/{long_job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    epochs_at_cancel = cancelled.json()["epochs_done"]

    wait_for(lambda: "cancelled or taken over" in cluster.log("worker"), 30, "the worker to stop")
    final = client.get(f"/v1/jobs/{long_job['id']}").json()
    assert final["status"] == "cancelled" and final["epochs_done"] <= epochs_at_cancel + 1
    assert (
        client.post(f"/v1/jobs/{long_job['id']}/predict", json={"instances": []}).status_code == 409
    )

    # The same worker carries on with the next job.
    next_job = client.post("/v1/jobs", json=TINY).json()
    wait_for(lambda: status_of(client, next_job["id"]) == "succeeded", 120, "the next job")


def test_sigint_hands_the_running_job_back_and_exits(stack):
    cluster, client = stack, stack.client
    job = client.post("/v1/jobs", json={**TINY, "epochs": 1000}).json()
    wait_for(
        lambda: client.get(f"/v1/jobs/{job['id']}").json()["epochs_done"] >= 1, 120, "training"
    )

    worker = cluster.processes["worker"]
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=30) == 0
    requeued = client.get(f"/v1/jobs/{job['id']}").json()
    assert requeued["status"] == "queued" and requeued["lease_expires_at"] is None
    assert requeued["epochs_done"] == requeued["checkpoint_epoch"] >= 1  # resumes from there
    assert f"job={job['id']} handed back to the queue" in cluster.log("worker")

    # uvicorn shuts down cleanly, then re-raises the signal so its exit status reports it.
    api = cluster.processes["api"]
    api.send_signal(signal.SIGTERM)
    assert api.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in cluster.log("api")


def test_a_study_runs_to_completion_with_two_workers_on_its_queue(stack):
    cluster, client = stack, stack.client
    # A barrier, so that each worker must train part of the study, however the two race:
    # "worker" is busy with a long job while worker-2, which claims one job at a time and
    # exits after one (--once), takes the study's first; then the long job is cancelled and
    # "worker" trains the rest.
    holder = client.post("/v1/jobs", json={**TINY, "epochs": 1000}).json()
    wait_for(
        lambda: client.get(f"/v1/jobs/{holder['id']}").json()["epochs_done"] >= 1,
        120,
        "worker to be busy",
    )
    study = client.post(
        "/v1/studies",
        json={
            "base": {**TINY, "learning_rate": 0.0005, "hidden_units": [4]},
            "tricks": ["dropout", "batch_norm"],
            "design": "leave_one_out",
            "repeats": 2,
        },
    )
    assert study.status_code == 201, study.text
    cluster.env["TRICKLAB_PACK_SIZE"] = "1"
    cluster.start_worker("worker-2", "-m", "worker", "--once")
    assert cluster.processes["worker-2"].wait(timeout=180) == 0
    cancelled = client.post(f"/v1/jobs/{holder['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["epochs_done"] < 1000, "the long job ended before worker-2 took its job"
    url = study.headers["location"]
    done = wait_for(
        lambda: (s := client.get(url).json())["status"] not in ("queued", "running") and s,
        180,
        "the study to finish",
    )
    assert done["status"] == "succeeded"
    assert done["progress"] == {**done["progress"], "succeeded": 6, "total": 6}
    report = done["report"]
    assert [v["name"] for v in report["variants"]] == ["all", "all − dropout", "all − batch_norm"]
    assert all(v["final_test_accuracy"]["n"] == 2 for v in report["variants"])
    assert [e["trick"] for e in report["effects"]] == ["dropout", "batch_norm"]
    # Two seeds: a verdict needs three (docs/studies.md).
    assert {e["verdict"] for e in report["effects"]} == {"not enough repeats"}
    study_jobs = [job_id for v in report["variants"] for job_id in v["jobs"]]
    trained_by = Counter(cluster.store.get(job_id).worker for job_id in study_jobs)
    assert trained_by == {"worker-2": 1, "worker": 5}
    for name, count in trained_by.items():  # each claimed and finished its own, once each
        log = cluster.log(name)
        mine = [job_id for job_id in study_jobs if cluster.store.get(job_id).worker == name]
        assert [log.count(f"job={job_id} claimed") for job_id in mine] == [1] * count
        assert [log.count(f"job={job_id} succeeded") for job_id in mine] == [1] * count
    for name, plot in done["links"]["plots"].items():
        png = client.get(plot)
        assert png.status_code == 200, (name, png.text)
        assert Image.open(io.BytesIO(png.content)).size[0] >= 800
        svg = client.get(plot, params={"format": "svg"})
        assert ET.fromstring(svg.content).tag == "{http://www.w3.org/2000/svg}svg", name

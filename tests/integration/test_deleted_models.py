"""A model whose files are deleted stops being served by every API process on the database, not
only by the one that deleted them: two apps, each with its own model cache, on one SQLite file,
and the retention run by a process of its own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import serving
from service.app import create_app
from tests.support.auth import ADMIN_HEADERS
from tests.support.cluster import wait_for
from tests.support.data import TINY, tiny_images
from tests.support.inprocess import drain_queue, settings_in

IMAGES, _ = tiny_images(1, seed=3)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_apps(tmp_path, data_dir) -> Iterator[tuple[TestClient, TestClient, list[str]]]:
    settings = settings_in(tmp_path, data_dir)
    with (
        TestClient(create_app(settings), headers=ADMIN_HEADERS) as one,
        TestClient(create_app(settings), headers=ADMIN_HEADERS) as other,
    ):
        jobs = [one.post("/v1/jobs", json=TINY).json()["id"] for _ in range(2)]
        drain_queue(settings)
        yield one, other, jobs


def answers(client: TestClient, job_id: str) -> tuple[int, int]:
    """The statuses of a v1 predict and a V2 infer of one image."""
    v1 = client.post(f"/v1/jobs/{job_id}/predict", json={"instances": IMAGES.tolist()})
    tensor = {"name": "images", "datatype": "UINT8", "shape": [1, 28, 28]}
    v2 = client.post(
        f"/v2/models/{job_id}/infer", json={"inputs": [{**tensor, "data": IMAGES.tolist()}]}
    )
    return v1.status_code, v2.status_code


def gone_from(client: TestClient, job_id: str) -> bool:
    # Within RECHECK_SECONDS; the generous wait only bounds a test on a loaded machine.
    return wait_for(
        lambda: answers(client, job_id) == (410, 410),
        timeout=serving.RECHECK_SECONDS * 6,
        what=f"job {job_id}'s model to stop being served",
        every=0.2,
    )


def test_a_model_deleted_through_another_process_stops_being_served(two_apps):
    one, other, (deleted, kept) = two_apps
    for client in (one, other):  # both load, and keep, both models
        assert answers(client, deleted) == answers(client, kept) == (200, 200)
    assert one.delete(f"/v1/jobs/{deleted}").status_code == 200
    assert answers(one, deleted) == (410, 410)  # the deleting app forgets it at once
    assert gone_from(other, deleted)
    assert answers(other, kept) == (200, 200)


def test_a_model_the_retention_command_deleted_stops_being_served(two_apps, tmp_path):
    one, other, jobs = two_apps
    for client in (one, other):
        assert all(answers(client, job_id) == (200, 200) for job_id in jobs)
    env = {
        "TRICKLAB_DATABASE_URL": f"sqlite:///{tmp_path / 'tricklab.db'}",
        "TRICKLAB_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "jobqueue.retention", "--files-days", "0.000001"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "deleted the files of 2 jobs" in done.stdout, done.stdout
    for client in (one, other):
        for job_id in jobs:
            assert gone_from(client, job_id)

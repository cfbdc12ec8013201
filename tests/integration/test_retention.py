"""The retention policy, on each database: the API applies it on its schedule, archiving the
metrics and deleting the files of jobs that ended long enough ago, and nothing else; the
command applies it at once and says what it removed."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from jobqueue.db import make_engine
from jobqueue.models import Job, utcnow
from jobqueue.store import JobStore
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY, tiny_images
from tests.support.inprocess import drain_queue, settings_in

pytestmark = pytest.mark.slow  # trains three tiny jobs on each database


def ended_days_ago(store: JobStore, job_id: str, days: float) -> None:
    with store.engine.begin() as connection:
        connection.execute(
            update(Job).where(Job.id == job_id).values(finished_at=utcnow() - timedelta(days=days))
        )


def test_old_jobs_give_back_their_metrics_and_files_and_nothing_else(
    database_url, tmp_path, data_dir
):
    settings = settings_in(
        tmp_path,
        data_dir,
        database_url=database_url,
        retain_metrics_days=1,
        retain_artifacts_days=2,
        retention_seconds=0.2,
    )
    from service.app import create_app

    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        old, older, recent = (
            client.post("/v1/jobs", json={**TINY, "seed": n}).json()["id"] for n in range(3)
        )
        drain_queue(settings)
        running = client.post("/v1/jobs", json=TINY).json()["id"]
        store = JobStore(make_engine(database_url))
        store.claim("w", "CPU")
        ended_days_ago(store, older, 3)  # past both limits
        ended_days_ago(store, old, 1.5)  # past the metrics' limit only

        def archived(job_id: str) -> bool:
            return client.get(f"/v1/jobs/{job_id}").json()["metrics_archived_at"] is not None

        deadline = time.monotonic() + 30
        while not (archived(old) and archived(older)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert archived(old) and archived(older)
        time.sleep(0.5)  # a few more passes change nothing more
        assert not archived(recent) and not archived(running)
        assert client.get(f"/v1/jobs/{older}/metrics").json()["epochs"] == []
        assert len(client.get(f"/v1/jobs/{recent}/metrics").json()["epochs"]) == TINY["epochs"]
        # The older job's files are gone (its model is 410), the old one's still serve.
        assert client.get(f"/v1/jobs/{older}").json()["artifacts_deleted_at"] is not None
        assert client.get(f"/v1/jobs/{older}/model").status_code == 410
        images, _ = tiny_images(1, seed=5)
        predicted = client.post(f"/v1/jobs/{old}/predict", json={"instances": images.tolist()})
        assert predicted.status_code == 200
        assert client.get(f"/v1/jobs/{running}").json()["status"] == "running"
        counts = client.get("/v1/jobs").json()["total"]
        assert counts == 4  # the jobs themselves stay

    archives = sorted((tmp_path / "artifacts" / "archive").glob("metrics-*.jsonl.gz"))
    rows = [
        json.loads(line)
        for path in archives
        for line in gzip.decompress(path.read_bytes()).splitlines()
    ]
    assert sorted((row["job_id"], row["epoch"]) for row in rows) == sorted(
        (job, epoch) for job in (old, older) for epoch in range(1, TINY["epochs"] + 1)
    )
    assert {"test_accuracy", "train_loss", "attempt"} <= set(rows[0])

    # The command, at once, with the limits it is given.
    ended_days_ago(store, recent, 10)
    env = {
        **os.environ,
        "TRICKLAB_DATABASE_URL": database_url,
        "TRICKLAB_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }
    command = [
        sys.executable,
        "-m",
        "jobqueue.retention",
        "--metrics-days",
        "7",
        "--files-days",
        "7",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"archived and removed {TINY['epochs']} epoch rows of 1 job "), (
        done.stdout
    )
    assert "deleted the files of 1 job," in done.stdout  # the old one ended 1.5 days ago
    assert not (tmp_path / "artifacts" / "jobs" / recent).exists()
    again = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert again.stdout.startswith("archived and removed 0 epoch rows of 0 jobs")


def test_the_command_without_a_policy_says_what_to_set(tmp_path):
    env = {**os.environ, "TRICKLAB_DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}"}
    env.pop("TRICKLAB_RETAIN_METRICS_DAYS", None)
    done = subprocess.run(
        [sys.executable, "-m", "jobqueue.retention"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "set TRICKLAB_RETAIN_METRICS_DAYS or TRICKLAB_RETAIN_ARTIFACTS_DAYS" in done.stderr

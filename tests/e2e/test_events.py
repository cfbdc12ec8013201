"""Server-Sent Events against a real uvicorn and worker: a job's and a study's, to the end,
and a stream that drops and resumes with Last-Event-ID, losing and repeating nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest

from tests.support.auth import ADMIN_HEADERS
from tests.support.cluster import Cluster, serving
from tests.support.data import TINY

pytestmark = pytest.mark.e2e


@dataclass
class Event:
    name: str
    data: Any
    id: str | None


def events(
    client: httpx.Client, path: str, headers: dict[str, str] | None = None, stop_after: int = 0
) -> Iterator[Event]:
    """The events of a stream, parsed here independently of any client of tricklab's."""
    with client.stream("GET", path, headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "event" in fields:
                    yield Event(fields["event"], json.loads(fields["data"]), fields.get("id"))
                fields = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                fields[key] = value.removeprefix(" ")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, data_dir) -> Iterator[Cluster]:
    with serving(tmp_path_factory.mktemp("events"), data_dir) as running:
        yield running


def test_a_job_stream_tells_its_status_each_epoch_and_its_end_then_closes(cluster):
    job = cluster.client.post("/v1/jobs", json={**TINY, "epochs": 3}).json()
    seen = list(events(cluster.client, f"/v1/jobs/{job['id']}/events"))
    names = [event.name for event in seen]
    assert names[0] == "status" and seen[0].data["id"] == job["id"]
    assert names[-1] == "end" and seen[-1].data["status"] == "succeeded"
    epochs = [event for event in seen if event.name == "epoch"]
    assert [(e.id, e.data["epoch"]) for e in epochs] == [("1", 1), ("2", 2), ("3", 3)]
    assert all(0 <= e.data["test_accuracy"] <= 1 for e in epochs)
    statuses = [event.data["status"] for event in seen if event.name == "status"]
    assert statuses[-1] == "succeeded" and len(statuses) == len(set(statuses)) >= 2
    # Running is announced before the epochs it trains.
    running = next(
        i for i, e in enumerate(seen) if e.name == "status" and e.data["status"] == "running"
    )
    assert running < names.index("epoch")


def test_a_dropped_stream_resumes_after_the_last_epoch_it_got(cluster):
    job = cluster.client.post("/v1/jobs", json={**TINY, "epochs": 5}).json()
    path = f"/v1/jobs/{job['id']}/events"
    first = []
    for event in events(cluster.client, path):  # the connection drops after epoch 2
        first.append(event)
        if event.name == "epoch" and event.id == "2":
            break
    rest = list(events(cluster.client, path, headers={"Last-Event-ID": "2"}))
    epochs = [e.data["epoch"] for e in first + rest if e.name == "epoch"]
    assert epochs == [1, 2, 3, 4, 5]  # nothing lost, nothing repeated
    assert rest[-1].name == "end"
    # After the end, the same with ?since_epoch: what is left, and the end at once.
    late = list(events(cluster.client, f"{path}?since_epoch=4"))
    assert [e.name for e in late] == ["status", "epoch", "end"]
    assert late[1].data["epoch"] == 5


def test_a_study_stream_tells_its_progress_to_the_end(cluster):
    study = cluster.client.post(
        "/v1/studies", json={"base": TINY, "tricks": ["dropout"], "repeats": 1}
    ).json()
    seen = list(events(cluster.client, f"/v1/studies/{study['id']}/events"))
    assert [e.name for e in seen][-1] == "end" and {e.name for e in seen[:-1]} == {"progress"}
    finished = [e.data["progress"]["succeeded"] for e in seen]
    assert finished == sorted(finished) and finished[-1] == seen[-1].data["progress"]["total"]
    assert seen[-1].data["status"] == "succeeded"


def test_a_stream_is_its_owners_alone(cluster):
    job = cluster.client.post("/v1/jobs", json=TINY).json()
    path = f"/v1/jobs/{job['id']}/events"
    with httpx.Client(base_url=cluster.url, timeout=30) as anonymous:
        assert anonymous.get(path).status_code == 401
    bob = cluster.client.post("/v1/users", json={"name": "bob"}, headers=ADMIN_HEADERS).json()
    answer = cluster.client.get(path, headers={"Authorization": f"Bearer {bob['token']}"})
    assert answer.status_code == 404
    bad = cluster.client.get(path, headers={"Last-Event-ID": "two"})
    assert bad.status_code == 422

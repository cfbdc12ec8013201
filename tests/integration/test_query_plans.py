"""Every query that the API and a worker run is backed by an index. A workload through the API
(users, submissions, a study, a search, lists with every filter and page, reports, predictions, events,
the dashboard) and a worker (claims, epochs, finishes, failures, hand-backs, the sweep, the
retention policy) runs on
each database while every statement is recorded; then each distinct statement is EXPLAINed
with the parameters it ran with, and a full scan of jobs or epoch_metrics fails the test.
PostgreSQL plans with sequential scans discouraged (enable_seqscan off), so that on these
small tables it still picks an index wherever one could serve; a Seq Scan left means none can.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from core.spec import JobSpec
from jobqueue import retention
from jobqueue.artifacts import ArtifactStore
from jobqueue.counts import JobCounts
from jobqueue.db import make_engine
from jobqueue.models import ADMIN
from jobqueue.retry import FailureReason
from jobqueue.store import JobStore
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY, tiny_images
from tests.support.inprocess import drain_queue, settings_in

pytestmark = pytest.mark.slow  # a workload on each database: tens of seconds
WATCHED = ("jobs", "epoch_metrics")
SQLITE_SCAN = re.compile(rf"^SCAN ({'|'.join(WATCHED)})(_\d+)?( USING (COVERING )?INDEX .*)?$")
LIMITED = re.compile(r"\bLIMIT\b")


def whole(step: str, statement: str) -> bool:
    """Whether a step of SQLite's plan reads all of jobs or epoch_metrics: a SCAN of the
    table, or of an index unless the statement has a LIMIT (walking an index in order for
    the newest jobs stops at the page's end)."""
    found = SQLITE_SCAN.match(step)
    return bool(found) and (found.group(3) is None or not LIMITED.search(statement))


@pytest.fixture
def recorded() -> Iterator[dict[str, Any]]:
    """Each distinct statement run by any engine while the test runs, with its parameters."""
    statements: dict[str, Any] = {}

    def record(_conn, _cursor, statement, parameters, _context, executemany) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if not executemany and verb in ("SELECT", "UPDATE", "DELETE", "WITH"):
            statements.setdefault(statement, parameters)

    event.listen(Engine, "before_cursor_execute", record)
    yield statements
    event.remove(Engine, "before_cursor_execute", record)


def test_no_query_scans_jobs_or_epoch_metrics_whole(database_url, tmp_path, data_dir, recorded):
    settings = settings_in(tmp_path, data_dir, database_url=database_url, poll_seconds=0.05)
    from service.app import create_app

    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        recorded.clear()  # what starting up ran (creating, upgrading) is not the steady state
        api_workload(client, settings)
    statements = dict(recorded)
    assert len(statements) > 40  # the workload ran what it should have
    engine = make_engine(database_url)
    scans = {
        statement: plan
        for statement, parameters in statements.items()
        if (plan := full_scans(engine, statement, parameters))
    }
    assert scans == {}
    # What a full scan looks like is recognised: the test can fail.
    assert full_scans(engine, "SELECT id FROM jobs WHERE worker IS NOT NULL", None)


def api_workload(client: TestClient, settings) -> None:
    bob = client.post("/v1/users", json={"name": "bob", "role": "user"}).json()
    as_bob = {"Authorization": f"Bearer {bob['token']}"}
    client.get("/v1/me", headers=as_bob)
    jobs = [
        client.post("/v1/jobs", json={**TINY, "epochs": 1, "seed": n}).json()["id"]
        for n in range(3)
    ]
    client.post("/v1/jobs", json={**TINY, "tricks": ["dropout"]}, headers={"Idempotency-Key": "k"})
    client.post("/v1/jobs", json={**TINY, "tricks": ["dropout"]}, headers={"Idempotency-Key": "k"})
    client.post("/v1/jobs", json={**TINY, "epochs": 1}, headers=as_bob)
    batch = {"jobs": [{**TINY, "epochs": 1}] * 2}
    client.post("/v1/jobs:batch", json=batch, headers={"Idempotency-Key": "b"})
    client.post("/v1/jobs:batch", json=batch, headers={"Idempotency-Key": "b"})
    study = client.post(
        "/v1/studies",
        json={"base": {**TINY, "epochs": 1}, "tricks": ["batch_norm"], "repeats": 2},
    ).json()
    client.post(
        "/v1/studies", json={"base": TINY, "tricks": ["dropout"], "repeats": 1}, headers=as_bob
    )
    search = client.post(
        "/v1/searches",
        json={
            "base": {**TINY, "epochs": 3},
            "space": {"learning_rate": {"type": "log_uniform", "low": 0.001, "high": 0.1}},
            "max_trials": 3,
            "confirm": {"top": 1, "repeats": 2},
        },
    ).json()
    drain_queue(settings, on_search_job=client.app.state.tricklab.progress.advance)
    waiting = client.post("/v1/jobs", json=TINY).json()["id"]

    for query in ("", "?status=succeeded", "?trick=dropout", "?owner=bob", "?limit=2"):
        page = client.get(f"/v1/jobs{query}").json()
        if page["next"]:
            client.get(page["next"])
    client.get("/v1/jobs", headers=as_bob)
    client.get("/v1/jobs?trick=dropout&status=succeeded", headers=as_bob)
    first = client.get("/v1/studies?limit=1").json()
    client.get(first["next"])
    client.get("/v1/studies", headers=as_bob)
    client.get(f"/v1/studies/{study['id']}")
    client.get(f"/v1/studies/{study['id']}/report.csv?table=effects")
    client.get(f"/v1/compare?jobs={','.join(jobs)}")
    client.get(f"/v1/jobs/{jobs[0]}")
    client.get(f"/v1/jobs/{jobs[0]}/metrics?since_epoch=0")
    client.get(f"/v1/jobs/{jobs[0]}/model/metadata")
    images, _ = tiny_images(2, seed=3)
    client.post(f"/v1/jobs/{jobs[0]}/predict", json={"instances": images.tolist()})
    client.get(f"/v1/jobs/{jobs[0]}/events")
    client.get("/ui/jobs?trick=dropout&status=succeeded")
    client.get(f"/jobs/{jobs[0]}")
    client.post(f"/v1/jobs/{waiting}/cancel")
    client.delete(f"/v1/jobs/{jobs[1]}")
    client.post(f"/v1/studies/{study['id']}/cancel")
    for path in ("", "/trials", "/report", "/trials.csv", "/plots/rungs"):
        client.get(f"/v1/searches/{search['id']}{path}")
    client.get("/v1/searches")
    client.get(f"/searches/{search['id']}")
    client.post(f"/v1/searches/{search['id']}/cancel")
    client.get("/metrics")

    # A worker's other moves, through the store verbs the worker calls.
    store = JobStore(make_engine(settings.database_url), lease_seconds=0.01)
    for _ in range(3):
        store.enqueue(JobSpec(seed=9), ADMIN)
    _, lease = store.claim("w", "CPU")
    store.heartbeat(lease)
    store.fail(lease, FailureReason.ERROR, RuntimeError("boom"))
    _, lease = store.claim_pack("w", "CPU", 2, lambda spec: ("mlp", 2))[0]
    store.release(lease)
    store.claim("w", "CPU")
    store.requeue_expired()
    JobCounts(store.engine).fold(at_least=1)
    retention.apply(store, ArtifactStore(settings.artifacts_dir), 1e-9, 1e-9)


def full_scans(engine: Engine, statement: str, parameters: Any) -> list[str]:
    """The full scans of jobs or epoch_metrics in the statement's plan."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            return [row[3] for row in plan if whole(row[3], statement)]
        connection.exec_driver_sql("SET enable_seqscan = off")
        (document,) = connection.exec_driver_sql(
            f"EXPLAIN (FORMAT JSON) {statement}", parameters
        ).scalar_one()
        return [
            f"{node['Node Type']} on {node['Relation Name']}"
            for node in nodes(document["Plan"])
            if node.get("Relation Name") in WATCHED
            and (
                node["Node Type"] == "Seq Scan"
                or (
                    node["Node Type"] in ("Index Scan", "Index Only Scan")
                    and "Index Cond" not in node
                    and not LIMITED.search(statement)
                )
            )
        ]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)

"""The API through TestClient, against a real SQLite file."""

import pytest

from core.db import make_engine
from core.retry import FailureReason
from core.states import JobStatus
from core.store import JobStore
from tests.conftest import TINY, drain_queue


def submit(client, spec=None):
    response = client.post("/v1/jobs", json=TINY if spec is None else spec)
    assert response.status_code == 201, response.text
    return response.json()


def test_submit_answers_201_with_location_and_the_resolved_spec(client):
    response = client.post("/v1/jobs", json={"tricks": ["momentum", "dropout"], "epochs": 3})
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempts"] == 0 and job["epochs_total"] == 3
    assert job["spec"]["learning_rate"] == 0.01
    assert [t["name"] for t in job["spec"]["tricks"]] == ["dropout", "momentum"]
    assert job["created_at"].endswith("Z")
    assert client.get(response.headers["location"]).json() == job


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"tricks": ["sparkle"]}, "tricks[0]", "expected tags: 'dropout', 'weight_decay'"),
        ({"tricks": [{"name": "dropout", "rate": 1.0}]}, "tricks[0].rate", "less than 1"),
        ({"tricks": [{"name": "dropout", "rate": -0.5}]}, "tricks[0].rate", "greater than 0"),
        ({"epochs": 0}, "epochs", "greater than or equal to 1"),
        ({"epochs": 1_000_000}, "epochs", "less than or equal to 1000"),
        ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
        ({"optimiser": "sgd"}, "body", "unknown field 'optimiser'; allowed fields: dataset"),
        ({"dataset": "svhn"}, "dataset", "'fashion_mnist' or 'mnist'"),
    ],
)
def test_invalid_specs_get_422_naming_the_field(client, spec, field, message):
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(
        e["field"] == field and message in e["msg"] and e["msg"].startswith(field) for e in errors
    ), errors


def test_nan_in_a_spec_is_refused(client):
    body = '{"tricks": [{"name": "dropout", "rate": NaN}]}'
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "finite number" in response.json()["detail"][0]["msg"]


def test_malformed_or_missing_json_is_named(client):
    response = client.post(
        "/v1/jobs", content="{oops", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith(
        "the body is not valid JSON: Expecting property name"
    )
    missing = client.post("/v1/jobs")
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["msg"] == "body: a JSON body is required"


def test_list_newest_first_with_status_filter_and_pages(client):
    ids = [submit(client, {**TINY, "seed": n})["id"] for n in range(3)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    listed = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in listed["jobs"]] == [ids[2], ids[1]]
    assert (listed["total"], listed["limit"], listed["offset"]) == (3, 2, 0)
    assert [j["id"] for j in client.get("/v1/jobs?offset=2").json()["jobs"]] == [ids[0]]
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["jobs"]] == [ids[0]]
    bad = client.get("/v1/jobs", params={"status": "done"})
    assert (
        bad.status_code == 422
        and "'queued', 'running', 'succeeded'" in bad.json()["detail"][0]["msg"]
    )
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", ""),
        ("get", "/metrics"),
        ("post", "/cancel"),
        ("get", "/model"),
        ("post", "/predict"),
    ],
)
def test_unknown_jobs_are_404(client, method, path):
    response = getattr(client, method)(f"/v1/jobs/doesnotexist{path}")
    assert response.status_code == 404
    assert response.json()["detail"] == "no job with id 'doesnotexist'"


def test_a_trained_job_shows_its_metrics_result_and_model(client, settings):
    job = submit(client, {**TINY, "epochs": 3})
    drain_queue(settings)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["epochs_done"] == 3
    assert done["result"]["test_accuracy"] > 0.9 and done["best_epoch"] in (1, 2, 3)
    assert done["device"].startswith("CPU") and done["error"] is None

    metrics = client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert metrics["status"] == "succeeded"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert set(metrics["epochs"][0]) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "train_objective",
        "val_loss",
        "val_accuracy",
        "test_loss",
        "test_accuracy",
        "learning_rate",
        "seconds",
    }
    later = client.get(f"/v1/jobs/{job['id']}/metrics", params={"since_epoch": 2}).json()
    assert [e["epoch"] for e in later["epochs"]] == [3]
    assert client.get(f"/v1/jobs/{job['id']}/metrics?since_epoch=-1").status_code == 422

    model = client.get(f"/v1/jobs/{job['id']}/model")
    assert model.status_code == 200
    assert model.headers["content-type"] == "application/octet-stream"
    assert f"tricklab-{job['id']}.keras" in model.headers["content-disposition"]
    assert model.content[:2] == b"PK"  # a .keras file is a zip archive

    conflict = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert conflict.status_code == 409 and "already succeeded" in conflict.json()["detail"]


def test_cancel_a_queued_job_is_final_and_repeatable(client, settings, store):
    job = submit(client)
    for _ in range(2):
        response = client.post(f"/v1/jobs/{job['id']}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
    drain_queue(settings)
    assert store.get(job["id"]).status == JobStatus.CANCELLED
    for path in ("/model", "/predict"):
        response = client.request(
            "GET" if path == "/model" else "POST", f"/v1/jobs/{job['id']}{path}"
        )
        assert response.status_code == 409 and "is cancelled" in response.json()["detail"]


def test_a_failed_job_shows_its_error(client, settings):
    job = submit(client, {**TINY, "validation_size": 50_000})
    drain_queue(settings)
    failed = client.get(f"/v1/jobs/{job['id']}").json()
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "DatasetError"
    assert "validation_size 50000" in failed["error"]["message"]


def test_trick_catalogue(client):
    tricks = client.get("/v1/tricks").json()["tricks"]
    names = [t["name"] for t in tricks]
    assert names[:5] == ["dropout", "weight_decay", "batch_norm", "early_stopping", "momentum"]
    momentum = tricks[4]["parameters"]
    assert momentum["momentum"]["default"] == 0.9 and momentum["nesterov"]["default"] is True


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    # A database nobody listens on (port 1): ready no more, still alive.
    client.app.state.store = JobStore(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/x"))
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["status"] == "unavailable"
    assert client.get("/healthz").status_code == 200


def test_openapi_documents_the_whole_contract(client):
    document = client.get("/openapi.json").json()
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations >= {
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}/metrics", "get"),
        ("/v1/jobs/{job_id}/cancel", "post"),
        ("/v1/jobs/{job_id}/model", "get"),
        ("/v1/jobs/{job_id}/model/metadata", "get"),
        ("/v1/jobs/{job_id}/predict", "post"),
        ("/v1/jobs/{job_id}/plots/{name}", "get"),
        ("/v1/studies", "post"),
        ("/v1/studies", "get"),
        ("/v1/studies/{study_id}", "get"),
        ("/v1/studies/{study_id}/report", "get"),
        ("/v1/studies/{study_id}/report.csv", "get"),
        ("/v1/studies/{study_id}/cancel", "post"),
        ("/v1/studies/{study_id}/plots/{name}", "get"),
        ("/v1/compare", "get"),
        ("/v1/compare.csv", "get"),
        ("/v1/compare/plots/{name}", "get"),
        ("/v1/tricks", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    }
    for item in document["paths"].values():
        for operation in item.values():
            assert len(operation["tags"]) == 1, operation["operationId"]
    predict = document["paths"]["/v1/jobs/{job_id}/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/json",
        "image/png",
        "image/jpeg",
        "image/webp",
        "image/gif",
    }
    assert {"400", "409", "413", "415", "422", "503"} <= set(predict["responses"])


def test_an_idempotency_key_makes_submission_safe_to_retry(client):
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs", json=TINY, headers=headers)
    again = client.post("/v1/jobs", json=dict(reversed(TINY.items())), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert client.get("/v1/jobs").json()["total"] == 1

    conflict = client.post("/v1/jobs", json={**TINY, "seed": 9}, headers=headers)
    assert conflict.status_code == 409
    assert f"already used for job {first.json()['id']}" in conflict.json()["detail"]
    too_long = client.post("/v1/jobs", json=TINY, headers={"Idempotency-Key": "k" * 256})
    assert (
        too_long.status_code == 422 and too_long.json()["detail"][0]["field"] == "idempotency-key"
    )


def test_a_job_shows_its_lease_attempts_and_failures(client, store):
    job = submit(client)
    lease = store.claim("w", "CPU")[1]
    running = client.get(f"/v1/jobs/{job['id']}").json()
    assert running["lease_expires_at"] > running["heartbeat_at"]
    assert (running["attempts"], running["max_attempts"], running["failures"]) == (1, 3, [])
    store.fail(lease, FailureReason.ERROR, OSError("disk full"))
    retried = client.get(f"/v1/jobs/{job['id']}").json()
    assert retried["status"] == "queued" and retried["lease_expires_at"] is None
    (failure,) = retried["failures"]
    assert (failure["attempt"], failure["reason"], failure["error_type"], failure["message"]) == (
        1,
        "error",
        "OSError",
        "disk full",
    )

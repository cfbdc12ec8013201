"""The API through TestClient, against a real SQLite file."""

import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.datasets import FILES, write_idx
from jobqueue.db import make_engine
from jobqueue.retry import FailureReason
from jobqueue.states import JobStatus
from jobqueue.store import JobStore
from service.app import create_app
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY, write_dataset
from tests.support.inprocess import drain_queue, settings_in

UNKNOWN = "0" * 32  # a well-formed id that no job has


def submit(client, spec=None):
    response = client.post("/v1/jobs", json=TINY if spec is None else spec)
    assert response.status_code == 201, response.text
    return response.json()


def test_submit_answers_201_with_location_and_the_resolved_spec(client):
    response = client.post(
        "/v1/jobs", json={"tricks": ["momentum", "dropout"], "epochs": 3, "validation_size": 100}
    )
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
        ("delete", ""),
        ("get", "/model"),
        ("get", "/model/metadata"),
        ("post", "/predict"),
    ],
)
def test_unknown_jobs_are_404_and_malformed_ids_422(client, method, path):
    response = getattr(client, method)(f"/v1/jobs/{UNKNOWN}{path}")
    assert response.status_code == 404
    assert response.json()["detail"] == f"no job with id '{UNKNOWN}'"
    malformed = getattr(client, method)(f"/v1/jobs/doesnotexist{path}")
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["msg"] == (
        "job_id: String should match pattern '^[0-9a-f]{32}$'"
    )


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


def test_a_failed_job_shows_its_error(tmp_path):
    settings = settings_in(tmp_path, tmp_path / "data")
    folder = write_dataset(tmp_path / "data" / "fashion-mnist")
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        job = submit(client)
        write_idx(folder / FILES["x_train"], np.zeros((3, 28, 28)))  # damaged after submission
        drain_queue(settings)
        failed = client.get(f"/v1/jobs/{job['id']}").json()
    assert failed["status"] == "failed"
    assert failed["error"]["reason"] == "invalid_data"
    assert failed["error"]["type"] == "DatasetError"
    assert "3 train images but 600 labels" in failed["error"]["message"]


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


OPERATIONS = {
    ("/v1/jobs", "post"): "jobs-submit",
    ("/v1/jobs", "get"): "jobs-list",
    ("/v1/jobs/{job_id}", "get"): "jobs-get",
    ("/v1/jobs/{job_id}", "delete"): "jobs-delete",
    ("/v1/jobs/{job_id}/metrics", "get"): "jobs-metrics",
    ("/v1/jobs/{job_id}/cancel", "post"): "jobs-cancel",
    ("/v1/jobs/{job_id}/model", "get"): "jobs-model",
    ("/v1/jobs/{job_id}/model/metadata", "get"): "jobs-model-metadata",
    ("/v1/jobs/{job_id}/predict", "post"): "jobs-predict",
    ("/v1/jobs/{job_id}/plots/{name}", "get"): "jobs-plot",
    ("/v1/studies", "post"): "studies-create",
    ("/v1/studies", "get"): "studies-list",
    ("/v1/studies/{study_id}", "get"): "studies-get",
    ("/v1/studies/{study_id}/report", "get"): "studies-report",
    ("/v1/studies/{study_id}/report.csv", "get"): "studies-report-csv",
    ("/v1/studies/{study_id}/cancel", "post"): "studies-cancel",
    ("/v1/studies/{study_id}/plots/{name}", "get"): "studies-plot",
    ("/v1/compare", "get"): "compare",
    ("/v1/compare.csv", "get"): "compare-csv",
    ("/v1/compare/plots/{name}", "get"): "compare-plot",
    ("/v1/tricks", "get"): "tricks-list",
    ("/v1/jobs/{job_id}/events", "get"): "jobs-events",
    ("/v1/studies/{study_id}/events", "get"): "studies-events",
    ("/v1/users", "post"): "users-create",
    ("/v1/users", "get"): "users-list",
    ("/v1/users/{user_id}", "get"): "users-get",
    ("/v1/users/{user_id}", "patch"): "users-update",
    ("/v1/users/{user_id}/tokens", "get"): "users-tokens-list",
    ("/v1/users/{user_id}/tokens", "post"): "users-tokens-create",
    ("/v1/users/{user_id}/tokens/{token_id}", "delete"): "users-tokens-revoke",
    ("/v1/me", "get"): "me",
    ("/v1/me/tokens", "get"): "me-tokens-list",
    ("/v1/me/tokens", "post"): "me-tokens-create",
    ("/v1/me/tokens/{token_id}", "delete"): "me-tokens-revoke",
    ("/healthz", "get"): "healthz",
    ("/readyz", "get"): "readyz",
    ("/metrics", "get"): "metrics",
}


def walk(node, path=""):
    """Every (path, key, value) of a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def test_openapi_documents_the_whole_contract(client):
    document = client.get("/openapi.json").json()
    operations = {
        (path, method): operation["operationId"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    assert operations == OPERATIONS  # short, stable ids: a generated client's method names
    schemas = document["components"]["schemas"]
    for where, key, value in walk(document):
        if key == "$ref":  # every reference resolves
            assert value.startswith("#/components/schemas/") and value.split("/")[-1] in schemas
        # pydantic writes a constraint it cannot translate under its own name: lost to clients
        assert key not in {"ge", "gt", "le", "lt"} or "properties" in where.split("/")[-1:], where
    titles = [schema.get("title", name) for name, schema in schemas.items()]
    assert len(titles) == len(set(titles))  # one model a name: generators name them by title
    for item in document["paths"].values():
        for operation in item.values():
            assert len(operation["tags"]) == 1, operation["operationId"]
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):  # every error with its body's schema
                    (body,) = response["content"].values()
                    assert body["schema"]["$ref"].split("/")[-1] in {
                        "Error",
                        "ValidationErrors",
                        "Health",
                    }, (operation["operationId"], status)
    predict = document["paths"]["/v1/jobs/{job_id}/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/json",
        "application/octet-stream",
    }
    assert {"400", "401", "404", "408", "409", "410", "413", "415", "422", "503"} == {
        status for status in predict["responses"] if status != "200"
    }


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


def test_an_ended_jobs_files_can_be_deleted_and_its_model_is_then_gone(client, settings):
    job = submit(client)
    queued = client.delete(f"/v1/jobs/{job['id']}")
    assert queued.status_code == 409 and "cancel it first" in queued.json()["detail"]
    drain_queue(settings)
    url = f"/v1/jobs/{job['id']}"
    assert client.post(f"{url}/predict", json={"instances": [[[0] * 28] * 28]}).status_code == 200
    folder = settings.artifacts_dir / "jobs" / job["id"]
    assert any(folder.rglob("model.keras"))

    deleted = client.delete(url)
    assert deleted.status_code == 200
    assert deleted.json()["artifacts_deleted_at"] is not None and not folder.exists()
    assert client.delete(url).json() == deleted.json()  # again: harmless, the same answer
    for response in (
        client.get(f"{url}/model"),
        client.get(f"{url}/model/metadata"),
        client.post(f"{url}/predict", json={"instances": [[[0] * 28] * 28]}),  # was loaded
    ):
        assert response.status_code == 410, response.text
        assert "were deleted at" in response.json()["detail"]
    kept = client.get(url).json()
    assert kept["status"] == "succeeded" and kept["result"] == deleted.json()["result"]
    assert len(client.get(f"{url}/metrics").json()["epochs"]) == TINY["epochs"]


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/v1/jobs?offset=1000000000000000000000000000000", "offset"),
        ("/v1/studies?offset=1000000000000000000000000000000", "offset"),
        ("/v1/jobs/{job}/metrics?since_epoch=100000000000000000000000", "since_epoch"),
    ],
)
def test_integers_beyond_what_the_database_stores_are_422(client, path, parameter):
    response = client.get(path.format(job=submit(client)["id"]))
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == (
        f"{parameter}: Input should be less than or equal to 2147483647"
    )


def test_an_unknown_query_parameter_is_named_not_ignored(client):
    response = client.get("/v1/jobs?statsu=running")
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == (
        "statsu: unknown query parameter 'statsu'; this route takes status, limit, offset, owner"
    )
    predict = client.post(f"/v1/jobs/{UNKNOWN}/predict?fast=1", json={"instances": []})
    assert predict.status_code == 422 and "this route takes none" in predict.text


def test_a_method_a_path_does_not_take_names_those_it_does(client):
    response = client.put("/v1/jobs")
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"
    assert response.json()["detail"] == "PUT is not allowed on /v1/jobs; allowed: GET, POST"


def test_json_sent_without_its_content_type_is_told_so(client):
    for headers in ({}, {"content-type": "text/plain"}):
        response = client.post("/v1/jobs", content=b'{"epochs": 1}', headers=headers)
        assert response.status_code == 415
        assert "must be JSON, sent with Content-Type: application/json" in response.text


def test_booleans_are_not_numbers(client):
    response = client.post("/v1/jobs", json={**TINY, "epochs": True, "learning_rate": False})
    assert response.status_code == 422
    assert [issue["msg"] for issue in response.json()["detail"]] == [
        "epochs: must be a number, not true",
        "learning_rate: must be a number, not false",
    ]


def test_a_spec_over_a_limit_is_refused_naming_it_and_nothing_is_queued(client):
    huge = {**TINY, "hidden_units": [4096] * 8, "epochs": 1000, "batch_size": 1}
    response = client.post("/v1/jobs", json=huge)
    assert response.status_code == 422
    issues = {issue["field"]: issue for issue in response.json()["detail"]}
    assert set(issues) == {"hidden_units", "batch_size"}  # 500 images: 500,000 steps pass
    assert issues["hidden_units"]["ctx"] == {
        "value": 120_725_514,
        "limit": 5_000_000,
        "setting": "TRICKLAB_MAX_PARAMETERS",
    }
    study = {"base": huge, "tricks": ["dropout"], "repeats": 8}
    assert client.post("/v1/studies", json=study).status_code == 422
    assert client.post("/v1/jobs", json={**TINY, "dataset": "svhn"}).status_code == 422
    assert client.get("/v1/jobs").json()["total"] == client.get("/v1/studies").json()["total"] == 0


def test_the_docs_page_needs_nothing_from_outside(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
    assert assets and all(asset.startswith("/") for asset in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset

"""The API through TestClient, against a real SQLite file."""

import json
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
        and "'queued', 'running', 'paused', 'succeeded'" in bad.json()["detail"][0]["msg"]
    )
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_next_links_walk_every_page_keeping_the_filters(client):
    ids = [submit(client, {**TINY, "seed": n})["id"] for n in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    seen, url, pages = [], "/v1/jobs?limit=2&status=queued", 0
    while url:
        page = client.get(url).json()
        seen += [j["id"] for j in page["jobs"]]
        assert page["total"] == 4 and page["limit"] == 2
        url, pages = page["next"], pages + 1
        assert url is None or ("status=queued" in url and "cursor=" in url)
    assert (seen, pages) == (ids[:0:-1], 2)
    refused = client.get("/v1/jobs", params={"cursor": "bm90IGEgY3Vyc29y"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["msg"] == (
        "cursor: not a cursor of this API: take it from a page's next link"
    )
    deep = client.get("/v1/jobs", params={"offset": 10_001})
    assert deep.status_code == 422 and "10000" in deep.json()["detail"][0]["msg"]


def test_a_batch_queues_every_spec_or_none(client, settings):
    specs = [{**TINY, "seed": n} for n in range(3)]
    answer = client.post("/v1/jobs:batch", json={"jobs": specs}, headers={"Idempotency-Key": "b"})
    assert answer.status_code == 201, answer.text
    jobs = answer.json()["jobs"]
    assert [job["spec"]["seed"] for job in jobs] == [0, 1, 2]
    assert all(job["status"] == "queued" for job in jobs)
    again = client.post("/v1/jobs:batch", json={"jobs": specs}, headers={"Idempotency-Key": "b"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [job["id"] for job in again.json()["jobs"]] == [job["id"] for job in jobs]
    other = client.post(
        "/v1/jobs:batch", json={"jobs": specs[:2]}, headers={"Idempotency-Key": "b"}
    )
    assert other.status_code == 409
    # One bad spec refuses the batch, naming it; nothing is queued.
    bad = client.post("/v1/jobs:batch", json={"jobs": [TINY, {**TINY, "epochs": 0}]})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["field"] == "jobs[1].epochs"
    huge = client.post(
        "/v1/jobs:batch", json={"jobs": [TINY, {**TINY, "hidden_units": [4096] * 8}]}
    )
    assert huge.status_code == 422 and huge.json()["detail"][0]["field"].startswith("jobs[1].")
    assert client.post("/v1/jobs:batch", json={"jobs": []}).status_code == 422
    assert client.get("/v1/jobs").json()["total"] == 3


def test_a_batch_over_the_quota_queues_nothing(client):
    user = client.post("/v1/users", json={"name": "carol", "role": "user", "quota_active_jobs": 2})
    carol = {"Authorization": f"Bearer {user.json()['token']}"}
    refused = client.post("/v1/jobs:batch", json={"jobs": [TINY] * 3}, headers=carol)
    assert refused.status_code == 429 and "quota of 2" in refused.json()["detail"]
    assert client.get("/v1/jobs", headers=carol).json()["total"] == 0
    assert (
        client.post("/v1/jobs:batch", json={"jobs": [TINY] * 2}, headers=carol).status_code == 201
    )


def test_list_by_trick(client):
    plain = submit(client, TINY)["id"]
    dropped = submit(client, {**TINY, "tricks": ["dropout", "batch_norm"]})["id"]
    for trick, ids in (("dropout", [dropped]), ("batch_norm", [dropped]), ("momentum", [])):
        listed = client.get("/v1/jobs", params={"trick": trick}).json()
        assert ([j["id"] for j in listed["jobs"]], listed["total"]) == (ids, None)
    assert client.get("/v1/jobs").json()["total"] == 2 and plain
    bad = client.get("/v1/jobs", params={"trick": "dropuot"})
    assert bad.status_code == 422 and "'dropout', 'weight_decay'" in bad.json()["detail"][0]["msg"]


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
    client.app.state.tricklab.store = JobStore(
        make_engine("postgresql+psycopg://postgres@127.0.0.1:1/x")
    )
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json() == {"status": "unavailable"}
    # Open to anyone, the answer says no more than that, nor does the document promise more.
    health = client.get("/openapi.json").json()["components"]["schemas"]["Health"]
    assert set(health["properties"]) == {"status"}
    assert client.get("/healthz").status_code == 200


OPERATIONS = {
    ("/v1/jobs", "post"): "jobs-submit",
    ("/v1/jobs:batch", "post"): "jobs-submit-batch",
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
    ("/v1/searches", "post"): "searches-create",
    ("/v1/searches", "get"): "searches-list",
    ("/v1/searches/{search_id}", "get"): "searches-get",
    ("/v1/searches/{search_id}/trials", "get"): "searches-trials",
    ("/v1/searches/{search_id}/report", "get"): "searches-report",
    ("/v1/searches/{search_id}/trials.csv", "get"): "searches-trials-csv",
    ("/v1/searches/{search_id}/report.csv", "get"): "searches-report-csv",
    ("/v1/searches/{search_id}/plots/{name}", "get"): "searches-plot",
    ("/v1/searches/{search_id}/cancel", "post"): "searches-cancel",
    ("/v1/searches/{search_id}/events", "get"): "searches-events",
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
    ("/v2/health/live", "get"): "v2-live",
    ("/v2/health/ready", "get"): "v2-ready",
    ("/v2", "get"): "v2-server",
    ("/v2/models/{job_id}", "get"): "v2-model",
    ("/v2/models/{job_id}/ready", "get"): "v2-model-ready",
    ("/v2/models/{job_id}/infer", "post"): "v2-infer",
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
    for path, item in document["paths"].items():
        for operation in item.values():
            assert len(operation["tags"]) == 1, operation["operationId"]
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):  # every error with its body's schema
                    (body,) = response["content"].values()
                    if path.startswith("/v2"):  # the Open Inference Protocol's {"error": ...}
                        assert body["schema"]["$ref"].endswith("/InferenceError"), path
                        continue
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
    infer = document["paths"]["/v2/models/{job_id}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert set(infer["responses"]["200"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }
    assert [p["name"] for p in infer["parameters"]] == ["job_id", "Inference-Header-Content-Length"]
    assert {"400", "401", "404", "408", "409", "410", "413", "415", "503"} == {
        status for status in infer["responses"] if status != "200"
    }
    for path in ("/v2/health/live", "/v2/health/ready"):  # open, like /healthz and /readyz
        assert "security" not in document["paths"][path]["get"], path


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
        "statsu: unknown query parameter 'statsu'; this route takes status, trick, id_prefix, limit, offset, owner, cursor"
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


# ---- the Open Inference Protocol (/v2) -----------------------------------------------------


def v2_request(data, datatype="UINT8", shape=None, **extra):
    shape = shape or [len(data), 28, 28]
    return {
        "inputs": [{"name": "images", "shape": shape, "datatype": datatype, "data": data}]
    } | extra


def binary_request(pixels, datatype="UINT8", outputs=None):
    """As tritonclient sends it: the JSON, then the tensor's bytes."""
    raw = pixels.astype({"UINT8": "u1", "FP32": "<f4"}[datatype]).tobytes()
    header = {
        "inputs": [
            {
                "name": "images",
                "shape": list(pixels.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        ]
    }
    if outputs is not None:
        header["outputs"] = outputs
    else:
        header["parameters"] = {"binary_data_output": True}
    encoded = json.dumps(header).encode()
    return encoded + raw, {"Inference-Header-Content-Length": str(len(encoded))}


def test_v2_inference_gives_v1s_probabilities_however_it_is_sent(client, settings):
    job = submit(client)["id"]
    drain_queue(settings)
    pixels = np.random.default_rng(5).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    v1 = client.post(f"/v1/jobs/{job}/predict", json={"instances": pixels.tolist()}).json()
    expected = np.array([p["probabilities"] for p in v1["predictions"]], np.float32)
    labels = [p["label"] for p in v1["predictions"]]
    url = f"/v2/models/{job}/infer"

    for body in (
        v2_request(pixels.tolist(), id="nested"),
        v2_request(pixels.reshape(-1).tolist(), shape=[3, 28, 28], id="flat"),
        v2_request(pixels.astype(float).tolist(), "FP32", id="fp32"),
    ):
        answer = client.post(url, json=body)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["tricklab-batch-size"] == "3"
        document = answer.json()
        assert (document["model_name"], document["model_version"]) == (job, "1")
        assert document["id"] == body["id"]
        probabilities, label_output = document["outputs"]
        assert (probabilities["name"], probabilities["datatype"]) == ("probabilities", "FP32")
        assert probabilities["shape"] == [3, 10] and label_output["shape"] == [3]
        got = np.array(probabilities["data"], np.float32).reshape(3, 10)
        np.testing.assert_array_equal(got, expected)
        assert label_output == {"name": "labels", "datatype": "INT64", "shape": [3], "data": labels}

    for datatype in ("UINT8", "FP32"):
        content, headers = binary_request(pixels, datatype)
        answer = client.post(url, content=content, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/octet-stream"
        length = int(answer.headers["inference-header-content-length"])
        document = json.loads(answer.content[:length])
        assert "id" not in document
        assert [o["parameters"]["binary_data_size"] for o in document["outputs"]] == [120, 24]
        rest = answer.content[length:]
        np.testing.assert_array_equal(np.frombuffer(rest[:120], "<f4").reshape(3, 10), expected)
        assert np.frombuffer(rest[120:], "<i8").tolist() == labels

    # Only some outputs, each as asked; binary_data_output is the default that they override.
    content, headers = binary_request(
        pixels[:1], outputs=[{"name": "labels", "parameters": {"binary_data": False}}]
    )
    answer = client.post(url, content=content, headers=headers)
    assert answer.headers["content-type"] == "application/json"
    assert [o["name"] for o in answer.json()["outputs"]] == ["labels"]
    body = v2_request(
        pixels[:1].tolist(),
        parameters={"binary_data_output": True},
        outputs=[
            {"name": "probabilities"},
            {"name": "labels", "parameters": {"binary_data": False}},
        ],
    )
    answer = client.post(f"/v2/models/{job}/versions/1/infer", json=body)
    length = int(answer.headers["inference-header-content-length"])
    first, second = json.loads(answer.content[:length])["outputs"]
    assert first["parameters"] == {"binary_data_size": 40} and "data" not in first
    assert second["data"] == labels[:1] and len(answer.content) == length + 40


AUTO = {"Inference-Header-Content-Length": "auto"}  # the length of the body's JSON
REFUSALS = [
    (b"", {}, "the request is not valid JSON: EOF while parsing"),
    (b"[1]", {}, "request: Input should be an object"),
    (b'{"inputs": []}', {}, "the model takes one input, 'images'; the request gives none"),
    (
        b'{"inputs": [{"name": "pixels", "shape": [1], "datatype": "UINT8", "data": [1]}]}',
        {},
        "the model takes one input, 'images'; the request gives 'pixels'",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 784], "datatype": "UINT8", "data": [1]}]}',
        {},
        "input 'images': shape [1, 784]; the model takes [N, 28, 28]",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [0, 28, 28], "datatype": "UINT8", "data": []}]}',
        {},
        "input 'images': shape [0, 28, 28]; the model takes [N, 28, 28]: N ≥ 1 images",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP64", "data": [1]}]}',
        {},
        "input 'images': datatype 'FP64'; the model takes UINT8 or FP32 pixels, 0–255",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", "data": [1, 2]}]}',
        {},
        "input 'images': data holds 2 elements, but shape [1, 28, 28] takes 784",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8"}]}',
        {},
        "give either data (JSON) or parameters.binary_data_size (the bytes after the JSON), "
        "not neither",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", '
        b'"parameters": {"binary_data_size": 784}}]}' + bytes(784),
        {},
        "(binary tensor data needs the Inference-Header-Content-Length header)",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", '
        b'"parameters": {"binary_data_size": 784}}]}' + bytes(783),
        AUTO,
        "the body has 783 bytes after its JSON header, but the inputs' binary_data_size add up "
        "to 784",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", '
        b'"parameters": {"binary_data_size": 783}}]}' + bytes(783),
        AUTO,
        "input 'images': 783 bytes of binary data, but shape [1, 28, 28] of UINT8 takes 784",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "FP32", '
        b'"parameters": {"binary_data_size": 3136}}]}' + np.full(784, np.nan, "<f4").tobytes(),
        AUTO,
        "input 'images': FP32 pixels must be finite numbers within 0–255",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", '
        b'"parameters": {"binary_data_size": "784"}}]}' + bytes(784),
        AUTO,
        "input 'images': binary_data_size must be a byte count, not '784'",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", '
        b'"parameters": {"binary_data_size": 784}}]}' + bytes(784),
        {"Inference-Header-Content-Length": "50"},
        "the request is not valid JSON: EOF while parsing a list at line 1 column 50 "
        "(Inference-Header-Content-Length says the JSON is its first 50 bytes)",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", '
        b'"data": [' + b"0," * 783 + b'0]}], "outputs": [{"name": "logits"}]}',
        {},
        "the model has no output 'logits'; its outputs are 'probabilities', 'labels'",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", '
        b'"data": [' + b"0," * 783 + b'0]}], "outputs": [{"name": "labels", '
        b'"parameters": {"classification": 3}}]}',
        {},
        "output 'labels': the classification extension is not supported",
    ),
    (
        b'{"id": 7, "inputs": [{"name": "images", "shape": [-1, 28, 28], '
        b'"datatype": "UINT8", "data": [0]}], "parameters": {"x": {"y": 1}}}',
        {},
        "id: Input should be a valid string; parameters.x: must be a string, a number or true "
        "or false; inputs[0].shape[0]: Input should be greater than or equal to 0",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", '
        b'"data": [' + b"0," * 783 + b'0]}], "parameters": {"binary_data_output": "yes"}}',
        {},
        "the request: binary_data_output must be true or false, not 'yes'",
    ),
    (
        b'{"inputs": [{"name": "images", "shape": [1, 28, 28], "datatype": "UINT8", '
        b'"data": [' + b"0," * 783 + b'0]}], "outputs": [{"name": "labels"}, {"name": "labels"}]}',
        {},
        "output 'labels' is asked for twice",
    ),
    (b"{}", {"Inference-Header-Content-Length": "x"}, "must be a byte count, not 'x'"),
    (b"{}", {"Content-Encoding": "gzip"}, "Content-Encoding 'gzip' is not supported"),
]


def test_v2_refuses_what_does_not_fit_naming_it(client, settings):
    job = submit(client)["id"]
    drain_queue(settings)
    failures = []
    for body, headers, message in REFUSALS:
        if headers is AUTO:
            length = body.index(b"}]}") + 3  # the end of the inputs' JSON: bytes follow
            headers = {"Inference-Header-Content-Length": str(length)}
        answer = client.post(f"/v2/models/{job}/infer", content=body, headers=headers)
        status = 415 if "Content-Encoding" in headers else 400
        if (answer.status_code, set(answer.json())) != (status, {"error"}) or (
            message not in answer.json()["error"]
        ):
            failures.append(f"{body[:60]!r}: {answer.status_code} {answer.text[:300]}")
    assert not failures, "\n".join(failures)


def test_v2_models_paths_and_methods_answer_in_the_protocols_shape(client, settings):
    job = submit(client)["id"]
    answers = {
        "queued model": client.get(f"/v2/models/{job}"),
        "queued ready": client.get(f"/v2/models/{job}/ready"),
        "malformed": client.get("/v2/models/abc/ready"),
        "unknown": client.post(f"/v2/models/{UNKNOWN}/infer", json={}),
        "version": client.get(f"/v2/models/{job}/versions/2"),
        "query": client.get("/v2?verbose=1"),
        "not served": client.post("/v2/repository/index"),
        "method": client.put(f"/v2/models/{job}/infer"),
    }
    statuses = {what: answer.status_code for what, answer in answers.items()}
    assert statuses == {
        "queued model": 409,
        "queued ready": 409,
        "malformed": 404,
        "unknown": 404,
        "version": 404,
        "query": 400,
        "not served": 404,
        "method": 405,
    }
    errors = {what: answer.json()["error"] for what, answer in answers.items()}
    assert errors["queued ready"] == (
        f"job {job} is queued: its model exists only once it has succeeded"
    )
    assert "no model named 'abc': a model's name is its job's id" in errors["malformed"]
    assert errors["unknown"] == f"no job with id '{UNKNOWN}'"
    assert errors["version"] == f"model '{job}' has no version '2'; its one version is '1'"
    assert "unknown query parameter 'verbose'; this route takes none" in errors["query"]
    assert errors["not served"].startswith("tricklab does not serve POST /v2/repository/index")
    assert answers["method"].headers["allow"] == "POST"

    drain_queue(settings)
    assert client.get(f"/v2/models/{job}/ready").json() == {"name": job, "ready": True}
    assert client.get(f"/v2/models/{job}/versions/1/ready").status_code == 200
    metadata = client.get(f"/v2/models/{job}").json()
    assert metadata == client.get(f"/v2/models/{job}/versions/1").json()
    assert metadata["outputs"][0]["parameters"]["class_names"].split(",")[:2] == [
        "T-shirt/top",
        "Trouser",
    ]
    assert client.get("/v2/").json() == client.get("/v2").json()
    client.delete(f"/v1/jobs/{job}")
    gone = client.post(f"/v2/models/{job}/infer", json=v2_request([0] * 784, shape=[1, 28, 28]))
    assert gone.status_code == 410 and "were deleted at" in gone.json()["error"]
    assert client.get(f"/v2/models/{job}/ready").status_code == 410


def test_v2_keeps_the_limits_of_predictions(tmp_path, data_dir):
    settings = settings_in(
        tmp_path,
        data_dir,
        max_predict_instances=2,
        predict_max_queued=1,
        max_request_bytes=10_000,
        max_in_flight_bytes=10_000,
    )
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        job = submit(client)["id"]
        drain_queue(settings)
        url = f"/v2/models/{job}/infer"
        content, headers = binary_request(np.zeros((3, 28, 28), np.uint8))
        many = client.post(url, content=content, headers=headers)
        assert many.status_code == 400
        assert many.json()["error"] == (
            "input 'images': 3 images; at most 2 per request (TRICKLAB_MAX_PREDICT_INSTANCES)"
        )
        content, headers = binary_request(np.zeros((2, 28, 28), np.uint8))
        busy = client.post(url, content=content, headers=headers)  # 2 images; 1 may wait
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "images are already waiting for this model" in busy.json()["error"]
        # Chunked, so that only the bytes read tell: refused by the route, in its shape.
        content, headers = binary_request(np.zeros((4, 28, 28), np.float32), "FP32")
        chunked = client.post(url, content=iter([content]), headers=headers)
        assert (
            chunked.status_code == 413 and "TRICKLAB_MAX_REQUEST_BYTES" in chunked.json()["error"]
        )
        # Announced by Content-Length: refused before routing, in the protocol's shape too.
        early = client.post(url, content=content, headers=headers)
        assert early.status_code == 413 and "TRICKLAB_MAX_REQUEST_BYTES" in early.json()["error"]

        unauthenticated = client.get("/v2", headers={"Authorization": ""})
        assert unauthenticated.status_code == 401
        assert unauthenticated.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer <token>" in unauthenticated.json()["error"]
        open_probes = [
            client.get(p, headers={"Authorization": ""})
            for p in ("/v2/health/live", "/v2/health/ready")
        ]
        assert [p.json() for p in open_probes] == [{"live": True}, {"ready": True}]

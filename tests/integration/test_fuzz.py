"""The OpenAPI document is the contract: Schemathesis generates requests from it, valid and
not, for every operation, and checks each answer: no server error, no status the document
does not list, no body that breaks its schema, invalid input refused, valid input accepted
(or refused with a documented reason). A fixed seed and a fixed number of examples an
operation: the same requests on every run, in bounded time."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import tempfile
import zlib
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient

from core.spec import JobSpec
from jobqueue.db import init_db, make_engine
from jobqueue.models import ADMIN
from jobqueue.store import JobStore
from service.app import create_app
from service.deps import ID_PATTERN
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY, write_dataset
from tests.support.inprocess import drain_queue, settings_in

pytestmark = pytest.mark.slow

# Built at import: the operations are the test's parameters.
ROOT = Path(tempfile.mkdtemp(prefix="tricklab-fuzz-"))
write_dataset(ROOT / "data" / "fashion-mnist")
SETTINGS = settings_in(ROOT, ROOT / "data")
# Through Schemathesis' own in-process client, which runs the app's lifespan.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(SETTINGS))
schema.config.seed = 20261206
schema.config.generation.update(max_examples=25, deterministic=True, database="none")
schema.config.suppress_health_check = [schemathesis.config.HealthCheck.all]
# Valid by the schema is not always valid: bytes can be no image (no schema says "a PNG"), a
# spec can pass a limit of the deployment (its dataset, TRICKLAB_MAX_*), an id can name no
# job, a job can be in the wrong state. Each of those answers is documented; what must never
# come back for valid input is another status.
schema.config.checks.positive_data_acceptance.expected_statuses = [
    "2XX",
    "400",
    "404",
    "409",
    "410",
    "422",
    "429",  # the admin's quota, once the studies before have queued their jobs
]


@pytest.fixture(scope="module")
def succeeded_job() -> str:
    """A trained job, so that predict, the model and its plots get past 404 and 409."""
    engine = make_engine(SETTINGS.database_url)
    init_db(engine)
    job, _ = JobStore(engine).enqueue(JobSpec.model_validate(TINY), ADMIN)
    drain_queue(SETTINGS)
    return job.id


def teardown_module() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)


@schema.parametrize()
def test_every_operation_keeps_the_contract(case: schemathesis.Case, succeeded_job: str) -> None:
    job_id = (case.path_parameters or {}).get("job_id")
    # Half of the cases with a well-formed job id (the same half every run) aim at the trained
    # job; never a DELETE's, which would take its model from the cases after it.
    if (
        isinstance(job_id, str)
        and re.fullmatch(ID_PATTERN, job_id)
        and case.method != "DELETE"
        and zlib.crc32(job_id.encode()) % 2
    ):
        case.path_parameters["job_id"] = succeeded_job
    case.call_and_validate(headers=ADMIN_HEADERS)


# JSON values that break parsers in their own ways: numbers beyond int()'s digits, beyond
# float, beyond 64 bits; what JSON has no number for; nesting too deep or never closed.
HOSTILE = [
    "9" * 5000,
    "-" + "9" * 5000,
    "0." + "1" * 5000,
    "1e400",
    "-1e400",
    "1e-400",
    str(2**64),
    str(-(2**63) - 1),
    str(2**1000),
    "NaN",
    "-Infinity",
    "true",
    "null",
    '"\\ud800"',
    '"\\u0000"',
    "{}",
    "[" * 900 + "]" * 900,
    "[" * 100_000,
]
PIXELS = json.dumps([[0] * 28] * 28)
TENSOR = '{"name": "images", "datatype": %s, "shape": %s, "data": %s, "parameters": %s}'
# Each a body with one hole for a hostile value: for /v1/…/predict, then for /v2/…/infer.
V1_BODIES = [
    '{"instances": [%s]}',
    '{"instances": [' + PIXELS[:-2] + ", %s]]]}",
    '{"instances": [{"b64": %s}]}',
    '{"instances": [' + PIXELS + '], "extra": %s}',
    '{"instances": %s}',
    "%s",
]
V2_BODIES = [
    '{"inputs": [' + TENSOR % ('"UINT8"', "[1, 28, 28]", PIXELS[:-2] + ", %s]]", "{}") + "]}",
    '{"inputs": [' + TENSOR % ('"FP32"', "[1, 28, 28]", PIXELS[:-2] + ", %s]]", "{}") + "]}",
    '{"inputs": [' + TENSOR % ('"UINT8"', "[%s, 28, 28]", PIXELS, "{}") + "]}",
    '{"inputs": [' + TENSOR % ("%s", "[1, 28, 28]", PIXELS, "{}") + "]}",
    '{"inputs": [' + TENSOR % ('"UINT8"', "[1, 28, 28]", "null", '{"binary_data_size": %s}') + "]}",
    '{"id": %s, "inputs": []}',
    '{"inputs": [], "parameters": {"binary_data_output": %s}}',
    "%s",
]


def test_hostile_json_gets_a_4xx_from_both_prediction_doors(succeeded_job: str) -> None:
    doors = [
        (f"/v1/jobs/{succeeded_job}/predict", V1_BODIES, "detail"),
        (f"/v2/models/{succeeded_job}/infer", V2_BODIES, "error"),
    ]
    with TestClient(create_app(SETTINGS), headers=ADMIN_HEADERS) as client:
        for path, bodies, error in doors:
            for body, value in itertools.product(bodies, HOSTILE):
                content = (body % value).encode("utf-8", "surrogatepass")
                response = client.post(
                    path, content=content, headers={"content-type": "application/json"}
                )
                assert 400 <= response.status_code < 500, (body, value[:20], response.text)
                assert response.json()[error], (body, value[:20])
        # The binary extension's length header, as long as a number can be written.
        for length in ("9" * 5000, "0" * 5000 + "3", str(2**64), "-1", "1e3", "0x10"):
            response = client.post(
                doors[1][0], content=b"{}", headers={"inference-header-content-length": length}
            )
            assert response.status_code == 400, (length[:20], response.text)
            assert "Inference-Header-Content-Length" in response.json()["error"]

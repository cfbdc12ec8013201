"""Classify images with a succeeded job's model, and describe that model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from core.images import SIDE, ImageError
from core.spec import DATASET_CLASSES
from core.store import JobStore
from service.batching import Overloaded
from service.deps import ArtifactsDep, JobDep, PredictorDep, get_job
from service.multipart import FormError, parse_form
from service.predictor import LoadedModel, ModelUnavailable, Predictor
from service.routes.jobs import model_file, require_succeeded
from service.schemas import (
    EncodedImage,
    JobResult,
    ModelInput,
    ModelMetadata,
    PredictInstances,
    PredictResponse,
)

router = APIRouter(prefix="/v1/jobs", tags=["predictions"])

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
_ACCEPTED = (
    "send image files as multipart/form-data 'file' parts, one image as the raw body with "
    f'Content-Type {", ".join(IMAGE_TYPES)}, or JSON {{"instances": [...]}} with '
    'Content-Type application/json, each instance a 28×28 pixel array or {"b64": ...}'
)
_BINARY = {"type": "string", "format": "binary"}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {
                        "type": "array",
                        "items": _BINARY,
                        "description": "PNG, JPEG, WebP or GIF images, any size or colour mode.",
                    }
                },
                "required": ["file"],
            }
        },
        **{kind: {"schema": _BINARY} for kind in IMAGE_TYPES},
        "application/json": {"schema": PredictInstances.model_json_schema()},
    },
}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
BATCH_HEADER = "Tricklab-Batch-Size"


@router.post(
    "/{job_id}/predict",
    response_model=PredictResponse,
    # job_id is read from the path in the function (see there), so it is declared here.
    openapi_extra={"requestBody": _REQUEST_BODY, "parameters": [_JOB_ID]},
    responses={
        200: {
            "headers": {
                BATCH_HEADER: {
                    "description": "Images in the forward pass this request shared with others.",
                    "schema": {"type": "integer"},
                }
            }
        },
        400: {"description": "Empty, corrupt, oversized or non-image file; too many files."},
        409: {"description": "The job has not succeeded."},
        413: {"description": "The body is over TRICKLAB_MAX_REQUEST_BYTES."},
        415: {"description": "Not multipart/form-data, an image type, or application/json."},
        422: {"description": "JSON instances of the wrong shape or range."},
        503: {
            "description": "Busy: retry after Retry-After seconds. Or the model file is unusable."
        },
    },
)
async def predict(request: Request) -> Response:
    """Classify images, answering in input order. Image files are converted to 28×28
    grayscale, light on dark, exactly like the training images (see the README); pixel
    arrays are used as they are."""
    # From app state and the path, not through Depends or a job_id parameter: resolving them
    # cost ~35 µs and ~5% of a request's time on this hot path, more than the forward pass.
    state = request.app.state
    job_id: str = request.path_params["job_id"]
    store, predictor, settings = state.store, state.predictor, state.settings
    model = predictor.loaded(job_id) or await _load(job_id, store, predictor)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        pixels = await _from_files(request, predictor, settings.max_predict_files)
    elif content_type in IMAGE_TYPES:
        pixels = (await _decode(predictor, await request.body(), "the body"))[np.newaxis]
    elif content_type == "application/json":
        pixels = await _from_json(await request.body(), predictor, settings.max_predict_instances)
    else:
        raise HTTPException(
            415, f"unsupported Content-Type {content_type or '(none)'!r}: {_ACCEPTED}"
        )
    try:
        result = await model.classify(pixels)
    except Overloaded as error:
        raise HTTPException(503, str(error), headers={"Retry-After": "1"}) from None
    # Built directly: this is the hot path, and the shape is PredictResponse's (tested).
    # orjson writes each float32 probability in its shortest exact form, in a twentieth of
    # the time json takes to write it as a float64 (~7 µs a prediction).
    body = {"job_id": job_id, "predictions": [vars(p) for p in result.predictions]}
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers={BATCH_HEADER: str(result.batch_size)},
    )


async def _load(job_id: str, store: JobStore, predictor: Predictor) -> LoadedModel:
    job = await run_in_threadpool(get_job, job_id, store)
    require_succeeded(job.id, job.status)
    try:
        return await predictor.load(job)
    except ModelUnavailable as error:
        raise HTTPException(503, str(error)) from None


@router.get(
    "/{job_id}/model/metadata",
    response_model=ModelMetadata,
    responses={409: {"description": "The job has not succeeded."}},
)
def model_metadata(job: JobDep, predictor: PredictorDep, artifacts: ArtifactsDep) -> ModelMetadata:
    """What the model expects and answers, how it was trained, and how well it did."""
    path = model_file(job, artifacts)
    loaded = predictor.loaded(job.id)
    return ModelMetadata(
        job_id=job.id,
        input=ModelInput(
            shape=[SIDE, SIDE],
            dtype="uint8",
            range=[0, 255],
            description="Grayscale, light object on a dark background; scaled to [0, 1] by "
            "the service. Image files are converted to this (see the README).",
        ),
        class_names=list(DATASET_CLASSES[job.spec["dataset"]]),
        spec=job.spec,
        result=JobResult.model_validate(job.result),
        best_epoch=job.best_epoch,
        stopped_epoch=job.stopped_epoch,
        model_sha256=job.model_sha256 or "",
        model_bytes=path.stat().st_size,
        trained_on=job.device,
        finished_at=job.finished_at,
        loaded=loaded is not None,
        runtime=loaded.runtime if loaded else None,
    )


async def _decode(predictor: Predictor, data: bytes, what: str) -> np.ndarray:
    try:
        return await predictor.decode(data)
    except ImageError as error:
        raise HTTPException(400, f"{what}: {error}") from None


async def _from_files(request: Request, predictor: Predictor, max_files: int) -> np.ndarray:
    body = await request.body()
    try:
        parts = parse_form(body, request.headers["content-type"], max_files)
    except FormError as error:
        raise HTTPException(400, str(error)) from None
    files = [part for part in parts if part.name == "file"]
    if not files:
        raise HTTPException(400, f"no 'file' part in the form: {_ACCEPTED}")
    images = []
    for number, part in enumerate(files, start=1):
        if part.filename is None:
            raise HTTPException(400, f"file {number}: 'file' must be a file upload, not text")
        what = f"file {number} ({part.filename!r})"
        images.append(await _decode(predictor, part.data, what))
    return np.stack(images)


async def _from_json(body: bytes, predictor: Predictor, max_instances: int) -> np.ndarray:
    try:
        document: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HTTPException(400, f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise HTTPException(400, "the body is not valid JSON: nested too deeply") from None
    instances = document.get("instances") if isinstance(document, dict) else None
    if isinstance(instances, list) and len(instances) > max_instances:
        raise HTTPException(400, f"{len(instances)} instances; at most {max_instances} per request")
    try:
        request = PredictInstances.model_validate(document)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
        ) from None
    images = []
    for number, instance in enumerate(request.instances):
        if isinstance(instance, EncodedImage):
            images.append(await _decode(predictor, instance.b64, f"instances[{number}].b64"))
        else:
            images.append(np.asarray(instance, dtype=np.float32))
    return np.stack(images)

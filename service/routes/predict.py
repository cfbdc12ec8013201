"""Classify images with a succeeded job's model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.images import ImageError, decode_image
from service.deps import JobDep, PredictorDep, SettingsDep
from service.predictor import ModelUnavailable
from service.routes.jobs import require_succeeded
from service.schemas import PredictInstances, PredictionRead, PredictResponse

router = APIRouter(prefix="/v1/jobs", tags=["predictions"])

_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "PNG, JPEG, WebP or GIF images, any size or colour mode.",
                    }
                },
                "required": ["file"],
            }
        },
        "application/json": {"schema": PredictInstances.model_json_schema()},
    },
}
_UNSUPPORTED = (
    "send images as multipart/form-data 'file' parts, or JSON {\"instances\": [28×28 pixel "
    "arrays]} with Content-Type application/json"
)


@router.post(
    "/{job_id}/predict",
    response_model=PredictResponse,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={
        400: {"description": "Empty, corrupt or non-image file; malformed JSON."},
        409: {"description": "The job has not succeeded."},
        415: {"description": "Neither multipart/form-data nor application/json."},
        422: {"description": "JSON instances of the wrong shape or range."},
    },
)
async def predict(
    request: Request, job: JobDep, predictor: PredictorDep, settings: SettingsDep
) -> PredictResponse:
    """Classify images, answering in input order. Uploaded pictures are converted to 28×28
    grayscale, light on dark, exactly like the training images (see the README)."""
    require_succeeded(job.id, job.status)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        pixels = await _from_files(request, settings.max_predict_files)
    elif content_type == "application/json":
        pixels = _from_json(await request.body(), settings.max_predict_instances)
    else:
        raise HTTPException(
            415, f"unsupported Content-Type {content_type or '(none)'!r}: {_UNSUPPORTED}"
        )
    try:
        predictions = await run_in_threadpool(predictor.predict, job, pixels)
    except ModelUnavailable as error:
        raise HTTPException(503, str(error)) from None
    return PredictResponse(
        job_id=job.id, predictions=[PredictionRead(**vars(p)) for p in predictions]
    )


async def _from_files(request: Request, max_files: int) -> np.ndarray:
    async with request.form(max_files=max_files, max_fields=max_files) as form:
        parts = form.getlist("file")
        if not parts:
            raise HTTPException(400, f"no 'file' part in the form: {_UNSUPPORTED}")
        images = []
        for number, part in enumerate(parts, start=1):
            if not isinstance(part, UploadFile):
                raise HTTPException(400, f"file {number}: 'file' must be a file upload, not text")
            data = await part.read()
            try:
                images.append(await run_in_threadpool(decode_image, data))
            except ImageError as error:
                raise HTTPException(400, f"file {number} ({part.filename!r}): {error}") from None
    return np.stack(images)


def _from_json(body: bytes, max_instances: int) -> np.ndarray:
    try:
        document: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HTTPException(400, f"the body is not valid JSON: {error}") from None
    instances = document.get("instances") if isinstance(document, dict) else None
    if isinstance(instances, list) and len(instances) > max_instances:
        raise HTTPException(400, f"{len(instances)} instances; at most {max_instances} per request")
    try:
        request = PredictInstances.model_validate(document)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
        ) from None
    return np.asarray(request.instances, dtype=np.float32)

"""Classify images with a succeeded job's model, and describe that model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from core.images import SIDE, ImageError, PixelBudget
from core.spec import DATASET_CLASSES
from service.batching import Overloaded
from service.deps import (
    ID_PATTERN,
    ArtifactsDep,
    JobDep,
    PredictorDep,
    model_file,
    no_unknown_query,
    served_model,
)
from service.errors import BODY, errors
from service.multipart import FormError, parse_form
from service.predictor import Predictor
from service.schemas import (
    BINARY,
    EncodedImage,
    JobResult,
    ModelInput,
    ModelMetadata,
    PredictInstances,
    PredictResponse,
)

router = APIRouter(prefix="/v1/jobs", tags=["predictions"])

# A raw body is sniffed, whatever its type says; application/octet-stream is the one the
# OpenAPI document names, which client generators understand.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "application/octet-stream")
_ACCEPTED = (
    "send image files as multipart/form-data 'file' parts, one image as the raw body with "
    f'Content-Type {", ".join(IMAGE_TYPES)}, or JSON {{"instances": [...]}} with '
    'Content-Type application/json, each instance a 28×28 pixel array or {"b64": ...}'
)
# The JSON body's models, for the document's components (service.app puts them there).
_JSON_BODY = PredictInstances.model_json_schema(ref_template="#/components/schemas/{model}")
COMPONENTS = {**_JSON_BODY.pop("$defs"), "PredictInstances": _JSON_BODY}
_REQUEST_BODY = {
    "required": True,
    "description": "Image files (PNG, JPEG, WebP or GIF, any size or colour mode) as a form, "
    "or one as the raw body (Content-Type application/octet-stream, or its own image type: "
    f"{', '.join(IMAGE_TYPES[:-1])}), or JSON instances.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": BINARY, "minItems": 1}},
                "required": ["file"],
            }
        },
        "application/octet-stream": {"schema": BINARY},
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictInstances"}},
    },
}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": ID_PATTERN},
    "description": "A job's id, 32 hex digits.",
}
BATCH_HEADER = "Tricklab-Batch-Size"


@router.post(
    "/{job_id}/predict",
    name="jobs-predict",
    response_model=PredictResponse,
    # job_id is read from the path in the function (see there), so it is declared here.
    openapi_extra={
        "requestBody": _REQUEST_BODY,
        "parameters": [_JOB_ID],
        "security": [{"HTTPBearer": []}],
    },
    responses={
        200: {
            "headers": {
                BATCH_HEADER: {
                    "description": "Images in the forward pass this request shared with others.",
                    "schema": {"type": "integer"},
                }
            }
        },
        **errors(404, 410, *BODY, conflict="The job has not succeeded."),
    },
)
async def predict(request: Request) -> Response:
    """Classify images, answering in input order. Image files are converted to 28×28
    grayscale, light on dark, exactly like the training images (see the README); pixel
    arrays are used as they are."""
    # The caller, the job and the services come from app state and the path, not through
    # Depends: resolving dependencies costs ~35 µs, ~5% of a request on this hot path.
    if request.query_params:  # as its router's other routes do, through a dependency
        await no_unknown_query(request)
    state = request.app.state
    caller = await state.gate.caller(request)
    job_id: str = request.path_params["job_id"]
    predictor, settings = state.predictor, state.settings
    model = await served_model(job_id, state.store, predictor, caller)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    budget = PixelBudget(settings.max_image_pixels, settings.max_request_pixels)
    if content_type == "multipart/form-data":
        pixels = await _from_files(request, predictor, budget, settings.max_predict_files)
    elif content_type in IMAGE_TYPES:
        image = await _decode(predictor, await request.body(), budget, "the body")
        pixels = image[np.newaxis]
    elif content_type == "application/json":
        pixels = await _from_json(
            await request.body(), predictor, budget, settings.max_predict_instances
        )
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


@router.get(
    "/{job_id}/model/metadata",
    name="jobs-model-metadata",
    response_model=ModelMetadata,
    dependencies=[Depends(no_unknown_query)],
    responses=errors(404, 410, 422, conflict="The job has not succeeded."),
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


async def _decode(predictor: Predictor, data: bytes, budget: PixelBudget, what: str) -> np.ndarray:
    try:
        return await predictor.decode(data, budget)
    except ImageError as error:
        raise HTTPException(400, f"{what}: {error}") from None


async def _from_files(
    request: Request, predictor: Predictor, budget: PixelBudget, max_files: int
) -> np.ndarray:
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
        images.append(await _decode(predictor, part.data, budget, what))
    return np.stack(images)


async def _from_json(
    body: bytes, predictor: Predictor, budget: PixelBudget, max_instances: int
) -> np.ndarray:
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
            images.append(
                await _decode(predictor, instance.b64, budget, f"instances[{number}].b64")
            )
        else:
            images.append(np.asarray(instance, dtype=np.float32))
    return np.stack(images)

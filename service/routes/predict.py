"""Classify images with a succeeded job's model, and describe that model."""

from __future__ import annotations

import numpy as np
import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError

from core.config import Settings
from core.images import SIDE
from service import bodies
from service.deps import (
    ID_PATTERN,
    ArtifactsDep,
    JobDep,
    ResolvedCaller,
    ServingDep,
    model_file,
    no_unknown_query,
)
from service.errors import BODY, errors, v1_error
from service.multipart import FormError, parse_form
from service.schemas import (
    BINARY,
    ModelInput,
    ModelMetadata,
    PredictInstances,
    PredictResponse,
)
from service.serving import Serving, ServingError, class_names
from service.state import app_state

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
async def predict(request: Request, caller: ResolvedCaller) -> Response:
    """Classify images, answering in input order. Image files are converted to 28×28
    grayscale, light on dark, exactly like the training images (see the README); pixel
    arrays are used as they are."""
    # The caller is the one dependency (async: called in place). The job and the services
    # come from the app's state and the path, not through Depends: resolving them as
    # dependencies costs ~35 µs, ~5% of a request on this hot path.
    if request.query_params:  # as its router's other routes do, through a dependency
        await no_unknown_query(request)
    state = app_state(request.app)
    job_id: str = request.path_params["job_id"]
    try:
        model = await state.serving.model(job_id, caller)
        pixels = await _pixels(request, state.serving, state.settings)
        result = await model.classify(pixels)
    except ServingError as error:
        raise v1_error(error) from None
    # Built directly: this is the hot path, and the shape is PredictResponse's (tested).
    # orjson writes each float32 probability in its shortest exact form, in a twentieth of
    # the time json takes to write it as a float64 (~7 µs a prediction).
    body = {"job_id": job_id, "predictions": [vars(p) for p in result.predictions]}
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers={BATCH_HEADER: str(result.batch_size)},
    )


async def _pixels(request: Request, serving: Serving, settings: Settings) -> np.ndarray:
    """The request's images as pixels, (n, 28, 28), whichever form its body takes."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _from_files(request, serving, settings.max_predict_files)
    if content_type in IMAGE_TYPES:
        budget = serving.budget()
        return (await serving.decode(await request.body(), budget, "the body"))[np.newaxis]
    if content_type == "application/json":
        return await _from_json(await request.body(), serving, settings.max_predict_instances)
    raise HTTPException(415, f"unsupported Content-Type {content_type or '(none)'!r}: {_ACCEPTED}")


@router.get(
    "/{job_id}/model/metadata",
    name="jobs-model-metadata",
    response_model=ModelMetadata,
    dependencies=[Depends(no_unknown_query)],
    responses=errors(404, 410, 422, conflict="The job has not succeeded."),
)
def model_metadata(job: JobDep, serving: ServingDep, artifacts: ArtifactsDep) -> ModelMetadata:
    """What the model expects and answers, how it was trained, and how well it did."""
    path = model_file(job, artifacts)
    loaded = serving.models.loaded(job.id)
    return ModelMetadata(
        job_id=job.id,
        input=ModelInput(
            shape=[SIDE, SIDE],
            dtype="uint8",
            range=[0, 255],
            description="Grayscale, light object on a dark background; scaled to [0, 1] by "
            "the service. Image files are converted to this (see the README).",
        ),
        class_names=list(class_names(job)),
        spec=job.spec,
        result=job.result,
        best_epoch=job.best_epoch,
        stopped_epoch=job.stopped_epoch,
        model_sha256=job.model_sha256 or "",
        model_bytes=path.stat().st_size,
        trained_on=job.device,
        finished_at=job.finished_at,
        loaded=loaded is not None,
        runtime=loaded.runtime if loaded else None,
    )


async def _from_files(request: Request, serving: Serving, max_files: int) -> np.ndarray:
    body = await request.body()
    try:
        parts = parse_form(body, request.headers["content-type"], max_files)
    except FormError as error:
        raise HTTPException(400, str(error)) from None
    files = [part for part in parts if part.name == "file"]
    if not files:
        raise HTTPException(400, f"no 'file' part in the form: {_ACCEPTED}")
    budget = serving.budget()
    images = []
    for number, part in enumerate(files, start=1):
        if part.filename is None:
            raise HTTPException(400, f"file {number}: 'file' must be a file upload, not text")
        what = f"file {number} ({part.filename!r})"
        images.append(await serving.decode(part.data, budget, what))
    return np.stack(images)


async def _from_json(body: bytes, serving: Serving, max_instances: int) -> np.ndarray:
    instances = await bodies.read_or_refuse(
        bodies.predict_instances,
        body,
        max_instances,
        json_bytes=len(body),
        invalid=RequestValidationError,
    )
    return await serving.instances(instances)

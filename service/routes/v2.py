"""The Open Inference Protocol (KServe V2, as Triton and MLServer speak it over REST), with the
binary tensor data extension: a succeeded job's model served to the clients of those servers
(tritonclient, KServe's InferenceRESTClient, …) unmodified. A model's name is its job's id; its
one version is "1".

Inference shares everything with POST /v1/jobs/{id}/predict through the serving layer
(service.serving): the model cache, micro-batching, the limits and the owner rules; the same
pixels get the same probabilities. Errors are the protocol's `{"error": "..."}` (ProtocolRoute
turns every HTTPException and validation error of these routes, its dependencies' 401s
included, into one); paths under /v2 that no route serves answer 404 or 405 in that shape too,
so this router must be included after any other that serves /v2 paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.images import SIDE
from jobqueue.models import Job
from service import bodies
from service.auth import Caller
from service.bodies import INPUT, INPUT_DATATYPES, LABELS, OUTPUTS, PROBABILITIES
from service.deps import (
    CallerDep,
    ResolvedCaller,
    ServingDep,
    StoreDep,
    no_unknown_query,
)
from service.errors import HTTP_METHODS, field_path, http_error
from service.schemas import (
    BINARY,
    InferenceError,
    InferenceLive,
    InferenceModelMetadata,
    InferenceModelReady,
    InferenceReady,
    InferenceRequest,
    InferenceResponse,
    InferenceServerMetadata,
    InferenceTensorMetadata,
)
from service.serving import MalformedId, ServedModel, Serving, ServingError, class_names
from service.state import app_state
from service.tensors import HEADER_LENGTH, Output, encode_response

VERSION = "1"  # a job trains one model: its only version
PLATFORM = "keras_keras"  # <project>_<format>: a Keras model in a .keras file
EXTENSIONS = ["binary_tensor_data"]
BATCH_HEADER = "Tricklab-Batch-Size"  # as /v1/jobs/{id}/predict answers


class ProtocolRoute(APIRoute):
    """A route that answers its errors as the protocol has them, `{"error": "..."}`, keeping
    the status and headers (a 401's WWW-Authenticate, a 503's Retry-After); a validation
    error, of a path or query parameter, is a 400."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except StarletteHTTPException as error:
                return protocol_error(error.status_code, str(error.detail), error.headers)
            except RequestValidationError as error:
                return protocol_error(400, _validation_message(error.errors()))

        return answer


def protocol_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status, headers=headers)


# The tags pydantic adds to the location of each failed member of a parameter's union.
_PARAMETER_KINDS = ("bool", "int", "float", "str")


def _validation_message(errors: Any) -> str:
    """One message per invalid field, naming it: `inputs[0].shape[1]: Input should be …`."""
    messages: dict[str, str] = {}
    for error in errors:
        location = tuple(error["loc"])
        if len(location) > 2 and location[-1] in _PARAMETER_KINDS:  # a parameter's value
            field = field_path(location[:-1])
            messages[field] = f"{field}: must be a string, a number or true or false"
        else:
            field = field_path(location)
            messages.setdefault(field, f"{field}: {error['msg']}")
    return "; ".join(messages.values())


router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=ProtocolRoute)

MEANINGS = {
    400: "The request breaks the protocol or asks what this model cannot do: the error names "
    "the tensor and what is wrong (shape, datatype, byte count, …); a query parameter the route "
    "does not take.",
    401: "No valid API token: send 'Authorization: Bearer <token>'.",
    404: "No model of that name that you can see (a model's name is its job's id; another "
    "user's jobs are 404 too).",
    408: "The body did not arrive within TRICKLAB_BODY_TIMEOUT_SECONDS.",
    409: "The job has not succeeded: its model does not exist yet, or never will.",
    410: "The job's files were deleted: its model is gone.",
    413: "The body is over TRICKLAB_MAX_REQUEST_BYTES (announced by Content-Length or not).",
    415: "A compressed body (Content-Encoding): send it uncompressed.",
    503: "Busy (retry after Retry-After seconds): too many request bytes, or images waiting "
    "for the model, at once; or the database or the model file is unavailable.",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": InferenceError, "description": MEANINGS[code]} for code in codes}


_MODEL_NAME = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The model's name: the id of the job that trained it, 32 hex digits.",
}


# ---- inference: the first route, tried first (after /v1 predict's) -------------------------

# The request body is read by the route itself (JSON, or JSON then binary tensors), so the
# document is given here, the JSON one inlined.


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return dict(resolve(schema))


_REQUEST_BODY = {
    "required": True,
    "description": "The inference request as JSON; or, with the binary tensor data extension, "
    "the JSON (its length in the Inference-Header-Content-Length header) followed by the raw "
    "bytes of the inputs that give parameters.binary_data_size instead of data.",
    "content": {
        "application/json": {"schema": _inlined(InferenceRequest.model_json_schema())},
        "application/octet-stream": {"schema": BINARY},
    },
}
_HEADER_LENGTH = {
    "name": HEADER_LENGTH,
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": 1},
    "description": "The length of the JSON at the start of the body, when binary tensor data "
    "follows it.",
}


@router.post(
    "/models/{job_id}/infer",
    name="v2-infer",
    response_model=InferenceResponse,
    openapi_extra={
        "requestBody": _REQUEST_BODY,
        "parameters": [_MODEL_NAME, _HEADER_LENGTH],
        "security": [{"HTTPBearer": []}],
    },
    responses={
        200: {
            "description": "The outputs asked for: as JSON, or JSON then the binary outputs' "
            "bytes (application/octet-stream, with Inference-Header-Content-Length).",
            "content": {"application/octet-stream": {"schema": BINARY}},
            "headers": {
                HEADER_LENGTH: {
                    "description": "The length of the JSON, when binary outputs follow it.",
                    "schema": {"type": "integer"},
                },
                BATCH_HEADER: {
                    "description": "Images in the forward pass this request shared with others.",
                    "schema": {"type": "integer"},
                },
            },
        },
        **_errors(400, 401, 404, 408, 409, 410, 413, 415, 503),
    },
)
async def infer(request: Request, caller: ResolvedCaller) -> Response:
    """Classify a batch of images: input `images`, [N, 28, 28], UINT8 or FP32 (0–255); outputs
    `probabilities` [N, classes] FP32 and `labels` [N] INT64, as JSON or binary as asked."""
    # As /v1/jobs/{id}/predict: the caller is the one dependency; the model and the settings
    # come from the app's state and the path, on this hot path.
    if request.query_params:
        await no_unknown_query(request)
    state = app_state(request.app)
    model = await _model(request, state.serving, caller)
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise HTTPException(
            415,
            f"Content-Encoding {request.headers['content-encoding']!r} is not supported: send "
            "the body uncompressed",
        )
    body = await request.body()
    json_length = request.headers.get(HEADER_LENGTH)
    wanted, pixels = await bodies.read_or_refuse(
        bodies.infer_request,
        body,
        json_length,
        state.settings.max_predict_instances,
        json_bytes=bodies.json_size(len(body), json_length),
        invalid=lambda errors: HTTPException(400, _validation_message(errors)),
    )
    try:
        result = await model.classify(pixels)
    except ServingError as error:
        raise _protocol_error(error) from None
    predictions = result.predictions
    arrays = {
        PROBABILITIES: np.stack([p.probabilities for p in predictions]),
        LABELS: np.fromiter((p.label for p in predictions), np.int64, len(predictions)),
    }
    document: dict[str, Any] = {
        "model_name": request.path_params["job_id"],
        "model_version": VERSION,
    }
    if wanted.id is not None:
        document["id"] = wanted.id
    content, header_length = encode_response(
        document,
        [Output(name, OUTPUTS[name], arrays[name], binary) for name, binary in wanted.outputs],
    )
    headers = {BATCH_HEADER: str(result.batch_size)}
    if header_length is None:
        return Response(content, media_type="application/json", headers=headers)
    # Content-Length ahead of Inference-Header-Content-Length, which ends with the same words:
    # a client that looks for the first "content-length:" in the head (bench/loadgen.py does)
    # finds the right one.
    headers = {"content-length": str(len(content)), **headers, HEADER_LENGTH: str(header_length)}
    return Response(content, media_type="application/octet-stream", headers=headers)


# ---- health and metadata -------------------------------------------------------------------


@router.get("/health/live", name="v2-live", response_model=InferenceLive)
async def live() -> InferenceLive:
    """The server is up; no token needed."""
    return InferenceLive(live=True)


@router.get(
    "/health/ready",
    name="v2-ready",
    response_model=InferenceReady,
    responses={
        503: {
            "model": InferenceError,
            "description": "The database does not answer, so no model can be looked up.",
        }
    },
)
def ready(store: StoreDep) -> InferenceReady:
    """The server can serve models: the database answers. No token needed."""
    try:
        store.ping()
    except Exception as error:
        # Open to anyone: the reason (a host, a user, a path) goes to the log alone.
        logging.getLogger("tricklab.service").warning("not ready: %s", error)
        raise HTTPException(503, "the database does not answer") from None
    return InferenceReady(ready=True)


@router.get(
    "",
    name="v2-server",
    response_model=InferenceServerMetadata,
    responses=_errors(400, 401),
)
async def server_metadata(request: Request, _: CallerDep) -> InferenceServerMetadata:
    """The server's name, version and protocol extensions."""
    await no_unknown_query(request)
    return InferenceServerMetadata(
        name="tricklab", version=request.app.version, extensions=EXTENSIONS
    )


@router.get(
    "/models/{job_id}",
    name="v2-model",
    response_model=InferenceModelMetadata,
    openapi_extra={"parameters": [_MODEL_NAME]},
    responses=_errors(400, 401, 404, 409, 410),
)
async def model_metadata(
    request: Request, caller: CallerDep, serving: ServingDep
) -> InferenceModelMetadata:
    """The model's inputs and outputs: a batch of 28×28 images in, ten class probabilities and
    the most likely class out, for each image."""
    await no_unknown_query(request)
    _check_version(request)
    job = await _job(request, serving, caller)
    classes = class_names(job)
    return InferenceModelMetadata(
        name=job.id,
        versions=[VERSION],
        platform=PLATFORM,
        inputs=[
            InferenceTensorMetadata(
                name=INPUT,
                datatype=INPUT_DATATYPES[0],
                shape=[-1, SIDE, SIDE],
                parameters={
                    "datatypes": ",".join(INPUT_DATATYPES),
                    "range": "0-255",
                    "content": "grayscale pixels, light object on a dark background, 0–255 as "
                    "in the dataset (FP32 on the same scale); the service scales them to [0, 1]",
                },
            )
        ],
        outputs=[
            InferenceTensorMetadata(
                name=PROBABILITIES,
                datatype=OUTPUTS[PROBABILITIES],
                shape=[-1, len(classes)],
                parameters={"class_names": ",".join(classes)},
            ),
            InferenceTensorMetadata(
                name=LABELS,
                datatype=OUTPUTS[LABELS],
                shape=[-1],
                parameters={"content": "the index of the most probable class"},
            ),
        ],
    )


@router.get(
    "/models/{job_id}/ready",
    name="v2-model-ready",
    response_model=InferenceModelReady,
    openapi_extra={"parameters": [_MODEL_NAME]},
    responses=_errors(400, 401, 404, 409, 410, 503),
)
async def model_ready(request: Request, caller: CallerDep, serving: ServingDep) -> Response:
    """200 once the job succeeded and its model is loaded (this loads it); otherwise an error
    status that says why: 409 while the job is queued or running or if it failed, 410 once its
    files were deleted, 503 if its stored model cannot be loaded."""
    await no_unknown_query(request)
    await _model(request, serving, caller)
    return JSONResponse({"name": request.path_params["job_id"], "ready": True})


# ---- the model named in the path -----------------------------------------------------------


def _check_version(request: Request) -> None:
    version = request.path_params.get("version")
    if version is not None and version != VERSION:
        raise HTTPException(
            404,
            f"model {request.path_params['job_id']!r} has no version {version!r}; "
            f"its one version is {VERSION!r}",
        )


def _protocol_error(error: ServingError) -> HTTPException:
    """The serving layer's refusal as this protocol answers it: a malformed name is a model
    that does not exist, not a broken path."""
    if isinstance(error, MalformedId):
        return HTTPException(
            404,
            f"no model named {error.job_id!r}: a model's name is its job's id, 32 hex digits",
        )
    return http_error(error)


async def _model(request: Request, serving: Serving, caller: Caller) -> ServedModel:
    """The model in the path, loaded: 404 for a malformed name, an unknown version or another
    owner's job; 409 before the job succeeded, 410 once its files were deleted; 503 if it
    cannot be loaded."""
    _check_version(request)
    try:
        return await serving.model(request.path_params["job_id"], caller)
    except ServingError as error:
        raise _protocol_error(error) from None


async def _job(request: Request, serving: Serving, caller: Caller) -> Job:
    """The job whose model the path names, the model not loaded: 404, 409 and 410 as for
    `_model`."""
    try:
        return await serving.job(request.path_params["job_id"], caller)
    except ServingError as error:
        raise _protocol_error(error) from None


# ---- the versioned forms, and every other path under /v2 -----------------------------------

# tritonclient asks /v2/models/{name}/versions/{version}/… only when given a version. These
# are the same routes, left out of the OpenAPI document, which names each route once.
router.add_api_route(
    "/models/{job_id}/versions/{version}",
    model_metadata,
    methods=["GET"],
    name="v2-model-version",
    include_in_schema=False,
)
router.add_api_route(
    "/models/{job_id}/versions/{version}/ready",
    model_ready,
    methods=["GET"],
    name="v2-model-version-ready",
    include_in_schema=False,
)
router.add_api_route(
    "/models/{job_id}/versions/{version}/infer",
    infer,
    methods=["POST"],
    name="v2-infer-version",
    include_in_schema=False,
)
router.add_api_route("/", server_metadata, methods=["GET"], include_in_schema=False)


@router.api_route(
    "/{path:path}", methods=list(HTTP_METHODS), name="v2-unknown", include_in_schema=False
)
async def unknown(request: Request, path: str) -> Response:
    """What no route serves (a model's configuration, statistics, the repository, shared
    memory, …): 404 in the protocol's shape; a method a path does not take, 405."""
    allowed = [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in router.routes  # /v2 paths are this router's alone
            if isinstance(route, APIRoute) and route.name != "v2-unknown"
        )
    ]
    if allowed:
        return protocol_error(
            405,
            f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}",
            {"Allow": ", ".join(allowed)},
        )
    return protocol_error(
        404,
        f"tricklab does not serve {request.method} {request.url.path}: it serves the Open "
        "Inference Protocol's health, metadata and inference routes (see docs/open-inference.md)",
    )

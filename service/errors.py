"""Error responses: validation errors that name the field, in the shape FastAPI clients
already parse; and the statuses each route declares in the OpenAPI document, with their
bodies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import Match

from core.cost import Refusal
from core.spec import TRICKS
from service.schemas import ID_PATTERN, INSTANCE_KINDS, Error, ValidationErrors
from service.serving import (
    BadInput,
    Gone,
    MalformedId,
    NotFound,
    NotReady,
    Overloaded,
    ServingError,
    Unavailable,
)

DISCRIMINATOR_TAGS = {*TRICKS, *INSTANCE_KINDS}

# What each error status means on any route; a route says what its 409 means.
MEANINGS = {
    400: "Malformed: the body is not JSON, the form is broken, or an image is unusable; the "
    "detail says which.",
    401: "No valid API token: send 'Authorization: Bearer <token>'. The detail says what is "
    "wrong with the one sent (unknown, expired, revoked, or its user disabled).",
    403: "Not allowed: only an admin may do this; or, without tokens (TRICKLAB_AUTH=off), the "
    "request did not come from this machine.",
    404: "Nothing with that id that you can see: another user's jobs and studies are 404 too.",
    408: "The body did not arrive within TRICKLAB_BODY_TIMEOUT_SECONDS.",
    410: "The job's files were deleted (DELETE /v1/jobs/{job_id}): its model is gone.",
    413: "The body is over its limit: TRICKLAB_MAX_JSON_BYTES for JSON, "
    "TRICKLAB_MAX_REQUEST_BYTES for images.",
    415: "The body's Content-Type is not one this route takes; the detail lists them.",
    429: "Over your quota of active (queued and running) jobs; the detail names the quota "
    "and your count.",
    422: "Invalid: each error names its field, what is wrong and what is allowed, or the limit "
    "passed and the setting that raises it.",
    503: "Busy (retry after Retry-After seconds): too many request bytes, or images waiting "
    "for a model, at once; or the database or the model file is unavailable.",
}
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# What a route that takes a JSON body can answer about it.
BODY = (400, 408, 413, 415, 422, 503)


def errors(*codes: int, conflict: str | None = None) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of these error statuses, each with its body's schema
    (`conflict`: what a 409 means on this route)."""
    meanings = {**MEANINGS, 409: conflict}
    return {
        code: {
            "model": ValidationErrors if code == 422 else Error,
            "description": meanings[code],
        }
        for code in sorted(set(codes) | ({409} if conflict else set()))
    }


def field_path(loc: Sequence[Any]) -> str:
    """('body', 'tricks', 0, 'dropout', 'rate') → 'tricks[0].rate'."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    path = ""
    for index, part in enumerate(parts):
        if isinstance(part, int):
            path += f"[{part}]"
        elif index and isinstance(parts[index - 1], int) and part in DISCRIMINATOR_TAGS:
            continue  # the tag pydantic adds for a trick object or a predict instance
        else:
            path += f".{part}" if path else str(part)
    return path or (str(loc[0]) if loc else "request")


def describe(error: dict[str, Any]) -> dict[str, Any]:
    field = field_path(error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing" and field == "body":
        message = "a JSON body is required"
    described = {
        "loc": list(error["loc"]),
        "field": field,
        "msg": f"{field}: {message}",
        "type": error["type"],
    }
    context = {k: v for k, v in error.get("ctx", {}).items() if isinstance(v, int | float | str)}
    if context:
        described["ctx"] = context
    return described


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each invalid field; 400 when the body is not JSON at all, 415 when it was
    not sent as JSON."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    for error in errors:
        if tuple(error["loc"]) == ("body",) and isinstance(error.get("input"), bytes):
            # FastAPI hands over the raw bytes of a body whose Content-Type is not JSON.
            sent = request.headers.get("content-type")
            return JSONResponse(
                status_code=415,
                content={
                    "detail": "the body must be JSON, sent with Content-Type: application/json "
                    f"(it came {f'as {sent!r}' if sent else 'without a Content-Type'})"
                },
            )
        if error["type"] == "json_invalid":
            reason = error.get("ctx", {}).get("error", "malformed")
            position = error["loc"][-1]
            return JSONResponse(
                status_code=400,
                content={
                    "detail": f"the body is not valid JSON: {reason} (at character {position})"
                },
            )
    return JSONResponse(status_code=422, content={"detail": [describe(e) for e in errors]})


def refused(
    refusals: Sequence[Refusal], within: tuple[str | int, ...] = ()
) -> RequestValidationError:
    """A 422 naming each refusal's field, like a validation error (`within`: where in the
    body the spec sits, e.g. ("base",) for a study's base spec)."""
    return RequestValidationError(
        [
            {
                "type": "over_limit" if "limit" in refusal.context else "unavailable",
                "loc": ("body", *within, refusal.field),
                "msg": refusal.message,
                "input": None,
                "ctx": refusal.context,
            }
            for refusal in refusals
        ]
    )


def http_error(error: ServingError) -> HTTPException:
    """The serving layer's refusal as every HTTP door answers it: its status, its message (the
    door writes it in its own body's shape) and, when the model is busy, when to retry."""
    match error:
        case NotFound():
            return HTTPException(404, str(error))
        case NotReady():
            return HTTPException(409, str(error))
        case Gone():
            return HTTPException(410, str(error))
        case BadInput():
            return HTTPException(400, str(error))
        case Overloaded():
            return HTTPException(503, str(error), headers={"Retry-After": str(error.retry_after)})
        case Unavailable():
            return HTTPException(503, str(error))
    raise TypeError(f"no HTTP answer for {error!r}")


def v1_error(error: ServingError) -> HTTPException | RequestValidationError:
    """As http_error, for /v1 and the dashboard: there a malformed job id breaks the path's
    pattern, a 422 as for any other route."""
    if isinstance(error, MalformedId):
        return RequestValidationError(
            [
                {
                    "type": "string_pattern_mismatch",
                    "loc": ("path", "job_id"),
                    "msg": f"String should match pattern '{ID_PATTERN}'",
                    "input": error.job_id,
                }
            ]
        )
    return http_error(error)


async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 with every method the path takes in Allow: Starlette would name only those of the
    first route that matches the path, and a path such as /v1/jobs has several."""
    methods = ", ".join(
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    )
    return JSONResponse(
        {"detail": f"{request.method} is not allowed on {request.url.path}; allowed: {methods}"},
        status_code=405,
        headers={"Allow": methods},
    )

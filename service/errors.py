"""Validation errors that name the field, in the shape FastAPI clients already parse."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from core.spec import TRICKS
from service.schemas import INSTANCE_KINDS

DISCRIMINATOR_TAGS = {*TRICKS, *INSTANCE_KINDS}


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


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 naming each invalid field; 400 when the body is not JSON at all."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    for error in errors:
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

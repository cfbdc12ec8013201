"""The trick catalogue and health probes."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from core.spec import trick_catalogue
from service.deps import StoreDep, get_caller, no_unknown_query
from service.errors import errors
from service.schemas import Health, TrickCatalogue

router = APIRouter(dependencies=[Depends(no_unknown_query)])


@router.get(
    "/v1/tricks",
    name="tricks-list",
    response_model=TrickCatalogue,
    tags=["tricks"],
    dependencies=[Depends(get_caller)],
    responses=errors(401),
)
def list_tricks() -> TrickCatalogue:
    """Every trick a spec can name: what it does, its parameters, defaults and limits."""
    return TrickCatalogue.model_validate({"tricks": trick_catalogue()})


@router.get(
    "/healthz",
    name="healthz",
    tags=["health"],
    response_model=Health,
    response_model_exclude_none=True,
)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get(
    "/readyz",
    name="readyz",
    tags=["health"],
    response_model=Health,
    response_model_exclude_none=True,
    responses={503: {"description": "The database does not answer.", "model": Health}},
)
def readyz(store: StoreDep) -> Health | JSONResponse:
    """The database answers."""
    try:
        store.ping()
    except Exception as error:
        unready = Health(status="unavailable", detail=str(error))
        return JSONResponse(unready.model_dump(), status_code=503)
    return Health(status="ready")

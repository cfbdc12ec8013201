"""The trick catalogue and health probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from core.spec import trick_catalogue
from service.deps import StoreDep
from service.schemas import TrickCatalogue

router = APIRouter()


@router.get("/v1/tricks", response_model=TrickCatalogue, tags=["tricks"])
def list_tricks() -> TrickCatalogue:
    """Every trick a spec can name: what it does, its parameters, defaults and limits."""
    return TrickCatalogue.model_validate({"tricks": trick_catalogue()})


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], responses={503: {"description": "Database unreachable."}})
def readyz(store: StoreDep) -> JSONResponse:
    """The database answers."""
    try:
        store.ping()
    except Exception as error:
        return JSONResponse({"status": "unavailable", "detail": str(error)}, status_code=503)
    return JSONResponse({"status": "ready"})

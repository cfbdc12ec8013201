"""The trick catalogue, health probes and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from core.spec import trick_catalogue
from service.deps import MetricsDep, StoreDep, get_caller, no_unknown_query
from service.errors import errors
from service.schemas import Health, TrickCatalogue

log = logging.getLogger("tricklab.service")
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
)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get(
    "/readyz",
    name="readyz",
    tags=["health"],
    response_model=Health,
    responses={
        503: {
            "description": "The database does not answer (why: in the API's log).",
            "model": Health,
        }
    },
)
def readyz(store: StoreDep) -> Health | JSONResponse:
    """The database answers. Open to anyone, so a failure says no more than that: its reason
    (a host name, a user, a path) goes to the log alone."""
    try:
        store.ping()
    except Exception as error:
        log.warning("not ready: the database does not answer: %s", error)
        return JSONResponse(Health(status="unavailable").model_dump(), status_code=503)
    return Health(status="ready")


@router.get(
    "/metrics",
    name="metrics",
    tags=["health"],
    response_class=Response,
    dependencies=[Depends(get_caller)],
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
        **errors(401),
    },
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics of this API process: requests by route and status, latencies,
    prediction batches, the model cache, jobs by status, open event streams. They name no job
    or user, so any user's token may scrape them, and so may the token of
    TRICKLAB_METRICS_TOKEN_FILE, which reads nothing else (see docs/operations.md)."""
    body = await run_in_threadpool(generate_latest, metrics.registry)  # jobs by status: a query
    return Response(body, media_type=CONTENT_TYPE_LATEST)

"""The FastAPI application: `uvicorn service.app:create_app --factory`."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from threadpoolctl import threadpool_limits

from core.config import Settings, get_settings
from jobqueue import retention
from jobqueue.sweeper import Periodic, Sweeper
from service.admission import Admission, Shares
from service.auth import LoopbackOnly
from service.errors import errors, method_not_allowed, validation_error
from service.headers import SecurityHeaders, with_inline_scripts
from service.limits import BodyLimits
from service.metrics import ApiMetrics, Measured
from service.routes import (
    dashboard,
    events,
    jobs,
    meta,
    plots,
    predict,
    searches,
    studies,
    users,
    v2,
)
from service.state import AppState, app_state, build_state, set_state

log = logging.getLogger("tricklab.service")
STATIC = Path(__file__).parent / "static"  # assets the pages need, vendored: no CDN
DESCRIPTION = """
Train small image classifiers with chosen regularisation and optimisation tricks, follow
their metrics epoch by epoch, and classify images with the trained models.

Every route but the health probes and these docs needs an API token: `Authorization: Bearer
<token>` (the API names the admin's token file when it starts). Submit a job spec to
`POST /v1/jobs`, poll `GET /v1/jobs/{id}/metrics?since_epoch=N`, and once
the job has succeeded post images to `POST /v1/jobs/{id}/predict`. `GET /v1/tricks` lists the
tricks. Errors are `{"detail": ...}` with a message naming what to fix.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Built before the state: the middleware counts every answer, the lifespan's included.
    metrics = ApiMetrics(
        job_counts=lambda: app_state(app).counts.by_status(),
        streams=lambda: app_state(app).watch.streams,
    )
    app = FastAPI(
        title="tricklab",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lambda app: lifespan(app, settings, metrics),
        # One schema per model for requests and responses alike: a JobSpec sent and the
        # JobSpec read back are one type in a generated client.
        separate_input_output_schemas=False,
        # Short, stable operation ids ("jobs-submit"): a client's method names.
        generate_unique_id_function=lambda route: route.name,
        docs_url=None,  # served by add_docs, from the package: the page must work offline
        redoc_url=None,
    )
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_request_bytes,
        max_json_bytes=settings.max_json_bytes,
        max_in_flight=settings.max_in_flight_bytes,
        body_timeout=settings.body_timeout_seconds,
    )
    # Identified, and held to their caller's share, before any body is read.
    app.add_middleware(
        Admission,
        limits=Shares(
            requests=settings.max_concurrent_requests,
            requests_per_caller=settings.max_requests_per_user,
            streams_per_caller=settings.max_streams_per_user,
        ),
    )
    if settings.auth == "off":
        app.add_middleware(LoopbackOnly)
    app.add_middleware(Measured, metrics=metrics)  # outermost: every answer counts
    # On every answer, the middlewares' refusals included; HSTS on https answers only.
    app.add_middleware(SecurityHeaders, hsts_seconds=settings.hsts_seconds)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(405, method_not_allowed)
    # Routes are matched in order, about 1.7 µs a route: the two prediction routes first.
    app.include_router(predict.router, responses=errors(401))
    app.include_router(v2.router)  # the Open Inference Protocol: its own 401s and {"error"}
    for module in (jobs, studies, searches, plots, events, users):
        app.include_router(module.router, responses=errors(401))
    app.include_router(meta.router)  # the health probes, open to all; the tricks need a token
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(dashboard.router)  # the pages at /, signed in by a session cookie
    app.mount("/dashboard/static", StaticFiles(directory=dashboard.STATIC), name="dashboard")
    add_docs(app)
    add_predict_components(app)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings, metrics: ApiMetrics) -> AsyncIterator[None]:
    """The app's life: its state built, the sweeper and the retention running, until it
    stops."""
    state = build_state(settings, metrics)
    set_state(app, state)
    # The API sweeps too, so a lost job shows as queued even while no worker runs.
    sweeper = Sweeper(state.store, settings.sweep_seconds)
    sweeper.start()
    # Workers advance a search as its jobs settle; this catches up after restarts and
    # lost workers, and moves searches along while no worker runs.
    searching = Periodic("searches", settings.sweep_seconds, state.progress.advance_all)
    searching.start()
    retaining = Periodic("retention", settings.retention_seconds, lambda: retain(state))
    if settings.retain_metrics_days or settings.retain_artifacts_days:
        retaining.start()
    # TensorFlow and Keras leave ~300,000 long-lived objects that every full garbage
    # collection would walk (~0.14 s, a pause in the middle of requests); set them aside.
    gc.freeze()
    # Prediction matmuls are tiny: a second BLAS thread only spins on a core that other
    # requests, or other processes, need (measured: twice the CPU time per request).
    threadpool_limits(1, user_api="blas")
    yield
    await state.watch.stop()
    sweeper.stop()
    searching.stop()
    retaining.stop()
    state.store.engine.dispose()


def add_docs(app: FastAPI) -> None:
    """The Swagger UI at /docs, from the assets under /static: no CDN."""

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="tricklab API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )
        return with_inline_scripts(page)  # its one inline script, which starts the UI


def add_predict_components(app: FastAPI) -> None:
    """Put the models that predict reads itself (no parameter declares them) into the
    document's components."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # built once
            default_openapi()["components"]["schemas"].update(predict.COMPONENTS)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def retain(state: AppState) -> None:
    """Apply the retention policy, and stop serving the models it deleted."""
    settings = state.settings
    removed = retention.apply(
        state.store, state.artifacts, settings.retain_metrics_days, settings.retain_artifacts_days
    )
    for job_id in removed.file_jobs:
        state.serving.models.forget(job_id)
    if removed.metrics_jobs or removed.file_jobs:
        log.info("retention: %s", removed)

"""The FastAPI application: `uvicorn service.app:create_app --factory`."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from threadpoolctl import threadpool_limits

from core.artifacts import ArtifactStore
from core.config import Settings, get_settings
from core.db import init_db, make_engine
from core.store import JobStore
from core.sweeper import Sweeper
from service.errors import validation_error
from service.limits import BodyLimits
from service.predictor import BatchPolicy, Predictor
from service.routes import jobs, meta, plots, predict, studies

DESCRIPTION = """
Train small image classifiers with chosen regularisation and optimisation tricks, follow
their metrics epoch by epoch, and classify images with the trained models.

Submit a job spec to `POST /v1/jobs`, poll `GET /v1/jobs/{id}/metrics?since_epoch=N`, and once
the job has succeeded post images to `POST /v1/jobs/{id}/predict`. `GET /v1/tricks` lists the
tricks. Errors are `{"detail": ...}` with a message naming what to fix.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url, settings.busy_timeout_ms, "tricklab-api")
        init_db(engine)
        store = JobStore(engine, settings.lease_seconds, settings.max_attempts)
        artifacts = ArtifactStore(settings.artifacts_dir)
        app.state.settings = settings
        app.state.store = store
        app.state.artifacts = artifacts
        app.state.predictor = Predictor(
            artifacts,
            settings.model_cache_size,
            BatchPolicy(
                settings.predict_batch_window_ms / 1000,
                settings.predict_max_batch,
                settings.predict_max_queued,
            ),
        )
        # The API sweeps too, so a lost job shows as queued even while no worker runs.
        sweeper = Sweeper(store, settings.sweep_seconds)
        sweeper.start()
        # TensorFlow and Keras leave ~300,000 long-lived objects that every full garbage
        # collection would walk (~0.14 s, a pause in the middle of requests); set them aside.
        gc.freeze()
        # Prediction matmuls are tiny: a second BLAS thread only spins on a core that other
        # requests, or other processes, need (measured: twice the CPU time per request).
        threadpool_limits(1, user_api="blas")
        yield
        sweeper.stop()
        engine.dispose()

    app = FastAPI(title="tricklab", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_request_bytes,
        max_in_flight=settings.max_in_flight_bytes,
    )
    app.add_exception_handler(RequestValidationError, validation_error)
    # Routes are matched in order: the hot predict route first saves matching ~30 others.
    for module in (predict, jobs, studies, plots, meta):
        app.include_router(module.router)
    return app

"""The application's state: what the lifespan builds once and every request reads, typed, and
the one accessor that reads it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.applications import Starlette

from core.config import Settings
from jobqueue.accounts import Accounts
from jobqueue.artifacts import ArtifactStore
from jobqueue.counts import JobCounts
from jobqueue.db import init_db, make_engine
from jobqueue.reads import Reads
from jobqueue.searches import Searches
from jobqueue.store import JobStore
from jobqueue.studies import Studies
from search.progress import Progress
from service.auth import Gate, admin_token
from service.events import Watch
from service.metrics import ApiMetrics
from service.serving import BatchPolicy, PixelLimits, Predictor, Serving

log = logging.getLogger("tricklab.service")


@dataclass
class AppState:
    settings: Settings
    store: JobStore  # the job lifecycle
    studies: Studies
    progress: Progress  # searches, advanced with this deployment's limits and quotas
    reads: Reads  # behind lists, reports and event streams
    counts: JobCounts
    accounts: Accounts
    gate: Gate  # who is asking
    artifacts: ArtifactStore
    serving: Serving  # every door that answers predictions asks it
    watch: Watch  # what the open event streams follow
    metrics: ApiMetrics


def app_state(app: Starlette) -> AppState:
    """The state `set_state` gave the app when it started."""
    state: AppState = app.state.tricklab
    return state


def set_state(app: Starlette, state: AppState) -> None:
    app.state.tricklab = state


def build_state(settings: Settings, metrics: ApiMetrics) -> AppState:
    """Open the database (creating or upgrading its tables) and build what requests use."""
    engine = make_engine(settings.database_url, settings.busy_timeout_ms, "tricklab-api")
    init_db(engine)
    store = JobStore(engine, settings.lease_seconds, settings.max_attempts)
    artifacts = ArtifactStore(settings.artifacts_dir)
    accounts = Accounts(engine)
    reads = Reads(engine)
    if settings.auth == "on":
        admin_token(settings, accounts)
    else:
        log.warning(
            "authentication is off: whoever reaches %s:%s acts as the admin",
            settings.host,
            settings.port,
        )
    batches = BatchPolicy(
        settings.predict_batch_window_ms / 1000,
        settings.predict_max_batch,
        settings.predict_max_queued,
    )
    return AppState(
        settings=settings,
        store=store,
        studies=Studies(store),
        progress=Progress(Searches(store), settings),
        reads=reads,
        counts=reads.counts,
        accounts=accounts,
        gate=Gate(accounts, settings),
        artifacts=artifacts,
        serving=Serving(
            store,
            Predictor(artifacts, settings.model_cache_size, batches, metrics),
            PixelLimits(settings.max_image_pixels, settings.max_request_pixels),
        ),
        watch=Watch(reads, settings.events_poll_seconds),
        metrics=metrics,
    )

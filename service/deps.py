"""Request-scoped dependencies: the store, the predictor, settings, and the job or study in
the path.

The app-state getters are `async` only so that FastAPI calls them in place: it would run a
plain `def` dependency in a worker thread, a hop that costs more than the whole lookup."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from core.artifacts import ArtifactStore
from core.config import Settings
from core.models import Job, Study
from core.store import JobStore
from service.predictor import Predictor


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor


async def get_artifacts(request: Request) -> ArtifactStore:
    return request.app.state.artifacts


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


StoreDep = Annotated[JobStore, Depends(get_store)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_job(job_id: str, store: StoreDep) -> Job:
    job = store.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job with id {job_id!r}")
    return job


JobDep = Annotated[Job, Depends(get_job)]


def get_study(study_id: str, store: StoreDep) -> Study:
    study = store.get_study(study_id)
    if study is None:
        raise HTTPException(404, no_study(study_id))
    return study


def no_study(study_id: str) -> str:
    return f"no study with id {study_id!r}"


StudyDep = Annotated[Study, Depends(get_study)]

"""Submit, list, inspect, follow and cancel jobs; download their models."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response
from fastapi.responses import FileResponse

from core.artifacts import ArtifactStore
from core.models import Job
from core.spec import JobSpec
from core.states import JobStatus
from core.store import IdempotencyConflict
from service.deps import ArtifactsDep, JobDep, StoreDep
from service.schemas import JobList, JobRead, MetricsRead

log = logging.getLogger("tricklab.service")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=201,
    response_model=JobRead,
    responses={
        409: {"description": "The Idempotency-Key was used for a different spec."},
        422: {"description": "Invalid spec; each error names its field."},
    },
)
def submit_job(
    spec: JobSpec,
    store: StoreDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="Makes the submission safe to retry: the same key and spec return "
            "the job created the first time (with Idempotent-Replayed: true).",
        ),
    ] = None,
) -> JobRead:
    """Queue a training job. The job is durable once this answers."""
    try:
        job, created = store.enqueue(spec, idempotency_key)
    except IdempotencyConflict as conflict:
        raise HTTPException(409, str(conflict)) from None
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if created:
        log.info("job=%s submitted spec=%s", job.id, job.spec)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return JobRead.of(job)


@router.get("", response_model=JobList)
def list_jobs(
    store: StoreDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobList:
    """Jobs, newest first, optionally only those with one status."""
    jobs, total = store.list_jobs(status, limit, offset)
    return JobList(jobs=[JobRead.of(j) for j in jobs], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobRead, responses={404: {"description": "No such job."}})
def get_job(job: JobDep) -> JobRead:
    return JobRead.of(job)


@router.get("/{job_id}/metrics", response_model=MetricsRead)
def get_metrics(
    job: JobDep, store: StoreDep, since_epoch: Annotated[int, Query(ge=0)] = 0
) -> MetricsRead:
    """Per-epoch history after `since_epoch` (poll with the last epoch you have)."""
    return MetricsRead.of(job, list(store.metrics(job.id, since_epoch)))


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    responses={409: {"description": "The job already succeeded or failed."}},
)
def cancel_job(job: JobDep, store: StoreDep) -> JobRead:
    """Cancel a queued or running job (a running one stops within an epoch). Cancelling a
    cancelled job again is harmless."""
    current = store.cancel(job.id) or job
    if current.status != JobStatus.CANCELLED:
        raise HTTPException(
            409,
            f"job {job.id} already {current.status}; only queued or running jobs can be cancelled",
        )
    log.info("job=%s cancelled", job.id)
    return JobRead.of(current)


@router.get(
    "/{job_id}/model",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The .keras file."},
        409: {"description": "The job has not succeeded."},
    },
)
def download_model(job: JobDep, artifacts: ArtifactsDep) -> FileResponse:
    """The trained model as a Keras 3 `.keras` file (`keras.saving.load_model`)."""
    return FileResponse(
        model_file(job, artifacts),
        media_type="application/octet-stream",
        filename=f"tricklab-{job.id}.keras",
    )


def model_file(job: Job, artifacts: ArtifactStore) -> Path:
    """A succeeded job's model file; 409 before it succeeded, 404 if the file is gone."""
    require_succeeded(job.id, job.status)
    path = artifacts.path(job.model_path or "")
    if not path.is_file():
        raise HTTPException(404, f"the model file of job {job.id} is missing from the store")
    return path


def require_succeeded(job_id: str, status: JobStatus) -> None:
    if status != JobStatus.SUCCEEDED:
        raise HTTPException(
            409, f"job {job_id} is {status}: its model exists only once it has succeeded"
        )

"""Submit, list, inspect, follow and cancel jobs; download their models."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse

from core.config import Settings
from core.cost import refusals
from core.spec import JobSpec, TrickName
from jobqueue.accounts import Quota, QuotaExceeded
from jobqueue.models import Job
from jobqueue.states import JobStatus
from jobqueue.store import IdempotencyConflict, JobStore
from service.auth import Caller
from service.deps import (
    MAX_INT,
    ArtifactsDep,
    CallerDep,
    JobDep,
    Limit,
    ListedOwner,
    Offset,
    PagePosition,
    ReadsDep,
    ServingDep,
    SettingsDep,
    StoreDep,
    get_caller,
    model_file,
    next_link,
    no_unknown_query,
)
from service.errors import BODY, errors, refused
from service.schemas import (
    BINARY,
    IdPrefix,
    JobBatch,
    JobBatchRead,
    JobList,
    JobRead,
    MetricsRead,
)

log = logging.getLogger("tricklab.service")
router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(get_caller), Depends(no_unknown_query)]
)


IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        description="Makes the submission safe to retry: the same key and body return what "
        "was created the first time (with Idempotent-Replayed: true). Each user's keys are "
        "their own.",
    ),
]


@router.post(
    "",
    name="jobs-submit",
    status_code=201,
    response_model=JobRead,
    responses=errors(*BODY, 429, conflict="The Idempotency-Key was used for a different spec."),
)
def submit_job(
    spec: JobSpec,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Queue a training job. The job is durable once this answers."""
    (job,) = queue(store, settings, caller, response, [spec], idempotency_key, batch=False)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobRead.of(job, caller.admin)


@router.post(
    ":batch",
    name="jobs-submit-batch",
    status_code=201,
    response_model=JobBatchRead,
    responses=errors(*BODY, 429, conflict="The Idempotency-Key was used for other specs."),
)
def submit_jobs(
    batch: JobBatch,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobBatchRead:
    """Queue several training jobs at once, all or none: one transaction, so one commit
    (and one fsync) for the lot. A spec over a limit is a 422 naming `jobs[i]`; more than
    the quota allows is a 429 and queues nothing. A key covers the whole batch: the same
    specs in the same order."""
    jobs = queue(store, settings, caller, response, batch.jobs, idempotency_key, batch=True)
    return JobBatchRead(jobs=[JobRead.of(job, caller.admin) for job in jobs])


def queue(
    store: JobStore,
    settings: Settings,
    caller: Caller,
    response: Response,
    specs: list[JobSpec],
    idempotency_key: str | None,
    batch: bool,
) -> list[Job]:
    """Check the specs against the limits and queue them under the caller's quota."""
    found = [
        refused(refusals(spec, settings), ("jobs", index) if batch else ()).errors()
        for index, spec in enumerate(specs)
    ]
    if any(found):
        raise RequestValidationError([error for errors_ in found for error in errors_])
    quota = Quota(caller.quota_active_jobs or settings.quota_active_jobs).admit
    try:
        if batch:
            jobs, created = store.enqueue_many(specs, caller.name, idempotency_key, quota)
        else:
            job, created = store.enqueue(specs[0], caller.name, idempotency_key, quota)
            jobs = [job]
    except IdempotencyConflict as conflict:
        raise HTTPException(409, str(conflict)) from None
    except QuotaExceeded as error:
        raise HTTPException(429, str(error)) from None
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    for job in jobs if created else []:
        log.info("job=%s submitted owner=%s spec=%s", job.id, caller.name, job.spec)
    return jobs


@router.get("", name="jobs-list", response_model=JobList, responses=errors(403, 422))
def list_jobs(
    request: Request,
    reads: ReadsDep,
    caller: CallerDep,
    owner: ListedOwner,
    after: PagePosition,
    status: JobStatus | None = None,
    trick: Annotated[TrickName | None, Query(description="Only the jobs that use it.")] = None,
    id_prefix: IdPrefix = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> JobList:
    """Your jobs, newest first, optionally only those with one status, using one trick, or
    whose id starts with `id_prefix` (what a short id names). An admin sees everyone's, or one
    user's with `owner`. Page on with the `next` link: it costs the same however deep."""
    jobs, total = reads.list_jobs(status, limit + 1, offset, owner, trick, after, id_prefix)
    return JobList(
        jobs=[JobRead.of(j, caller.admin) for j in jobs[:limit]],
        total=total,
        limit=limit,
        offset=offset,
        next=next_link(request, jobs, limit),
    )


@router.get("/{job_id}", name="jobs-get", response_model=JobRead, responses=errors(404, 422))
def get_job(job: JobDep, caller: CallerDep) -> JobRead:
    """The job: status, resolved spec, attempts and failures, progress, result or error."""
    return JobRead.of(job, caller.admin)


@router.get(
    "/{job_id}/metrics", name="jobs-metrics", response_model=MetricsRead, responses=errors(404, 422)
)
def get_metrics(
    job: JobDep,
    reads: ReadsDep,
    since_epoch: Annotated[
        int, Query(ge=0, le=MAX_INT, description="The last epoch you have.")
    ] = 0,
) -> MetricsRead:
    """Per-epoch history after `since_epoch` (poll with the last epoch you have)."""
    return MetricsRead.of(job, list(reads.metrics(job.id, since_epoch)))


@router.post(
    "/{job_id}/cancel",
    name="jobs-cancel",
    response_model=JobRead,
    responses=errors(404, 422, conflict="The job already succeeded or failed."),
)
def cancel_job(job: JobDep, store: StoreDep, caller: CallerDep) -> JobRead:
    """Cancel a queued, running or paused job (a running one stops within an epoch).
    Cancelling a cancelled job again is harmless."""
    current = store.cancel(job.id) or job
    if current.status != JobStatus.CANCELLED:
        raise HTTPException(
            409,
            f"job {job.id} already {current.status}; only queued, running or paused jobs can be "
            "cancelled",
        )
    log.info("job=%s cancelled by=%s", job.id, caller.name)
    return JobRead.of(current, caller.admin)


@router.get(
    "/{job_id}/model",
    name="jobs-model",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {"schema": BINARY}}},
        **errors(404, 410, 422, conflict="The job has not succeeded."),
    },
)
def download_model(job: JobDep, artifacts: ArtifactsDep) -> FileResponse:
    """The trained model as a Keras 3 `.keras` file (`keras.saving.load_model`)."""
    return FileResponse(
        model_file(job, artifacts),
        media_type="application/octet-stream",
        filename=f"tricklab-{job.id}.keras",
    )


@router.delete(
    "/{job_id}",
    name="jobs-delete",
    response_model=JobRead,
    responses=errors(404, 422, conflict="The job has not ended: cancel it first."),
)
def delete_job_files(
    job: JobDep,
    store: StoreDep,
    artifacts: ArtifactsDep,
    serving: ServingDep,
    caller: CallerDep,
) -> JobRead:
    """Delete an ended job's files (checkpoints and model), so that disk use does not grow
    without end. The job, its metrics and its result stay; its model can no longer be
    downloaded or served (410). Deleting again is harmless."""
    current = store.delete_artifacts(job.id) or job
    if current.artifacts_deleted_at is None:
        raise HTTPException(
            409,
            f"job {job.id} is {current.status}: only an ended job's files can be deleted; "
            f"cancel it first (POST /v1/jobs/{job.id}/cancel)",
        )
    artifacts.remove_job(job.id)
    serving.models.forget(job.id)
    log.info("job=%s files deleted by=%s", job.id, caller.name)
    return JobRead.of(current, caller.admin)

"""Submit, list, inspect, follow and cancel jobs; download their models."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse

from core.cost import refusals
from core.spec import JobSpec, TrickName
from jobqueue.states import JobStatus
from jobqueue.store import IdempotencyConflict, QuotaExceeded
from service.deps import (
    MAX_INT,
    ArtifactsDep,
    CallerDep,
    JobDep,
    Limit,
    ListedOwner,
    Offset,
    PagePosition,
    PredictorDep,
    SettingsDep,
    StoreDep,
    get_caller,
    model_file,
    next_link,
    no_unknown_query,
)
from service.errors import BODY, errors, refused
from service.schemas import BINARY, JobBatch, JobBatchRead, JobList, JobRead, MetricsRead

log = logging.getLogger("tricklab.service")
router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(get_caller), Depends(no_unknown_query)]
)


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
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="Makes the submission safe to retry: the same key and spec return "
            "the job created the first time (with Idempotent-Replayed: true). Each user's "
            "keys are their own.",
        ),
    ] = None,
) -> JobRead:
    """Queue a training job. The job is durable once this answers."""
    if found := refusals(spec, settings):
        raise refused(found)
    quota = caller.quota_active_jobs or settings.quota_active_jobs
    try:
        job, created = store.enqueue(spec, caller.name, idempotency_key, quota)
    except IdempotencyConflict as conflict:
        raise HTTPException(409, str(conflict)) from None
    except QuotaExceeded as error:
        raise HTTPException(429, str(error)) from None
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if created:
        log.info("job=%s submitted owner=%s spec=%s", job.id, caller.name, job.spec)
    else:
        response.headers["Idempotent-Replayed"] = "true"
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
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="Makes the batch safe to retry: the same key and specs, in the same "
            "order, return the jobs created the first time (with Idempotent-Replayed: true).",
        ),
    ] = None,
) -> JobBatchRead:
    """Queue several training jobs at once, all or none: one transaction, so one commit
    (and one fsync) for the lot. A spec over a limit is a 422 naming `jobs[i]`; more than
    the quota allows is a 429 and queues nothing."""
    found = [
        refused(refusals(spec, settings), ("jobs", index)).errors()
        for index, spec in enumerate(batch.jobs)
    ]
    if any(found):
        raise RequestValidationError([error for errors_ in found for error in errors_])
    quota = caller.quota_active_jobs or settings.quota_active_jobs
    try:
        jobs, created = store.enqueue_many(batch.jobs, caller.name, idempotency_key, quota)
    except IdempotencyConflict as conflict:
        raise HTTPException(409, str(conflict)) from None
    except QuotaExceeded as error:
        raise HTTPException(429, str(error)) from None
    if created:
        log.info("jobs=%d submitted owner=%s first=%s", len(jobs), caller.name, jobs[0].id)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return JobBatchRead(jobs=[JobRead.of(job, caller.admin) for job in jobs])


@router.get("", name="jobs-list", response_model=JobList, responses=errors(403, 422))
def list_jobs(
    request: Request,
    store: StoreDep,
    caller: CallerDep,
    owner: ListedOwner,
    after: PagePosition,
    status: JobStatus | None = None,
    trick: Annotated[TrickName | None, Query(description="Only the jobs that use it.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> JobList:
    """Your jobs, newest first, optionally only those with one status or using one trick. An
    admin sees everyone's, or one user's with `owner`. Page on with the `next` link: it costs
    the same however deep."""
    jobs, total = store.list_jobs(status, limit + 1, offset, owner, trick, after)
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
    store: StoreDep,
    since_epoch: Annotated[
        int, Query(ge=0, le=MAX_INT, description="The last epoch you have.")
    ] = 0,
) -> MetricsRead:
    """Per-epoch history after `since_epoch` (poll with the last epoch you have)."""
    return MetricsRead.of(job, list(store.metrics(job.id, since_epoch)))


@router.post(
    "/{job_id}/cancel",
    name="jobs-cancel",
    response_model=JobRead,
    responses=errors(404, 422, conflict="The job already succeeded or failed."),
)
def cancel_job(job: JobDep, store: StoreDep, caller: CallerDep) -> JobRead:
    """Cancel a queued or running job (a running one stops within an epoch). Cancelling a
    cancelled job again is harmless."""
    current = store.cancel(job.id) or job
    if current.status != JobStatus.CANCELLED:
        raise HTTPException(
            409,
            f"job {job.id} already {current.status}; only queued or running jobs can be cancelled",
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
    predictor: PredictorDep,
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
    predictor.forget(job.id)
    log.info("job=%s files deleted by=%s", job.id, caller.name)
    return JobRead.of(current, caller.admin)

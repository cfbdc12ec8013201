"""Follow a job, a study or a search live, as Server-Sent Events (`text/event-stream`)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from sqlalchemy.exc import SQLAlchemyError
from sse_starlette import EventSourceResponse

from jobqueue.states import JobStatus
from service.deps import (
    MAX_INT,
    CallerDep,
    JobDep,
    ProgressDep,
    SearchDep,
    StoreDep,
    StudiesDep,
    StudyDep,
    WatchDep,
    get_caller,
    no_unknown_query,
    search_read,
)
from service.errors import errors
from service.events import Allowed, job_events, search_events, study_events
from service.schemas import SearchRead
from service.state import app_state

log = logging.getLogger("tricklab.service")
router = APIRouter(tags=["events"], dependencies=[Depends(get_caller), Depends(no_unknown_query)])
# Proxies buffer a response unless told not to, which would hold events back.
NO_BUFFERING = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}


def still_allowed(request: Request) -> Allowed:
    """Whether the request's credentials still name a user who may follow it: a stream ends
    soon after its user is disabled or its token or session revoked."""
    gate = app_state(request.app).gate

    async def allowed() -> bool:
        try:
            await gate.caller(request)
        except HTTPException:
            return False
        except SQLAlchemyError:  # a database hiccup ends no stream: asked again soon
            log.warning("events: checking a stream's caller failed", exc_info=True)
        return True

    return allowed


def _stream(description: str, *names: str) -> dict[int | str, dict[str, object]]:
    """The responses of a stream of these events; its schema describes one event, as OpenAPI
    before 3.2 has it for text/event-stream."""
    event = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": list(names)},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "description": "The event's object, as JSON.",
            },
            "id": {"type": "string", "description": "An epoch's number (epoch events)."},
            "retry": {"type": "integer", "description": "Milliseconds to wait to reconnect."},
        },
    }
    return {
        200: {"description": description, "content": {"text/event-stream": {"schema": event}}},
        **errors(404, 422),
    }


@router.get(
    "/v1/jobs/{job_id}/events",
    name="jobs-events",
    response_class=EventSourceResponse,
    responses=_stream(
        "`event: status` with the job (as GET /v1/jobs/{job_id}); `event: epoch` for each "
        "finished epoch, `id:` its number and the metrics row as data; `event: status` at "
        "each change of status; `event: end` with the final job, then the stream closes. A "
        "comment line every 15 s keeps proxies from closing it.",
        "status",
        "epoch",
        "end",
    ),
)
async def follow_job(
    request: Request,
    job: JobDep,
    caller: CallerDep,
    store: StoreDep,
    watch: WatchDep,
    since_epoch: Annotated[
        int, Query(ge=0, le=MAX_INT, description="Only the epochs after this one.")
    ] = 0,
    last_event_id: Annotated[
        int | None,
        Header(
            ge=0,
            le=MAX_INT,
            description="The last epoch received, as a reconnecting EventSource sends it: "
            "the stream resumes after it, nothing lost and nothing repeated.",
        ),
    ] = None,
) -> EventSourceResponse:
    """A job's status and epochs as they happen, until it ends."""
    since = last_event_id if last_event_id is not None else since_epoch
    events = job_events(job, since, store, watch, caller.admin, still_allowed(request))
    return EventSourceResponse(events, headers=NO_BUFFERING)


@router.get(
    "/v1/studies/{study_id}/events",
    name="studies-events",
    response_class=EventSourceResponse,
    responses=_stream(
        "`event: progress` with the study's summary (status, jobs per status), at first and "
        "whenever its jobs advance; `event: end` with the final summary once every job has "
        "ended or the study was cancelled, then the stream closes.",
        "progress",
        "end",
    ),
)
async def follow_study(
    request: Request, study: StudyDep, studies: StudiesDep, watch: WatchDep
) -> EventSourceResponse:
    """A study's progress as it happens, until it ends."""
    events = study_events(study, studies, watch, still_allowed(request))
    return EventSourceResponse(events, headers=NO_BUFFERING)


@router.get(
    "/v1/searches/{search_id}/events",
    name="searches-events",
    response_class=EventSourceResponse,
    responses=_stream(
        "`event: progress` with the search (as GET /v1/searches/{search_id}: status, trials "
        "per state and in all, the best trial so far on validation), at first and whenever "
        "its trials or jobs move; `event: end` with it once the search has ended, then the "
        "stream closes.",
        "progress",
        "end",
    ),
)
async def follow_search(
    request: Request, search: SearchDep, progress: ProgressDep, watch: WatchDep
) -> EventSourceResponse:
    """A search's progress as it happens, until it ends."""

    def look() -> tuple[SearchRead, dict[str, JobStatus]]:
        current = progress.searches.get(search.id) or search
        jobs = progress.searches.jobs(search.id)
        statuses = {job_id: job.status for job_id, job in jobs.items()}
        return search_read(progress, current, jobs), statuses

    events = search_events(look, watch, still_allowed(request))
    return EventSourceResponse(events, headers=NO_BUFFERING)

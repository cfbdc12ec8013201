"""Request-scoped dependencies: who is asking, the application's state and its parts, and
the job or study in the path (another owner's is 404, so that its existence is not revealed);
and the lookups that routes share (a job's model file, a study's runs, compared jobs).

The state getters are `async` only so that FastAPI calls them in place: it would run a plain
`def` dependency in a worker thread, a hop that costs more than the whole lookup."""

from __future__ import annotations

import base64
import pathlib
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, Response, Security, params
from fastapi.dependencies.utils import get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from analysis.report import ReportRead, VariantRuns, job_variants, report, study_variants
from core.config import Settings
from jobqueue.accounts import Accounts
from jobqueue.artifacts import ArtifactStore
from jobqueue.counts import JobCounts
from jobqueue.models import Job, Search, Study
from jobqueue.reads import Position, Reads
from jobqueue.states import JobStatus
from jobqueue.store import JobStore
from jobqueue.studies import Studies
from search.progress import Progress, best_trial
from search.space import decoded
from search.spec import SearchSpec
from service.admission import CALLER
from service.auth import Caller, Gate
from service.errors import http_error
from service.events import Watch
from service.metrics import ApiMetrics
from service.schemas import ID_PATTERN, SearchRead, SearchSummary, TrialList, TrialRead
from service.serving import NotFound, Serving, ServingError, servable, visible_job
from service.state import app_state


async def get_store(request: Request) -> JobStore:
    return app_state(request.app).store


async def get_studies(request: Request) -> Studies:
    return app_state(request.app).studies


async def get_progress(request: Request) -> Progress:
    return app_state(request.app).progress


async def get_reads(request: Request) -> Reads:
    return app_state(request.app).reads


async def get_counts(request: Request) -> JobCounts:
    return app_state(request.app).counts


async def get_serving(request: Request) -> Serving:
    return app_state(request.app).serving


async def get_artifacts(request: Request) -> ArtifactStore:
    return app_state(request.app).artifacts


async def get_settings(request: Request) -> Settings:
    return app_state(request.app).settings


async def get_accounts(request: Request) -> Accounts:
    return app_state(request.app).accounts


async def get_gate(request: Request) -> Gate:
    return app_state(request.app).gate


async def get_watch(request: Request) -> Watch:
    return app_state(request.app).watch


async def get_metrics(request: Request) -> ApiMetrics:
    return app_state(request.app).metrics


async def resolve_caller(request: Request) -> Caller:
    """The user the request acts for (by its bearer token, or the dashboard's cookie); 401
    without a valid token. The prediction routes take it as it is: they declare the scheme in
    their documents themselves, and their hot path skips the scheme's own parse of the header.
    The admission middleware has usually found it already, before the body was read."""
    found: Caller | HTTPException | None = request.scope.get(CALLER)
    if isinstance(found, HTTPException):
        raise found
    if found is not None:
        return found
    return await app_state(request.app).gate.caller(request)


# Declares the scheme in the OpenAPI document; the gate reads the header itself.
_BEARER = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer <token>`.")


async def get_caller(request: Request, _: Annotated[object, Security(_BEARER)] = None) -> Caller:
    """The user the request acts for; 401 without a valid token."""
    return await resolve_caller(request)


async def require_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.admin:
        raise HTTPException(403, f"only an admin may do this; {caller.name} is a {caller.role}")
    return caller


StoreDep = Annotated[JobStore, Depends(get_store)]
StudiesDep = Annotated[Studies, Depends(get_studies)]
ProgressDep = Annotated[Progress, Depends(get_progress)]
ReadsDep = Annotated[Reads, Depends(get_reads)]
CountsDep = Annotated[JobCounts, Depends(get_counts)]
AccountsDep = Annotated[Accounts, Depends(get_accounts)]
GateDep = Annotated[Gate, Depends(get_gate)]
CallerDep = Annotated[Caller, Depends(get_caller)]
ResolvedCaller = Annotated[Caller, Depends(resolve_caller)]  # the same, the scheme undeclared
AdminDep = Annotated[Caller, Depends(require_admin)]
ServingDep = Annotated[Serving, Depends(get_serving)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
WatchDep = Annotated[Watch, Depends(get_watch)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]

# A malformed id is a 422 before the database is asked.
JobId = Annotated[str, Path(pattern=ID_PATTERN, description="A job's id, 32 hex digits.")]
StudyId = Annotated[str, Path(pattern=ID_PATTERN, description="A study's id, 32 hex digits.")]
SearchId = Annotated[str, Path(pattern=ID_PATTERN, description="A search's id, 32 hex digits.")]
# The largest integer every database stores: larger epochs are 422s, not 500s.
MAX_INT = 2**31 - 1
# An offset makes the database step over the items it skips; deeper pages follow `next`.
MAX_OFFSET = 10_000
Offset = Annotated[
    int,
    Query(
        ge=0,
        le=MAX_OFFSET,
        description=f"Items to skip, at most {MAX_OFFSET}; deeper, follow the `next` link.",
    ),
]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]


def page_position(
    cursor: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Where the page starts: the page before's `next` link carries it.",
        ),
    ] = None,
) -> Position | None:
    """The (created_at, id) a cursor names: the last item of the page before."""
    if cursor is None:
        return None
    try:
        created, item_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        position = (datetime.fromisoformat(created), item_id)
    except ValueError:
        position = None
    if position is None or position[0].tzinfo is None or not re.fullmatch(ID_PATTERN, item_id):
        raise RequestValidationError(
            [
                {
                    "loc": ("query", "cursor"),
                    "msg": "not a cursor of this API: take it from a page's next link",
                    "type": "value_error",
                    "input": cursor,
                }
            ]
        )
    return position


PagePosition = Annotated[Position | None, Depends(page_position)]


def next_link(request: Request, items: Sequence[Job | Study | Search], limit: int) -> str | None:
    """The link to the page after this one (None: this is the last), this request's filters
    kept; `items` is the page with one item more than `limit` when there is more."""
    if len(items) <= limit:
        return None
    last = items[limit - 1]
    cursor = base64.urlsafe_b64encode(f"{last.created_at.isoformat()}|{last.id}".encode())
    url = request.url.remove_query_params("offset").include_query_params(cursor=cursor.decode())
    return f"{url.path}?{url.query}"


OwnerName = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        description="Only this user's (admins only: everyone else sees only their own).",
    ),
]


def listed_owner(caller: CallerDep, owner: OwnerName = None) -> str | None:
    """Whose items a list shows: the caller's own; an admin's choice (None: everyone's)."""
    if caller.admin:
        return owner
    if owner is not None and owner != caller.name:
        raise HTTPException(403, f"only an admin may list another user's items ({owner!r})")
    return caller.name


ListedOwner = Annotated[str | None, Depends(listed_owner)]


def get_job(job_id: JobId, store: StoreDep, caller: CallerDep) -> Job:
    try:
        return visible_job(store, job_id, caller)
    except NotFound as error:
        raise http_error(error) from None


JobDep = Annotated[Job, Depends(get_job)]


def get_study(study_id: StudyId, studies: StudiesDep, caller: CallerDep) -> Study:
    study = studies.get(study_id)
    if study is None or not caller.may_see(study.owner):
        raise HTTPException(404, no_study(study_id))
    return study


def no_study(study_id: str) -> str:
    return f"no study with id {study_id!r}"


StudyDep = Annotated[Study, Depends(get_study)]


def get_search(search_id: SearchId, progress: ProgressDep, caller: CallerDep) -> Search:
    search = progress.searches.get(search_id)
    if search is None or not caller.may_see(search.owner):
        raise HTTPException(404, f"no search with id {search_id!r}")
    return search


SearchDep = Annotated[Search, Depends(get_search)]


def search_read(
    progress: Progress, search: Search, jobs: dict[str, Job] | None = None
) -> SearchRead:
    """The search as its routes and its event stream show it: its trials per state and in all,
    and the best trial so far on validation. `jobs`: its jobs by id, when already read."""
    trials = progress.searches.trials(search.id)
    jobs = progress.searches.jobs(search.id) if jobs is None else jobs
    states = Counter(trial.state for trial in trials)
    return SearchRead(
        **SearchSummary.of(search).model_dump(),
        request=search.request,
        trials={**states, "total": len(trials)},
        best=best_trial(search, trials, jobs),
    )


def search_trials(progress: Progress, search: Search) -> TrialList:
    """The trials as the API answers them: what the JSON, the CSV and the plots show."""
    spec = SearchSpec.model_validate(search.request)
    rungs = spec.rungs()
    return TrialList(
        search_id=search.id,
        objective=spec.objective,
        rungs=rungs,
        trials=[
            TrialRead(
                number=trial.number,
                job_id=trial.job_id,
                params=decoded(trial.params),
                state=trial.state,
                rung=trial.rung,
                rung_epochs=rungs[min(trial.rung, len(rungs) - 1)],
                values={int(epoch): value for epoch, value in trial.values.items()},
                error=trial.error,
            )
            for trial in progress.searches.trials(search.id)
        ],
    )


def csv_response(text: str, filename: str) -> Response:
    """A CSV table as a download."""
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def no_unknown_query(request: Request) -> None:
    """A query parameter the route does not take is a 422 naming those it takes: a typo such
    as ?statsu=running would otherwise be ignored, and the answer silently unfiltered."""
    route = request.scope.get("route")
    if not request.query_params or not isinstance(route, APIRoute):
        return
    allowed = _query_names(route)
    unknown = [name for name in request.query_params if name not in allowed]
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "unknown_parameter",
                    "loc": ("query", name),
                    "msg": f"unknown query parameter {name!r}; this route takes "
                    f"{', '.join(allowed) or 'none'}",
                    "input": request.query_params[name],
                }
                for name in unknown
            ]
        )


_QUERY_NAMES: dict[str, tuple[str, ...]] = {}  # by operation id


def _query_names(route: APIRoute) -> tuple[str, ...]:
    if route.unique_id not in _QUERY_NAMES:
        _QUERY_NAMES[route.unique_id] = tuple(
            field.alias
            for field in get_flat_params(route.dependant)
            if isinstance(field.field_info, params.Query)
        )
    return _QUERY_NAMES[route.unique_id]


# -- lookups that routes share ------------------------------------------------------


def model_file(job: Job, artifacts: ArtifactStore) -> pathlib.Path:
    """A succeeded job's model file; 409 before it succeeded, 410 once its files were
    deleted, 404 if the file is gone."""
    require_model(job)
    path = artifacts.path(job.model_path or "")
    if not path.is_file():
        raise HTTPException(404, f"the model file of job {job.id} is missing from the store")
    return path


def require_model(job: Job) -> None:
    """409 unless the job succeeded; 410 if its model was deleted since."""
    try:
        servable(job)
    except ServingError as error:
        raise http_error(error) from None


MAX_COMPARED = 500
JobIds = Annotated[
    str,
    Query(
        # 500 ids of 32 characters and their commas.
        min_length=1,
        max_length=MAX_COMPARED * 33,
        pattern=r"[0-9a-f]",
        description=f"Comma-separated ids of succeeded jobs, at most {MAX_COMPARED}.",
    ),
]
UNFINISHED = "Some of the jobs have not succeeded."


def study_runs(reads: Reads, study: Study) -> list[VariantRuns]:
    jobs, metrics = reads.jobs_with_metrics(study.job_ids)
    return study_variants(study, jobs, metrics)


def study_report(reads: Reads, study: Study) -> ReportRead:
    return report(study_runs(reads, study))


def compared_variants(reads: Reads, jobs: str, caller: Caller) -> list[VariantRuns]:
    ids = list(dict.fromkeys(part.strip() for part in jobs.split(",") if part.strip()))
    if len(ids) > MAX_COMPARED:
        raise HTTPException(400, f"jobs: {len(ids)} ids; at most {MAX_COMPARED}")
    found, metrics = reads.jobs_with_metrics(ids)
    missing = [i for i in ids if i not in found or not caller.may_see(found[i].owner)]
    if missing:
        raise HTTPException(404, f"no job with id {', '.join(map(repr, missing))}")
    unfinished = [
        f"{job_id} ({found[job_id].status})"
        for job_id in ids
        if found[job_id].status != JobStatus.SUCCEEDED
    ]
    if unfinished:
        raise HTTPException(
            409, f"only succeeded jobs can be compared; these are not: {', '.join(unfinished)}"
        )
    return job_variants([found[job_id] for job_id in ids], metrics)

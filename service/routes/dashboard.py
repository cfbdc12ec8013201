"""The dashboard: HTML pages at `/` over the same store, report and serving layer as the API.

Pages are server-rendered (Jinja2) and refreshed in parts by htmx; the charts are uPlot; all
three are vendored under service/dashboard/static, so nothing comes from a CDN. The browser
signs in with an API token, which opens a server-side session: its HttpOnly, SameSite=Strict
cookie names the session (never the token), service.auth.Gate accepts it in place of the
Authorization header, and each page carries the session's CSRF token, which htmx and
dashboard.js send with every state-changing request. What the pages change goes through the
API's own routes (or, for the predictions shown with their pixels, the serving layer), under
its owner rules.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, get_args

import numpy as np
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from PIL import Image
from starlette.datastructures import UploadFile

from analysis.report import report
from analysis.studies import DESIGNS
from core.spec import TRICKS, Architecture, JobSpec, trick_catalogue
from jobqueue.models import Job, Trial, trick_names, utcnow
from jobqueue.states import TERMINAL, JobStatus
from jobqueue.store import JobStore
from search.space import decoded
from search.spec import SearchSpec
from search.states import ENDED
from service.auth import CSRF_HEADER, SESSION_COOKIE, Caller, foreign_origin
from service.deps import (
    ID_PATTERN,
    GateDep,
    PagePosition,
    ProgressDep,
    ReadsDep,
    ResolvedCaller,
    ServingDep,
    SettingsDep,
    StoreDep,
    StudiesDep,
    compared_variants,
    get_job,
    get_search,
    get_study,
    next_link,
    resolve_caller,
    search_read,
    study_runs,
)
from service.errors import v1_error
from service.schemas import JobRead, StudySummary
from service.serving import BadInput, ServedModel, Serving, ServingError
from service.state import app_state

log = logging.getLogger("tricklab.service")
HERE = Path(__file__).parents[1] / "dashboard"
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)
PAGE = 100


async def viewer(request: Request) -> Caller | None:
    """Who is looking, or None when they must sign in first. A dependency, so that the
    pages can be plain functions, which FastAPI runs in its thread pool: their database
    reads then never hold up the event loop."""
    try:
        return await resolve_caller(request)
    except HTTPException as error:
        if error.status_code == 401:
            return None
        raise


Viewer = Annotated[Caller | None, Depends(viewer)]


def page(request: Request, name: str, caller: Caller | None, code: int = 200, **context: Any):
    return templates.TemplateResponse(
        request,
        name,
        {
            "caller": caller,
            "auth": app_state(request.app).gate.enabled,
            "csrf_header": CSRF_HEADER,
            "csrf_token": caller.csrf if caller is not None and caller.csrf else "",
            **context,
        },
        status_code=code,
    )


def sign_in_first(request: Request) -> Response:
    return RedirectResponse("/", status_code=303)


# -- signing in and out ---------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def home(request: Request, caller: Viewer) -> Response:
    if caller is None:
        return page(request, "signin.html", None)
    return page(
        request, "jobs.html", caller, statuses=[s.value for s in JobStatus], tricks=list(TRICKS)
    )


@router.post("/signin", response_class=HTMLResponse)
async def sign_in(
    request: Request, gate: GateDep, token: Annotated[str, Form(max_length=512)]
) -> Response:
    """Open a session with the API token; the cookie holds only the session's secret. The
    session the browser's cookie named before is revoked: a cookie copied from it stops too."""
    if refusal := foreign_origin(request):
        raise HTTPException(403, refusal)
    try:
        secret, caller = await gate.sign_in(token.strip(), request.cookies.get(SESSION_COOKIE))
    except HTTPException as error:
        return page(request, "signin.html", None, code=401, error=error.detail)
    assert caller.expires_at is not None  # a session always ends
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=max(0, round((caller.expires_at - utcnow()).total_seconds())),
        httponly=True,
        samesite="strict",
        path="/",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/signout")
async def sign_out(request: Request, gate: GateDep) -> Response:
    """Revoke the session (its cookie, even copied, no longer works) and clear the cookie. The
    gate signs the request in as every other (its Origin and CSRF token checked); one whose
    session is already over only has its cookie cleared."""
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        try:
            await resolve_caller(request)
        except HTTPException as refusal:
            if refusal.status_code != 401:
                raise
        else:
            await gate.sign_out(secret)
    response = Response(status_code=204, headers={"HX-Redirect": "/"})
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


# -- jobs -----------------------------------------------------------------------------


def duration(job: Job) -> str:
    if job.started_at is None:
        return ""
    seconds = ((job.finished_at or utcnow()) - job.started_at).total_seconds()
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@router.get("/ui/jobs", response_class=HTMLResponse)
def jobs_table(
    request: Request,
    caller: Viewer,
    reads: ReadsDep,
    after: PagePosition,
    status: Annotated[str, Query(max_length=16)] = "",
    trick: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """The jobs table, filtered as the form above it says (empty: any), a page at a time."""
    if caller is None:
        return Response(status_code=204, headers={"HX-Redirect": "/"})
    statuses = [s.value for s in JobStatus]
    if status and status not in statuses:
        raise HTTPException(422, f"status {status!r}: one of {', '.join(statuses)}")
    if trick and trick not in TRICKS:
        raise HTTPException(422, f"trick {trick!r}: one of {', '.join(TRICKS)}")
    owner = None if caller.admin else caller.name
    chosen = JobStatus(status) if status else None
    found, total = reads.list_jobs(chosen, PAGE + 1, 0, owner, trick or None, after)
    jobs = found[:PAGE]
    ids = [job.id for job in jobs]
    best = reads.best_test_accuracy(ids)
    studies = reads.study_names([job.study_id for job in jobs if job.study_id])
    rows = [
        {
            "job": job,
            "tricks": trick_names(job.spec),
            "best": best.get(job.id),
            "final": job.result and job.result.test_accuracy,
            "duration": duration(job),
            "study": (job.study_id, studies[job.study_id]) if job.study_id in studies else None,
        }
        for job in jobs
    ]
    return page(
        request,
        "jobs_table.html",
        caller,
        rows=rows,
        total=total,
        status=status,
        trick=trick,
        older=next_link(request, found, PAGE),
        first=after is None,
        # Only the first page refreshes itself: it is where new and running jobs are.
        active=after is None and any(job.status not in TERMINAL for job in jobs),
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request, caller: Viewer, store: StoreDep, reads: ReadsDep, job_id: str
) -> Response:
    if caller is None:
        return sign_in_first(request)
    job = _job(store, job_id, caller)
    studies = reads.study_names([job.study_id]) if job.study_id else {}
    return page(
        request,
        "job.html",
        caller,
        job=JobRead.of(job, caller.admin),
        study=(job.study_id, studies[job.study_id]) if job.study_id in studies else None,
        tricks=trick_names(job.spec),
        ended=job.status in TERMINAL,  # a paused job has not ended: its search may resume it
    )


def _job(store: JobStore, job_id: str, caller: Caller) -> Job:
    if not re.fullmatch(ID_PATTERN, job_id):
        raise HTTPException(404, f"no job with id {job_id!r}")
    return get_job(job_id, store, caller)


@router.post("/ui/jobs/{job_id}/predict", response_class=HTMLResponse)
async def predict(
    request: Request,
    job_id: str,
    caller: ResolvedCaller,  # by the cookie, with the CSRF header
    serving: ServingDep,
    settings: SettingsDep,
) -> Response:
    """Classify uploaded files and show, beside each answer, the 28×28 picture the model
    received: decoded by the API's own conversion (the serving layer's). A file that is no
    image gets its error in its place; the others are classified."""
    try:
        model = await serving.model(job_id, caller)
        form = await request.form(max_files=settings.max_predict_files)
        results, decoded = await _decoded(serving, form.getlist("file"))
        if decoded:
            await _classify(model, decoded, results)
    except ServingError as error:
        raise v1_error(error) from None
    return page(request, "predictions.html", caller, results=results)


async def _decoded(
    serving: Serving, parts: list[UploadFile | str]
) -> tuple[list[dict[str, Any]], list[tuple[int, np.ndarray]]]:
    """Each uploaded file's name with its picture or its error, and the pictures decoded, each
    with its place among the first."""
    budget = serving.budget()
    results: list[dict[str, Any]] = []
    decoded: list[tuple[int, np.ndarray]] = []
    for part in parts:
        if not isinstance(part, UploadFile):
            continue
        name = part.filename or "file"
        try:
            pixels = await serving.decode(await part.read(), budget, name)
        except BadInput as error:
            results.append({"name": name, "error": error.reason})
            continue
        decoded.append((len(results), pixels))
        results.append({"name": name, "image": png_data_url(pixels)})
    return results, decoded


async def _classify(
    model: ServedModel, decoded: list[tuple[int, np.ndarray]], results: list[dict[str, Any]]
) -> None:
    """Put each decoded image's answer into its place in `results`."""
    answer = await model.classify(np.stack([pixels for _, pixels in decoded]))
    for (index, _), prediction in zip(decoded, answer.predictions, strict=True):
        results[index].update(
            label=prediction.class_name,
            bars=[
                {"name": name, "p": float(p)}
                for name, p in zip(model.class_names, prediction.probabilities, strict=True)
            ],
        )


def png_data_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels).astype(np.uint8), mode="L").save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# -- studies, comparisons, forms ------------------------------------------------------


@router.get("/studies", response_class=HTMLResponse)
def studies_page(request: Request, caller: Viewer) -> Response:
    if caller is None:
        return sign_in_first(request)
    return page(request, "studies.html", caller)


@router.get("/ui/studies", response_class=HTMLResponse)
def studies_table(
    request: Request, caller: Viewer, reads: ReadsDep, after: PagePosition
) -> Response:
    """The studies table, newest first, a page at a time, with each study's progress."""
    if caller is None:
        return Response(status_code=204, headers={"HX-Redirect": "/"})
    found, total = reads.list_studies(PAGE + 1, 0, None if caller.admin else caller.name, after)
    studies = found[:PAGE]
    statuses = reads.statuses([job_id for study in studies for job_id in study.job_ids])
    summaries = [
        StudySummary.of(study, [statuses[job_id] for job_id in study.job_ids]) for study in studies
    ]
    return page(
        request,
        "studies_table.html",
        caller,
        studies=summaries,
        total=total,
        older=next_link(request, found, PAGE),
        first=after is None,
        # Only the first page refreshes itself: it is where new and running studies are.
        active=after is None and any(s.status in ("queued", "running") for s in summaries),
    )


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(
    request: Request, caller: Viewer, studies: StudiesDep, reads: ReadsDep, study_id: str
) -> Response:
    if caller is None:
        return sign_in_first(request)
    if not re.fullmatch(ID_PATTERN, study_id):
        raise HTTPException(404, f"no study with id {study_id!r}")
    study = get_study(study_id, studies, caller)
    variants = study_runs(reads, study)
    summary = StudySummary.of(study, [job.status for v in variants for job in v.jobs])
    return page(
        request,
        "study.html",
        caller,
        study=study,
        report=report(variants),
        progress=summary.progress,
        running=summary.status in ("queued", "running"),
        plots=f"/v1/studies/{study.id}/plots",
        csv=f"/v1/studies/{study.id}/report.csv",
    )


# -- searches -------------------------------------------------------------------------


@router.get("/searches", response_class=HTMLResponse)
def searches_page(request: Request, caller: Viewer) -> Response:
    if caller is None:
        return sign_in_first(request)
    return page(request, "searches.html", caller)


@router.get("/ui/searches", response_class=HTMLResponse)
def searches_table(
    request: Request, caller: Viewer, reads: ReadsDep, progress: ProgressDep, after: PagePosition
) -> Response:
    """The searches table, newest first, a page at a time, with each one's trials per state
    and best objective so far, as GET /v1/searches/{id} gives them."""
    if caller is None:
        return Response(status_code=204, headers={"HX-Redirect": "/"})
    found, total = reads.list_searches(PAGE + 1, 0, None if caller.admin else caller.name, after)
    searches = [search_read(progress, search) for search in found[:PAGE]]
    return page(
        request,
        "searches_table.html",
        caller,
        searches=searches,
        total=total,
        older=next_link(request, found, PAGE),
        first=after is None,
        # Only the first page refreshes itself: it is where new and running searches are.
        active=after is None and any(search.status not in ENDED for search in searches),
    )


@router.get("/searches/{search_id}", response_class=HTMLResponse)
def search_page(
    request: Request, caller: Viewer, progress: ProgressDep, search_id: str
) -> Response:
    """The search: its status and best trial so far, every trial with its sampled values, and
    the plots of the space, the best so far and the rungs once a trial has a value to draw."""
    if caller is None:
        return sign_in_first(request)
    if not re.fullmatch(ID_PATTERN, search_id):
        raise HTTPException(404, f"no search with id {search_id!r}")
    search = get_search(search_id, progress, caller)
    jobs = progress.searches.jobs(search.id)
    spec = SearchSpec.model_validate(search.request)
    rungs = spec.rungs()
    rows = [trial_row(trial, jobs, rungs) for trial in progress.searches.trials(search.id)]
    return page(
        request,
        "search.html",
        caller,
        search=search_read(progress, search, jobs),
        spec=spec,
        rungs=rungs,
        rows=rows,
        ended=search.status in ENDED,
        plots=f"/v1/searches/{search.id}/plots",
        # As the plot routes draw: once a trial has a value (before, they answer 409).
        drawn=any(row["last"] is not None and math.isfinite(row["last"]) for row in rows),
    )


def trial_row(trial: Trial, jobs: dict[str, Job], rungs: Sequence[int]) -> dict[str, Any]:
    """One line of the trials table: the values sampled (as people read them), the epochs its
    job trained, and the objective at the last epoch the search has recorded."""
    values = {int(epoch): value for epoch, value in trial.values.items()}
    job = jobs.get(trial.job_id) if trial.job_id else None
    return {
        "trial": trial,
        "params": decoded(trial.params),
        "rung_epochs": rungs[min(trial.rung, len(rungs) - 1)],
        "epochs": job.epochs_done if job else None,
        "last": values[max(values)] if values else None,
    }


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    caller: Viewer,
    reads: ReadsDep,
    job: Annotated[list[str], Query(max_length=500)],
) -> Response:
    if caller is None:
        return sign_in_first(request)
    ids = ",".join(job)
    found = report(compared_variants(reads, ids, caller))
    return page(
        request,
        "compare.html",
        caller,
        report=found,
        ids=ids,
        plots="/v1/compare/plots",
        csv="/v1/compare.csv",
    )


@router.get("/new", response_class=HTMLResponse)
def new_page(request: Request, caller: Viewer) -> Response:
    if caller is None:
        return sign_in_first(request)
    spec = JobSpec.model_json_schema()["properties"]
    return page(
        request,
        "new.html",
        caller,
        spec_fields=[form_field(name, schema) for name, schema in spec.items() if name != "tricks"],
        catalogue=[{**trick, "fields": trick_fields(trick)} for trick in trick_catalogue()],
        designs=DESIGNS,
    )


BOUNDS = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<"}


def form_field(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """How to ask for one JSON schema property in a form: its input kind, default (as typed),
    options and limits, in words. The form sends only what the user changed: an empty input
    leaves the API's default, which it shows as a placeholder."""
    kinds = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    main = kinds[0] if kinds else schema
    items = main.get("items", {})
    bounds = [f"{BOUNDS[k]} {v}" for k, v in (items or main).items() if k in BOUNDS]
    if items:
        bounds.append(f"{main.get('minItems', 0)} to {main.get('maxItems', '∞')} values")
    kind = {"boolean": "boolean", "array": "list", "number": "number", "integer": "number"}
    default = schema.get("default")
    return {
        "name": name,
        "label": name.replace("_", " ").capitalize(),
        "description": schema.get("description", ""),
        "kind": "select" if "enum" in main else kind.get(str(main.get("type")), "text"),
        "options": main.get("enum", []),
        "default": as_typed(default),
        "optional": "anyOf" in schema,
        "bounds": ", ".join(bounds),
    }


def trick_fields(trick: dict[str, Any]) -> list[dict[str, Any]]:
    """A catalogue trick's parameters as form fields, each with its default on every
    architecture (`defaults`; `default`: the default architecture's): a parameter left
    empty takes the default of the architecture the job is for, so the form shows the one
    of the architecture chosen, and the others where they differ."""
    fields = []
    for name, schema in trick["parameters"].items():
        field = form_field(name, schema)
        field["defaults"] = {
            architecture: as_typed(
                trick["architecture_defaults"]
                .get(architecture, {})
                .get(name, schema.get("default"))
            )
            for architecture in get_args(Architecture)
        }
        field["default"] = field["defaults"][JobSpec.model_fields["architecture"].default]
        fields.append(field)
    return fields


def as_typed(value: Any) -> str | None:
    """A default as one would type it into the form: 0.5, true, 128, 32."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def study_label(study_id: str, name: str | None) -> str:
    """What a study is called on the pages: its name, or, without one, its short id, so that
    its links and title are never empty."""
    return name or study_id[:8]


def param_value(value: Any) -> str:
    """A sampled value as the trials table shows it: a float to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else as_typed(value) or ""


templates.env.filters["when"] = when
templates.env.filters["param"] = param_value
templates.env.globals["study_label"] = study_label

"""Plots as PNG or SVG (`?format=svg`): a study's, any succeeded jobs' (the compare report),
one job's learning curves so far, whatever its status, and a search's trials.

The routes are plain `def`: drawing takes tens to hundreds of milliseconds of CPU, which
FastAPI then spends in a worker thread instead of the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from analysis import plots
from analysis.report import ReportRead, job_curves, report
from search import plots as search_plots
from search.spec import SearchSpec
from service.deps import (
    UNFINISHED,
    CallerDep,
    JobDep,
    JobIds,
    ProgressDep,
    ReadsDep,
    SearchDep,
    StudyDep,
    compared_variants,
    get_caller,
    no_unknown_query,
    search_trials,
    study_report,
)
from service.errors import errors
from service.schemas import BINARY

router = APIRouter(dependencies=[Depends(get_caller), Depends(no_unknown_query)])
FormatQuery = Annotated[plots.Format, Query(alias="format", description="png (the default) or svg")]
IMAGE: dict[int | str, dict[str, Any]] = {
    200: {"content": {media_type: {"schema": BINARY} for media_type in plots.MEDIA_TYPES.values()}},
}
NOTHING = "Nothing to draw yet: no finished run, or no compared trick."
NAMES = (
    "curves: mean learning curves with 95% bands per variant (training and validation loss, "
    "validation and test accuracy); accuracy: final test accuracy per variant with error "
    "bars and single seeds; gap: the generalisation gap per epoch; effects: each trick's "
    "paired difference in test accuracy."
)


def _image_route(
    path: str, name: str, errors: dict[int | str, Any], description: str | None = None
) -> Any:
    """A GET route answering an image (its docstring describes it unless `description`)."""
    return router.get(
        path,
        name=name,
        tags=[name.split("-")[0]],
        response_class=Response,
        responses={**IMAGE, **errors},
        description=description,
    )


@_image_route(
    "/v1/studies/{study_id}/plots/{name}",
    "studies-plot",
    errors(404, 422, conflict=NOTHING),
    f"A plot of the study's report so far (finished runs only). {NAMES}",
)
def study_plot(
    study: StudyDep, name: plots.PlotName, reads: ReadsDep, fmt: FormatQuery = "png"
) -> Response:
    title = f"Study {study.name!r}" if study.name else f"Study {study.id[:8]}"  # as the pages
    return _image(name, study_report(reads, study), title, fmt)


@_image_route(
    "/v1/compare/plots/{name}",
    "compare-plot",
    errors(400, 404, 422, conflict=f"{UNFINISHED} Or: {NOTHING}"),
    f"A plot of the comparison of any succeeded jobs. {NAMES}",
)
def compare_plot(
    name: plots.PlotName, reads: ReadsDep, caller: CallerDep, jobs: JobIds, fmt: FormatQuery = "png"
) -> Response:
    variants = compared_variants(reads, jobs, caller)
    count = sum(len(variant.jobs) for variant in variants)
    return _image(name, report(variants), f"{count} jobs compared", fmt)


@_image_route("/v1/jobs/{job_id}/plots/{name}", "jobs-plot", errors(404, 422, conflict=NOTHING))
def job_plot(
    job: JobDep, name: plots.JobPlotName, reads: ReadsDep, fmt: FormatQuery = "png"
) -> Response:
    """The job's learning curves (`curves`) or generalisation gap (`gap`) so far: poll it while
    the job trains."""
    data = job_curves(job, reads.metrics(job.id))
    return _image(name, data, f"Job {job.id} ({data.variants[0].name}, {job.status})", fmt)


@_image_route(
    "/v1/searches/{search_id}/plots/{name}",
    "searches-plot",
    errors(404, 422, conflict="Nothing to draw yet: no trial has a value."),
    f"A plot of the search's trials so far. {search_plots.NAMES}",
)
def search_plot(
    search: SearchDep,
    progress: ProgressDep,
    name: search_plots.PlotName,
    fmt: FormatQuery = "png",
) -> Response:
    spec = SearchSpec.model_validate(search.request)
    title = f"Search {search.name!r}" if search.name else f"Search {search.id[:8]}"
    trials = search_trials(progress, search).trials
    return _drawn(lambda: search_plots.render(name, spec, trials, title, fmt), fmt)


def _image(name: plots.PlotName, data: ReportRead, title: str, fmt: plots.Format) -> Response:
    return _drawn(lambda: plots.render(name, data, title, fmt), fmt)


def _drawn(draw: Callable[[], bytes], fmt: plots.Format) -> Response:
    try:
        image = draw()
    except plots.NothingToPlot as reason:
        raise HTTPException(409, f"nothing to plot yet: {reason}") from None
    return Response(image, media_type=plots.MEDIA_TYPES[fmt])

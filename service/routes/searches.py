"""Searches: sample configurations with Optuna, stop the weak ones at ASHA's rungs, then confirm
the best on fresh seeds. Create, list, read, follow the trials, read the report, cancel."""

from __future__ import annotations

import logging
from collections import Counter

from fastapi import APIRouter, Depends, Request, Response

from core.cost import refusals
from jobqueue.models import Search
from search.progress import best_trial, search_report
from search.report import SearchReport
from search.space import decoded
from search.spec import SearchSpec
from service.deps import (
    CallerDep,
    Limit,
    ListedOwner,
    Offset,
    PagePosition,
    ProgressDep,
    ReadsDep,
    SearchDep,
    SettingsDep,
    get_caller,
    next_link,
    no_unknown_query,
)
from service.errors import BODY, errors, refused
from service.schemas import (
    IdPrefix,
    SearchList,
    SearchRead,
    SearchSummary,
    TrialList,
    TrialRead,
)

log = logging.getLogger("tricklab.service")
router = APIRouter(tags=["searches"], dependencies=[Depends(get_caller), Depends(no_unknown_query)])


@router.post(
    "/v1/searches",
    name="searches-create",
    status_code=201,
    response_model=SearchRead,
    responses=errors(*BODY),
)
def create_search(
    search: SearchSpec,
    progress: ProgressDep,
    settings: SettingsDep,
    caller: CallerDep,
    response: Response,
) -> SearchRead:
    """Store the search and queue its first trials, as many as `max_concurrent_trials` and
    your quota admit; the rest follow as trials pause and end."""
    found = refusals(search.base, settings)
    if found:
        raise refused(found, within=("base",))
    name = search.name or f"search {search.sampler}"
    row = progress.searches.create(caller.name, name, search.model_dump(mode="json"))
    row = progress.advance(row.id) or row
    log.info("search=%s created owner=%s", row.id, caller.name)
    response.headers["Location"] = f"/v1/searches/{row.id}"
    return _read(progress, row)


@router.get(
    "/v1/searches", name="searches-list", response_model=SearchList, responses=errors(403, 422)
)
def list_searches(
    request: Request,
    reads: ReadsDep,
    owner: ListedOwner,
    after: PagePosition,
    id_prefix: IdPrefix = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> SearchList:
    """Your searches, newest first; an admin sees everyone's, or one user's with `owner`.
    Page on with the `next` link."""
    found, total = reads.list_searches(limit + 1, offset, owner, after, id_prefix)
    return SearchList(
        searches=[SearchSummary.of(search) for search in found[:limit]],
        total=total,
        limit=limit,
        offset=offset,
        next=next_link(request, found, limit),
    )


@router.get(
    "/v1/searches/{search_id}",
    name="searches-get",
    response_model=SearchRead,
    responses=errors(404, 422),
)
def get_search(search: SearchDep, progress: ProgressDep) -> SearchRead:
    """The search: status, its trials per state, and the best trial so far on validation."""
    return _read(progress, search)


@router.get(
    "/v1/searches/{search_id}/trials",
    name="searches-trials",
    response_model=TrialList,
    responses=errors(404, 422),
)
def get_trials(search: SearchDep, progress: ProgressDep) -> TrialList:
    """Every trial: its sampled parameters, state, rung and validation objective by epoch."""
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


@router.get(
    "/v1/searches/{search_id}/report",
    name="searches-report",
    response_model=SearchReport,
    responses=errors(404, 422),
)
def get_report(search: SearchDep, progress: ProgressDep, reads: ReadsDep) -> SearchReport:
    """What was selected on validation, and the confirmation on fresh seeds: each chosen
    configuration's and the base's test accuracy, with paired intervals against the base
    and each other, and how much the best trial's own score overstated it. Fills in as the
    confirmation's jobs end."""
    return search_report(progress.searches, reads, search)


@router.post(
    "/v1/searches/{search_id}/cancel",
    name="searches-cancel",
    response_model=SearchRead,
    responses=errors(404, 422),
)
def cancel_search(search: SearchDep, progress: ProgressDep) -> SearchRead:
    """Cancel the search and its jobs that have not ended, paused trials included; an ended
    search stays as it ended."""
    search = progress.searches.cancel(search.id) or search
    log.info("search=%s cancelled", search.id)
    return _read(progress, search)


def _read(progress: ProgressDep, search: Search) -> SearchRead:
    trials = progress.searches.trials(search.id)
    states = Counter(trial.state for trial in trials)
    return SearchRead(
        **SearchSummary.of(search).model_dump(),
        request=search.request,
        trials={**states, "total": len(trials)},
        best=best_trial(search, trials, progress.searches.jobs(search.id)),
    )

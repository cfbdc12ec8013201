"""Searches: sample configurations with Optuna, stop the weak ones at ASHA's rungs, then confirm
the best on fresh seeds. Create, list, read, follow the trials, read the report, cancel; the
trials and the report as CSV (their plots are with the others, in service/routes/plots.py)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from analysis.report import csv_table
from core.cost import refusals
from search import plots as search_plots
from search.progress import search_report
from search.report import Interval, SearchReport
from search.spec import SearchSpec, corners
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
    csv_response,
    get_caller,
    next_link,
    no_unknown_query,
    search_read,
    search_trials,
)
from service.errors import BODY, errors, refused
from service.schemas import (
    IdPrefix,
    SearchList,
    SearchRead,
    SearchSummary,
    TrialList,
)

log = logging.getLogger("tricklab.service")
router = APIRouter(tags=["searches"], dependencies=[Depends(get_caller), Depends(no_unknown_query)])
CSV = {"content": {"text/csv": {"schema": {"type": "string"}}}}


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
    # Each key at each end of its range must train here: one that cannot is refused now, with
    # the limit it passes, rather than trial after trial.
    for key, spec in corners(search):
        if found := refusals(spec, settings):
            raise refused(found, within=("space", key))
    name = search.name or f"search {search.sampler}"
    row = progress.searches.create(caller.name, name, search.model_dump(mode="json"))
    try:
        row = progress.advance(row.id) or row
    except Exception:  # stored all the same: the API's next round of searches tries again
        log.warning("search=%s: its first trials could not be asked", row.id, exc_info=True)
    log.info("search=%s created owner=%s", row.id, caller.name)
    response.headers["Location"] = f"/v1/searches/{row.id}"
    return search_read(progress, row)


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
    return search_read(progress, search)


@router.get(
    "/v1/searches/{search_id}/trials",
    name="searches-trials",
    response_model=TrialList,
    responses=errors(404, 422),
)
def get_trials(search: SearchDep, progress: ProgressDep) -> TrialList:
    """Every trial: its sampled parameters, state, rung and validation objective by epoch."""
    return search_trials(progress, search)


@router.get(
    "/v1/searches/{search_id}/trials.csv",
    name="searches-trials-csv",
    response_class=Response,
    responses={200: CSV, **errors(404, 422)},
)
def get_trials_csv(search: SearchDep, progress: ProgressDep) -> Response:
    """The trials as CSV, one row per trial: its number, state, rung and that rung's epochs,
    the epochs it trained so far, its job, its value of each key of the space (lists and true
    or false as JSON), its validation objective at the last epoch it trained, and its error."""
    trials = search_trials(progress, search)
    keys = list(SearchSpec.model_validate(search.request).space)
    header = ["number", "state", "rung", "rung_epochs", "epochs", "job_id", *keys]
    rows = [
        [
            trial.number,
            trial.state,
            trial.rung,
            trial.rung_epochs,
            max(trial.values, default=0),
            trial.job_id,
            *_params(trial.params, keys),
            search_plots.last(trial) if trial.values else None,
            trial.error,
        ]
        for trial in trials.trials
    ]
    table = csv_table([*header, trials.objective, "error"], rows)
    return csv_response(table, f"search-{search.id}-trials.csv")


@router.get(
    "/v1/searches/{search_id}/report",
    name="searches-report",
    response_model=SearchReport,
    responses=errors(404, 422),
)
def get_report(search: SearchDep, progress: ProgressDep) -> SearchReport:
    """What was selected on validation, and the confirmation on fresh seeds: each chosen
    configuration's and the base's test accuracy, with paired intervals against the base
    and each other, and how much the best trial's own score overstated it. Fills in as the
    confirmation's jobs end."""
    return search_report(progress.searches, search)


@router.get(
    "/v1/searches/{search_id}/report.csv",
    name="searches-report-csv",
    response_class=Response,
    responses={200: CSV, **errors(404, 422)},
)
def get_report_csv(search: SearchDep, progress: ProgressDep) -> Response:
    """The confirmation as CSV, one row per configuration (the base first): its trial, its
    value of each key of the space, its test accuracy on the fresh seeds, and its effect, the
    paired difference in test accuracy from the base, with its p-value and verdict."""
    found = search_report(progress.searches, search)
    keys = list(SearchSpec.model_validate(search.request).space)
    header = ["name", "trial", *keys]
    header += [f"test_accuracy_{part}" for part in ("mean", "low", "high", "n")]
    header += [f"effect_{part}" for part in ("mean", "low", "high", "n", "p_value", "verdict")]
    rows = []
    for confirmed in found.confirmed:
        effect = next((e for e in confirmed.effects if e.against == "base"), None)
        rows.append(
            [
                confirmed.name,
                confirmed.trial,
                *_params(confirmed.params, keys),
                *_interval(confirmed.test_accuracy),
                *_interval(effect.difference if effect else None),
                effect.p_value if effect else None,
                effect.verdict if effect else None,
            ]
        )
    return csv_response(csv_table(header, rows), f"search-{search.id}-report.csv")


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
    return search_read(progress, search)


def _params(params: dict[str, Any], keys: list[str]) -> list[Any]:
    """A configuration's value of each key as CSV cells: lists, true and false as JSON; empty
    where it has none (the base's)."""
    return [
        json.dumps(params[key]) if isinstance(params.get(key), list | bool) else params.get(key)
        for key in keys
    ]


def _interval(found: Interval | None) -> list[Any]:
    return [found.mean, found.low, found.high, found.n] if found else [None] * 4

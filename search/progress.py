"""Advancing searches: the stored rows turned into the planner's view, its plan turned back
into rows and moves, inside the transaction jobqueue.searches holds. The service advances a
search when it is created and every few seconds; a worker, whenever it settles one of its jobs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

from core.config import Settings
from core.cost import refusals
from core.spec import JobSpec
from jobqueue.models import Job, Search, Trial, utcnow
from jobqueue.searches import Loaded, Moves, Searches
from jobqueue.store import queued
from search.planner import JobView, Plan, SearchView, TrialView, final_value, plan, ranked
from search.report import BestTrial, SearchReport, report
from search.space import decoded
from search.spec import SearchSpec
from search.states import ENDED, SearchStatus, TrialState

log = logging.getLogger("tricklab.search")


class Progress:
    """Advances searches with this deployment's limits and quotas."""

    def __init__(self, searches: Searches, settings: Settings) -> None:
        self.searches, self.settings = searches, settings

    def advance(self, search_id: str) -> Search | None:
        return self.searches.advance(search_id, self.settings.quota_active_jobs, self._decide)

    def advance_all(self) -> None:
        """Every search that has not ended: the catch-up after restarts and lost workers."""
        for search_id in self.searches.unended():
            try:
                self.advance(search_id)
            except Exception:  # one search's trouble must not hold up the others
                log.warning("search=%s could not be advanced", search_id, exc_info=True)

    def check(self, spec: JobSpec) -> str | None:
        found = refusals(spec, self.settings)
        return "; ".join(refusal.message for refusal in found) or None

    def _decide(self, loaded: Loaded) -> Moves:
        view = _view(loaded)
        decided = plan(view, self.check)
        return _apply(loaded, view, decided, self.searches.max_attempts)


def best_trial(search: Search, trials: Sequence[Trial], jobs: dict[str, Job]) -> BestTrial | None:
    """The completed trial ranked first on validation so far, or None."""
    view = _view(Loaded(search, list(trials), jobs, {}, 0))
    best = next(iter(ranked(view)), None)
    if best is None:
        return None
    return BestTrial(
        trial=best.number,
        job_id=best.job_id,
        params=decoded(best.params),
        value=final_value(view, best),
    )


def search_report(searches: Searches, search: Search) -> SearchReport:
    """The search's report so far, from what is stored."""
    jobs = searches.jobs(search.id)
    return report(search, jobs, best_trial(search, searches.trials(search.id), jobs))


def _view(loaded: Loaded) -> SearchView:
    spec = SearchSpec.model_validate(loaded.search.request)
    column = 1 if spec.objective == "val_accuracy" else 0
    jobs = {
        job.id: JobView(
            status=job.status,
            best_epoch=job.best_epoch,
            stopped_epoch=job.stopped_epoch,
            error=job.error_message,
            final=getattr(job.result, spec.objective) if job.result else None,
            values={
                epoch: value
                for epoch, row in loaded.metrics.get(job.id, {}).items()
                if (value := row[column]) is not None
            },
        )
        for job in loaded.jobs.values()
    }
    trials = [
        TrialView(
            number=row.number,
            params=dict(row.params),
            sampler_attrs=dict(row.sampler_attrs),
            state=TrialState(row.state),
            rung=row.rung,
            values={int(epoch): value for epoch, value in row.values.items()},
            job_id=row.job_id,
            error=row.error,
        )
        for row in loaded.trials
    ]
    return SearchView(
        spec,
        SearchStatus(loaded.search.status),
        trials,
        jobs,
        loaded.headroom,
        copy.deepcopy(loaded.search.confirmations),
        loaded.search.seeds,
    )


def _apply(loaded: Loaded, view: SearchView, decided: Plan, max_attempts: int) -> Moves:
    """The plan as rows: trials updated or added, jobs queued, the search's fields set."""
    search = loaded.search
    owner = search.owner or ""
    moves = Moves(promote=decided.promote, end=decided.end)
    trial_jobs: dict[int, str] = {}
    confirmations = decided.confirmations
    for new in decided.jobs:
        job = queued(new.spec, owner, max_attempts)
        job.epoch_limit = new.epoch_limit
        moves.add.append(job)
        if new.trial is not None:
            trial_jobs[new.trial] = job.id
        elif confirmations is not None and new.confirmation is not None:
            confirmations[new.confirmation]["jobs"].append(job.id)
    rows = {row.number: row for row in loaded.trials}
    for trial in view.trials:
        values = {str(epoch): value for epoch, value in sorted(trial.values.items())}
        if trial.new:
            moves.add.append(
                Trial(
                    search_id=search.id,
                    number=trial.number,
                    job_id=trial_jobs.get(trial.number),
                    params=trial.params,
                    sampler_attrs=trial.sampler_attrs,
                    state=trial.state.value,
                    rung=trial.rung,
                    values=values,
                    error=trial.error,
                    created_at=utcnow(),
                )
            )
            continue
        row = rows[trial.number]
        row.state, row.rung, row.values, row.error = (
            trial.state.value,
            trial.rung,
            values,
            trial.error,
        )
    if decided.status != search.status:
        log.info("search=%s %s → %s", search.id, search.status, decided.status.value)
    search.status = decided.status.value
    search.error = decided.error
    search.confirmations = copy.deepcopy(confirmations)
    search.seeds = decided.seeds
    if decided.status in ENDED:
        search.finished_at = utcnow()
    return moves

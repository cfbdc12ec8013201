"""What a search does next, decided from what its jobs have done: a pure function of the
search's stored state (jobqueue.searches loads it and applies the plan in one transaction).

Optuna does the maths and nothing else. For every decision a fresh in-memory Optuna study is
rebuilt from the stored trials: its sampler asks for new configurations (seeded by the trial's
number, so the same history always asks the same), and its successive-halving pruner says
whether a trial paused at a rung is among the best 1/η there, i.e. promoted. ASHA's pause and
promotion, the jobs and the queue stay tricklab's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import TrialState as OptunaState

from core.spec import JobSpec
from jobqueue.states import JobStatus
from search import space
from search.spec import SearchSpec
from search.states import FINAL, IN_FLIGHT, SearchStatus, TrialState


@dataclass(frozen=True)
class JobView:
    """What the planner reads of one of the search's jobs."""

    status: JobStatus
    best_epoch: int | None = None
    stopped_epoch: int | None = None  # early stopping ended it there
    error: str | None = None
    values: dict[int, float] = field(default_factory=dict)  # the objective by epoch
    final: float | None = None  # the objective of its saved model (early stopping's best)


@dataclass
class TrialView:
    """A trial as stored; the planner updates state, rung and values in place."""

    number: int
    params: dict[str, Any]  # Optuna's, by space key
    sampler_attrs: dict[str, Any]
    state: TrialState
    rung: int = 0  # the index of the rung it trains towards, or stopped at
    values: dict[int, float] = field(default_factory=dict)
    job_id: str | None = None
    error: str | None = None
    new: bool = False  # asked in this plan: the trial row and its job are to be stored


@dataclass(frozen=True)
class NewJob:
    """A job to queue: a new trial's (`trial`), or a confirmation's (`confirmation`, an index
    into the confirmations)."""

    spec: JobSpec
    epoch_limit: int | None = None
    trial: int | None = None
    confirmation: int | None = None


@dataclass
class Plan:
    status: SearchStatus
    error: str | None = None
    jobs: list[NewJob] = field(default_factory=list)
    promote: dict[str, int | None] = field(default_factory=dict)  # job → its new epoch limit
    end: list[str] = field(default_factory=list)  # paused jobs to end where they stopped
    confirmations: list[dict[str, Any]] | None = None
    seeds: list[int] | None = None


@dataclass
class SearchView:
    spec: SearchSpec
    status: SearchStatus
    trials: list[TrialView]
    jobs: dict[str, JobView]  # every job of the search, by id
    headroom: int  # jobs the owner's quota still admits
    confirmations: list[dict[str, Any]] | None = None
    seeds: list[int] | None = None


# Why a configuration cannot train here (a cost limit), or None.
Check = Callable[[JobSpec], str | None]
# Configurations refused in one plan before the rest are left to the next.
MAX_REFUSED = 16


def plan(search: SearchView, check: Check) -> Plan:
    """The next moves of a search that has not ended."""
    result = Plan(search.status, confirmations=search.confirmations, seeds=search.seeds)
    for trial in search.trials:
        _observe(search, trial)
    if result.status == SearchStatus.QUEUED and any(
        job.status != JobStatus.QUEUED for job in search.jobs.values()
    ):
        result.status = SearchStatus.SEARCHING
    slots = min(search.headroom, search.spec.max_concurrent_trials - _in_flight(search))
    slots = max(0, slots - _confirming(search))  # a lowered quota may leave fewer than none
    if result.status in (SearchStatus.QUEUED, SearchStatus.SEARCHING):
        promoted, waiting = _promote(search, result, slots)
        _ask(search, result, slots - promoted, check)
        idle = _in_flight(search) == 0 and not (promoted or waiting or _may_ask(search))
        if idle and not _finish_one(search, result, slots):
            _end_search_phase(search, result)
    if result.status == SearchStatus.CONFIRMING:
        _confirm(search, result, slots)
    return result


def _observe(search: SearchView, trial: TrialView) -> None:
    """The trial's state and values as its job now stands."""
    if trial.state in FINAL or trial.job_id is None:
        return
    job = search.jobs[trial.job_id]
    trial.values = {**trial.values, **job.values}
    if job.status == JobStatus.PAUSED:
        trial.state = TrialState.PAUSED
    elif job.status == JobStatus.SUCCEEDED:
        trial.state = TrialState.COMPLETED
    elif job.status == JobStatus.FAILED:
        trial.state, trial.error = TrialState.FAILED, job.error
    elif job.status == JobStatus.CANCELLED:
        trial.state = TrialState.CANCELLED


def _in_flight(search: SearchView) -> int:
    return sum(trial.state in IN_FLIGHT for trial in search.trials)


def _confirming(search: SearchView) -> int:
    """The confirmation's jobs queued or training: they share max_concurrent_trials."""
    ids = [job_id for c in search.confirmations or [] for job_id in c["jobs"]]
    return sum(search.jobs[job_id].status not in _ENDED_JOB for job_id in ids)


def _promote(search: SearchView, result: Plan, slots: int) -> tuple[int, bool]:
    """Promote the paused trials the pruner lets through, the highest rungs first: ASHA
    resumes a promising trial before it starts a new one. Returns how many, and whether one
    more would go on but for a free slot (the search phase is then not over)."""
    rungs = search.spec.rungs()
    paused = sorted(_paused(search), key=_standing(search))
    # The pruner's bar at a rung is the same for every trial paused there: once one fails
    # it, the worse ones below it would too.
    blocked: set[int] = set()
    promoted = 0
    for trial in paused:
        if trial.rung in blocked:
            continue
        study = _study(search, evaluating=trial.number)
        if study.pruner.prune(study, study.trials[trial.number]):
            blocked.add(trial.rung)  # not among the best 1/η of its rung: it waits
            continue
        if promoted >= slots:
            return promoted, True
        assert trial.job_id is not None
        trial.state, trial.rung = TrialState.PROMOTED, trial.rung + 1
        result.promote[trial.job_id] = _limit(rungs, trial.rung)
        promoted += 1
    return promoted, False


def _paused(search: SearchView) -> list[TrialView]:
    return [trial for trial in search.trials if trial.state == TrialState.PAUSED]


def _standing(search: SearchView) -> Callable[[TrialView], tuple[int, float]]:
    """A paused trial's place in line for promotion: the highest rung first, then the best
    objective there."""
    rungs, sign = search.spec.rungs(), _sign(search.spec)
    return lambda trial: (-trial.rung, sign * -trial.values[rungs[trial.rung]])


def _finish_one(search: SearchView, result: Plan, slots: int) -> bool:
    """With nothing left to train or ask and no trial completed, the best paused trial of the
    highest rung goes on regardless (fewer than η may have reached its rung), so that the
    search has a configuration to confirm. Whether one went on, or waits for a slot."""
    paused = _paused(search)
    if not paused or any(t.state == TrialState.COMPLETED for t in search.trials):
        return False
    if slots > 0:
        rungs = search.spec.rungs()
        best = min(paused, key=_standing(search))
        assert best.job_id is not None
        best.state, best.rung = TrialState.PROMOTED, best.rung + 1
        result.promote[best.job_id] = _limit(rungs, best.rung)
    return True


def _ask(search: SearchView, result: Plan, slots: int, check: Check) -> None:
    """Sample new trials into the free slots; a configuration that cannot train is a failed
    trial, and the next one is asked, up to MAX_REFUSED a plan (the rest wait for the next:
    a plan runs inside the search's write transaction)."""
    spec = search.spec
    distributions = space.distributions(spec)
    study = _study(search)  # each asked trial joins it, running or failed
    refused = 0
    while slots > 0 and refused < MAX_REFUSED and _may_ask(search):
        number = len(search.trials)
        study.sampler = space.sampler(spec, number)
        asked = study.ask(distributions)
        trial = TrialView(
            number,
            asked.params,
            {k: v for k, v in study.trials[-1].system_attrs.items() if not _rung_attr(k)},
            TrialState.RUNNING,
            new=True,
        )
        search.trials.append(trial)
        try:
            job_spec = space.trial_spec(spec.base, asked.params)
            trial.error = check(job_spec)
        except ValueError as error:
            trial.error = str(error)
        if trial.error is not None:
            trial.state = TrialState.FAILED
            study.tell(asked, state=OptunaState.FAIL)
            refused += 1
            continue
        result.jobs.append(NewJob(job_spec, _limit(spec.rungs(), 0), trial=number))
        slots -= 1


def _may_ask(search: SearchView) -> bool:
    return len(search.trials) < search.spec.trial_limit


def _end_search_phase(search: SearchView, result: Plan) -> None:
    """Nothing trains and nothing more may start: the paused trials are pruned where they
    stopped, and the best configurations go to confirmation."""
    for trial in search.trials:
        if trial.state == TrialState.PAUSED:
            assert trial.job_id is not None
            trial.state = TrialState.PRUNED
            result.end.append(trial.job_id)
    chosen = _best(search)
    if not chosen:
        result.status = SearchStatus.FAILED
        result.error = "no trial completed, so there is nothing to confirm; see the trials"
        return
    base = search.spec.base
    result.seeds = search.spec.confirmation_seeds
    result.confirmations = [_confirmation("base", None, {}, base)] + [
        _confirmation(
            f"trial {trial.number}",
            trial.number,
            space.decoded(trial.params),
            space.trial_spec(base, trial.params),
        )
        for trial in chosen
    ]
    result.status = SearchStatus.CONFIRMING


def ranked(search: SearchView) -> list[TrialView]:
    """The completed trials, best first by their objective on validation."""
    completed = [t for t in search.trials if t.state == TrialState.COMPLETED]
    completed = [t for t in completed if not math.isnan(final_value(search, t))]
    return sorted(completed, key=lambda t: _sign(search.spec) * -final_value(search, t))


def _best(search: SearchView) -> list[TrialView]:
    """The best configurations, at most `confirm.top`, each distinct and not the base's: the
    completed trials by their objective, then (ASHA completes few) those stopped at a rung, the
    highest rung first and the best objective there. The confirmation trains every one to the
    end, so a configuration stopped early competes on equal terms there."""
    stopped = [t for t in search.trials if t.state in (TrialState.PAUSED, TrialState.PRUNED)]
    seen = {_key(search.spec.base)}
    chosen = []
    for trial in ranked(search) + sorted(stopped, key=_standing(search)):
        key = _key(space.trial_spec(search.spec.base, trial.params))
        if key not in seen:
            seen.add(key)
            chosen.append(trial)
    return chosen[: search.spec.confirm.top]


def _confirmation(
    name: str, trial: int | None, params: dict[str, Any], spec: JobSpec
) -> dict[str, Any]:
    return {"name": name, "trial": trial, "params": params, "spec": spec.template(), "jobs": []}


def _key(spec: JobSpec) -> str:
    return spec.model_copy(update={"seed": 0}).model_dump_json()


def _confirm(search: SearchView, result: Plan, slots: int) -> None:
    """Queue the confirmation's jobs, seed by seed, as slots free; once all have ended, the
    search has too."""
    assert result.confirmations is not None and result.seeds is not None
    queued = {job.confirmation for job in result.jobs}
    for index, seed in enumerate(result.seeds):
        for number, confirmation in enumerate(result.confirmations):
            if len(confirmation["jobs"]) > index or slots <= 0:
                continue
            if number in queued:  # one job a confirmation a plan: its list grows in order
                continue
            document = {**confirmation["spec"], "seed": seed}
            result.jobs.append(NewJob(JobSpec.model_validate(document), confirmation=number))
            queued.add(number)
            slots -= 1
    ids = [job_id for c in result.confirmations for job_id in c["jobs"]]
    complete = all(len(c["jobs"]) == len(result.seeds) for c in result.confirmations)
    statuses = [search.jobs[job_id].status for job_id in ids if job_id in search.jobs]
    if complete and not result.jobs and all(s in _ENDED_JOB for s in statuses):
        failed = sum(status != JobStatus.SUCCEEDED for status in statuses)
        if failed:
            result.status = SearchStatus.FAILED
            result.error = f"{failed} of the confirmation's {len(ids)} jobs did not succeed"
        else:
            result.status = SearchStatus.SUCCEEDED


_ENDED_JOB = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def final_value(search: SearchView, trial: TrialView) -> float:
    """A completed trial's objective: its saved model's (the best epoch's weights under early
    stopping), else at its last epoch."""
    job = search.jobs.get(trial.job_id or "")
    if job is not None and job.final is not None:
        return job.final
    return trial.values[max(trial.values)] if trial.values else math.nan


def _sign(spec: SearchSpec) -> int:
    return 1 if space.direction(spec) == "maximize" else -1


def _limit(rungs: list[int], rung: int) -> int | None:
    """The epoch limit of a job training towards this rung; None for the last: all epochs."""
    return rungs[rung] if rung < len(rungs) - 1 else None


def _rung_attr(key: str) -> bool:
    return key.startswith("completed_rung_")


def _study(search: SearchView, evaluating: int | None = None) -> optuna.Study:
    """The search so far as a fresh in-memory Optuna study. `evaluating`: a paused trial to
    put to the pruner, added running with its values up to its rung and without its verdict
    there, so that the pruner compares it with every other trial that reached that rung."""
    spec = search.spec
    study = optuna.create_study(
        direction=space.direction(spec), sampler=space.sampler(spec, 0), pruner=space.pruner(spec)
    )
    distributions = space.distributions(spec)
    rungs = spec.rungs()
    now = datetime.now()
    for trial in search.trials:
        evaluated = trial.number == evaluating
        values = trial.values
        if evaluated:
            values = {e: v for e, v in values.items() if e <= rungs[trial.rung]}
        passed = trial.rung + (trial.state in (TrialState.PAUSED, TrialState.PRUNED))
        if trial.state == TrialState.COMPLETED:
            passed = len(rungs) - 1
        if evaluated:
            passed = trial.rung
        elif trial.state in (TrialState.FAILED, TrialState.CANCELLED):
            passed = 0  # a trial that cannot go on keeps no place at a rung from another
        attrs = {
            f"completed_rung_{k}": values[rungs[k]]
            for k in range(min(passed, len(rungs) - 1))
            if rungs[k] in values
        }
        state = _optuna_state(trial.state, evaluated)
        value = final_value(search, trial) if state == OptunaState.COMPLETE else None
        if value is not None and math.isnan(value):
            state, value = OptunaState.FAIL, None
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=trial.number,
                trial_id=trial.number,
                state=state,
                value=value,
                values=None,
                datetime_start=now,
                datetime_complete=now if state.is_finished() else None,
                params=trial.params,
                distributions={k: distributions[k] for k in trial.params},
                user_attrs={},
                system_attrs={**trial.sampler_attrs, **attrs},
                intermediate_values=values,
            )
        )
    return study


def _optuna_state(state: TrialState, evaluated: bool) -> OptunaState:
    if evaluated or state in IN_FLIGHT:
        return OptunaState.RUNNING
    if state == TrialState.COMPLETED:
        return OptunaState.COMPLETE
    if state in (TrialState.PAUSED, TrialState.PRUNED):
        return OptunaState.PRUNED  # the sampler learns from where it stopped
    return OptunaState.FAIL

"""The search planner as a pure function: ASHA's promotions through Optuna's pruner, the slots
it fills, the end of the search phase, and the confirmation on fresh seeds."""

from __future__ import annotations

from jobqueue.states import JobStatus
from search.planner import MAX_REFUSED, JobView, SearchView, TrialView, plan
from search.spec import SearchSpec
from search.states import SearchStatus, TrialState

SPEC = SearchSpec.model_validate(
    {
        "base": {"epochs": 9, "validation_size": 100, "hidden_units": [8]},
        "space": {"learning_rate": {"type": "log_uniform", "low": 0.001, "high": 0.1}},
        "max_trials": 6,
        "max_concurrent_trials": 2,
        "scheduler": {"type": "asha", "min_epochs": 1, "eta": 3},
        "confirm": {"top": 1, "repeats": 3},
    }
)


def never(_spec):
    return None


def trial(number, state, rung, values, job_status, **job):
    view = TrialView(
        number,
        {"learning_rate": 0.001 * (number + 1)},
        {},
        state,
        rung,
        job_id=f"j{number}",
    )
    return view, JobView(job_status, values=values, **job)


def search_of(*trials, headroom=100, status=SearchStatus.SEARCHING):
    return SearchView(
        SPEC,
        status,
        [view for view, _ in trials],
        {view.job_id: job for view, job in trials},
        headroom,
    )


def test_the_first_trials_fill_the_slots_and_stop_at_the_first_rung():
    decided = plan(search_of(status=SearchStatus.QUEUED), never)
    assert [job.trial for job in decided.jobs] == [0, 1]  # max_concurrent_trials
    assert {job.epoch_limit for job in decided.jobs} == {1}
    assert decided.status == SearchStatus.QUEUED


def test_the_quota_bounds_the_trials_asked():
    assert len(plan(search_of(headroom=1), never).jobs) == 1
    assert plan(search_of(headroom=0), never).jobs == []


def test_a_paused_trial_is_promoted_only_among_the_best_of_its_rung():
    # Three trials reached rung 0 (1 epoch): only the best third goes on, to rung 1 (3 epochs).
    best = trial(0, TrialState.RUNNING, 0, {1: 0.9}, JobStatus.PAUSED)
    worse = trial(1, TrialState.RUNNING, 0, {1: 0.5}, JobStatus.PAUSED)
    worst = trial(2, TrialState.PAUSED, 0, {1: 0.4}, JobStatus.PAUSED)
    search = search_of(best, worse, worst)
    decided = plan(search, never)
    assert decided.promote == {"j0": 3}
    assert [t.state for t in search.trials[:3]] == [
        TrialState.PROMOTED,
        TrialState.PAUSED,
        TrialState.PAUSED,
    ]
    assert [job.trial for job in decided.jobs] == [3]  # the other slot: a new trial


def test_once_nothing_trains_or_may_start_the_paused_are_pruned_and_the_best_confirmed():
    trials = [trial(n, TrialState.PAUSED, 0, {1: 0.1 * n}, JobStatus.PAUSED) for n in range(1, 5)]
    trials += [
        trial(0, TrialState.RUNNING, 2, {1: 0.9, 3: 0.92, 9: 0.95}, JobStatus.SUCCEEDED),
        trial(5, TrialState.RUNNING, 2, {1: 0.8, 3: 0.85, 9: 0.97}, JobStatus.SUCCEEDED),
    ]
    trials.sort(key=lambda pair: pair[0].number)
    search = search_of(*trials)
    # The paused ones are no better than 1/3 of rung 0: nothing is promoted.
    decided = plan(search, never)
    assert decided.promote == {}
    assert sorted(decided.end) == ["j1", "j2", "j3", "j4"]
    assert decided.status == SearchStatus.CONFIRMING
    assert decided.seeds == [1, 2, 3]  # base.seed 0 trained every trial
    assert [c["name"] for c in decided.confirmations] == ["base", "trial 5"]
    # Seed by seed, within the slots: the base and trial 5 on seed 1 first.
    assert [(job.confirmation, job.spec.seed) for job in decided.jobs] == [(0, 1), (1, 1)]


def test_a_configuration_that_cannot_train_is_a_failed_trial_and_the_next_is_asked():
    refusals = iter(["over the limit"])
    decided = plan(search_of(), lambda spec: next(refusals, None))
    assert [job.trial for job in decided.jobs] == [1, 2]


def test_the_confirmation_ends_when_its_jobs_have():
    search = search_of(status=SearchStatus.CONFIRMING)
    search.seeds = [1, 2]
    search.confirmations = [
        {
            "name": "base",
            "trial": None,
            "params": {},
            "spec": SPEC.base.template(),
            "jobs": ["a", "b"],
        },
        {
            "name": "trial 0",
            "trial": 0,
            "params": {},
            "spec": SPEC.base.template(),
            "jobs": ["c", "d"],
        },
    ]
    search.jobs = {job_id: JobView(JobStatus.SUCCEEDED) for job_id in "abcd"}
    assert plan(search, never).status == SearchStatus.SUCCEEDED
    search.jobs["d"] = JobView(JobStatus.RUNNING)
    assert plan(search, never).status == SearchStatus.CONFIRMING
    search.jobs["d"] = JobView(JobStatus.FAILED)
    failed = plan(search, never)
    assert failed.status == SearchStatus.FAILED and "1 of the confirmation's 4" in failed.error


def test_the_confirmation_keeps_within_the_concurrent_trials():
    search = search_of(status=SearchStatus.CONFIRMING)
    search.seeds = [1, 2, 3]
    spec = SPEC.base.template()
    search.confirmations = [
        {"name": "base", "trial": None, "params": {}, "spec": spec, "jobs": ["a"]},
        {"name": "trial 0", "trial": 0, "params": {}, "spec": spec, "jobs": ["c"]},
    ]
    search.jobs = {"a": JobView(JobStatus.RUNNING), "c": JobView(JobStatus.QUEUED)}
    assert plan(search, never).jobs == []  # both of max_concurrent_trials' 2 slots are taken
    search.jobs["a"] = JobView(JobStatus.SUCCEEDED)
    assert [(j.confirmation, j.spec.seed) for j in plan(search, never).jobs] == [(0, 2)]


def four_paused():
    """max_trials reached: four trials paused at rung 0, trial 0 the best."""
    spec = SearchSpec.model_validate({**SPEC.model_dump(mode="json"), "max_trials": 4})
    trials = [
        trial(n, TrialState.PAUSED, 0, {1: 0.9 - 0.1 * n}, JobStatus.PAUSED) for n in range(4)
    ]
    return spec, trials


def test_a_full_quota_for_a_moment_does_not_end_the_search_phase():
    spec, trials = four_paused()
    search = search_of(*trials, headroom=0)
    search.spec = spec
    decided = plan(search, never)
    assert (decided.promote, decided.end, decided.status) == ({}, [], SearchStatus.SEARCHING)
    search = search_of(*four_paused()[1], headroom=1)
    search.spec = spec
    assert plan(search, never).promote == {"j0": 3}  # once a slot frees


def test_a_quota_lowered_below_the_active_jobs_promotes_nothing():
    spec, _ = four_paused()
    trials = [trial(n, TrialState.PAUSED, 0, {1: 0.5}, JobStatus.PAUSED) for n in range(4)]
    search = search_of(*trials, headroom=-1)
    search.spec = spec
    assert plan(search, never).promote == {}


def test_a_trial_cancelled_after_its_promotion_keeps_no_place_at_its_rung():
    spec = SearchSpec.model_validate({**SPEC.model_dump(mode="json"), "max_trials": 3})
    cancelled = trial(0, TrialState.PROMOTED, 1, {1: 0.9, 2: 0.91}, JobStatus.CANCELLED)
    paused = [trial(n, TrialState.PAUSED, 0, {1: 0.9 - 0.1 * n}, JobStatus.PAUSED) for n in (1, 2)]
    search = search_of(cancelled, *paused)
    search.spec = spec
    decided = plan(search, never)
    assert decided.promote == {"j1": 3}  # the best of those left goes on in its place


def test_refused_configurations_are_asked_a_bounded_number_of_times_a_plan():
    search = search_of()
    search.spec = SearchSpec.model_validate({**SPEC.model_dump(mode="json"), "max_trials": 100})
    decided = plan(search, lambda spec: "over a limit")
    assert decided.jobs == []
    assert len(search.trials) == MAX_REFUSED  # the rest are asked by later plans
    assert {t.state for t in search.trials} == {TrialState.FAILED}
    assert decided.status == SearchStatus.SEARCHING
    # once every trial has been refused, the search has failed
    search.spec = SPEC
    assert plan(search_of(), lambda spec: "over a limit").status == SearchStatus.FAILED


def test_no_trial_goes_on_from_a_rung_before_eta_trials_have_reached_it():
    first = trial(0, TrialState.RUNNING, 0, {1: 0.9}, JobStatus.PAUSED)
    second = trial(1, TrialState.RUNNING, 0, {1: 0.5}, JobStatus.PAUSED)
    decided = plan(search_of(first, second), never)
    assert decided.promote == {}  # 2 of eta 3: the best so far waits too
    assert [job.trial for job in decided.jobs] == [2, 3]  # the slots go to new trials


def test_the_confirmation_takes_the_completed_then_the_highest_stopped():
    spec = SearchSpec.model_validate(
        {**SPEC.model_dump(mode="json"), "max_trials": 4, "confirm": {"top": 3, "repeats": 2}}
    )
    trials = [
        trial(0, TrialState.PRUNED, 0, {1: 0.95}, JobStatus.SUCCEEDED),
        trial(1, TrialState.PRUNED, 1, {1: 0.8, 3: 0.82}, JobStatus.SUCCEEDED),
        trial(2, TrialState.RUNNING, 2, {1: 0.7, 3: 0.8, 9: 0.85}, JobStatus.SUCCEEDED),
        trial(3, TrialState.PRUNED, 1, {1: 0.9, 3: 0.88}, JobStatus.SUCCEEDED),
    ]
    for view, job in trials:  # a pruned trial's row holds its values
        view.values = dict(job.values)
    search = search_of(*trials)
    search.spec = spec
    decided = plan(search, never)
    names = [c["name"] for c in decided.confirmations]
    assert names == ["base", "trial 2", "trial 3", "trial 1"]  # rung 2, then rung 1 by value

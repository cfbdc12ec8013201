"""The bridge to Optuna: lists survive the round trip through its choices, every kind of key
makes the trial's job spec it should, and a study rebuilt from the same history asks the same
params, as the planner relies on after every restart."""

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from core.spec import ARCHITECTURE_DEFAULTS, Dropout, JobSpec, Momentum
from search import space
from search.spec import SearchSpec

RATE = {"type": "log_uniform", "low": 0.0001, "high": 0.1}
WIDTHS = {"type": "choice", "values": [[64], [128, 32], [256, 64]]}


def search(space_: dict, **fields) -> SearchSpec:
    return SearchSpec.model_validate({"space": space_, **fields})


def replay(spec: SearchSpec, trials: list[FrozenTrial], number: int) -> optuna.Study:
    """A fresh study holding the history, as the planner rebuilds it for every decision."""
    study = optuna.create_study(
        sampler=space.sampler(spec, number),
        pruner=space.pruner(spec),
        direction=space.direction(spec),
    )
    for trial in trials:
        study.add_trial(trial)
    return study


def stored(trial: FrozenTrial, state: TrialState, value: float | None = None) -> FrozenTrial:
    """The trial as the planner would store and replay it."""
    return create_trial(
        state=state,
        value=value,
        params=trial.params,
        distributions=trial.distributions,
        system_attrs=trial.system_attrs,
        intermediate_values=trial.intermediate_values,
    )


def run(spec: SearchSpec, states: list[TrialState]) -> list[FrozenTrial]:
    """Trials asked one at a time from rebuilt studies, then stored in the given states."""
    trials: list[FrozenTrial] = []
    for number, state in enumerate(states):
        study = replay(spec, trials, number)
        asked = study.ask(space.distributions(spec))
        assert asked.number == number
        value = None if state == TrialState.FAIL else 0.5 + 0.01 * (number % 7)
        trials.append(stored(study.trials[-1], state, value))
    return trials


def test_lists_travel_as_canonical_json_and_come_back():
    spec = search({"hidden_units": WIDTHS, "architecture": {"type": "choice", "values": ["mlp"]}})
    distributions = space.distributions(spec)
    assert distributions["hidden_units"] == optuna.distributions.CategoricalDistribution(
        ["[64]", "[128,32]", "[256,64]"]
    )
    params = {"hidden_units": [128, 32], "architecture": "mlp"}
    assert space.decoded({"hidden_units": "[128,32]", "architecture": "mlp"}) == params
    assert space.decoded(params) == params
    asked = optuna.create_study().ask(distributions)
    assert space.decoded(asked.params)["hidden_units"] in WIDTHS["values"]


def test_ranges_become_optunas_distributions():
    spec = search(
        {
            "learning_rate": RATE,
            "tricks.dropout.rate": {"type": "uniform", "low": 0.1, "high": 0.5},
            "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
            "tricks.early_stopping.patience": {"type": "int", "low": 2, "high": 5},
        }
    )
    assert space.distributions(spec) == {
        "learning_rate": optuna.distributions.FloatDistribution(0.0001, 0.1, log=True),
        "tricks.dropout.rate": optuna.distributions.FloatDistribution(0.1, 0.5),
        "batch_size": optuna.distributions.IntDistribution(16, 256, log=True),
        "tricks.early_stopping.patience": optuna.distributions.IntDistribution(2, 5),
    }


def test_spec_fields_are_set():
    trial = space.trial_spec(JobSpec(epochs=5), {"learning_rate": 0.03, "batch_size": 64})
    assert (trial.learning_rate, trial.batch_size, trial.epochs) == (0.03, 64, 5)


def test_a_trick_on_comes_with_its_defaults_and_its_own_learning_rate():
    trial = space.trial_spec(JobSpec(), {"tricks.momentum": True, "tricks.dropout": False})
    assert [t.name for t in trial.tricks] == ["momentum"]
    assert trial.trick(Momentum) == Momentum()
    assert trial.learning_rate == 0.01  # momentum's default, not Adam's carried over


def test_a_trick_parameter_puts_the_trick_on_unless_sampled_off():
    trial = space.trial_spec(JobSpec(tricks=["batch_norm"]), {"tricks.dropout.rate": 0.2})
    assert [t.name for t in trial.tricks] == ["dropout", "batch_norm"]
    assert trial.trick(Dropout) == Dropout(rate=0.2)
    on = space.trial_spec(JobSpec(), {"tricks.dropout": True, "tricks.dropout.rate": 0.2})
    assert on.trick(Dropout) == Dropout(rate=0.2)
    off = space.trial_spec(JobSpec(), {"tricks.dropout": False, "tricks.dropout.rate": 0.2})
    assert off.tricks == []


def test_optunas_encoded_lists_make_the_spec():
    trial = space.trial_spec(JobSpec(), {"hidden_units": "[256,64]"})
    assert trial.hidden_units == [256, 64]


@pytest.fixture
def cnn_dropout(monkeypatch):
    monkeypatch.setitem(ARCHITECTURE_DEFAULTS["cnn"], "dropout", {"rate": 0.25})


def test_added_tricks_take_the_architecture_defaults(cnn_dropout):
    base = JobSpec(architecture="cnn")
    assert space.trial_spec(base, {"tricks.dropout": True}).trick(Dropout) == Dropout(rate=0.25)
    spatial = space.trial_spec(base, {"tricks.dropout.spatial": True}).trick(Dropout)
    assert spatial == Dropout(rate=0.25, spatial=True)


def test_a_sampled_architecture_brings_its_own_shape_and_defaults(cnn_dropout):
    base = JobSpec(hidden_units=[512], tricks=["dropout", "momentum"], learning_rate=0.05)
    params = {"architecture": "cnn", "hidden_units": "[64]", "kernel_size": 5}
    trial = space.trial_spec(base, params)
    assert (trial.hidden_units, trial.conv_filters, trial.kernel_size) == (None, [32, 64], 5)
    assert trial.trick(Dropout) == Dropout(rate=0.25)
    assert (trial.trick(Momentum), trial.learning_rate) == (Momentum(), 0.05)
    mlp = space.trial_spec(base, {**params, "architecture": "mlp"})
    assert (mlp.hidden_units, mlp.kernel_size, mlp.trick(Dropout)) == ([64], None, Dropout())
    chosen = JobSpec(tricks=[{"name": "dropout", "rate": 0.3}])
    assert space.trial_spec(chosen, params).trick(Dropout) == Dropout(rate=0.3)


@pytest.mark.parametrize(
    ("base", "params", "reason"),
    [
        (
            JobSpec(architecture="cnn"),
            {"conv_filters": [8, 16, 32], "kernel_size": 5},
            "conv_filters, kernel_size: 3 conv blocks with 5×5 kernels leave no position",
        ),
        (JobSpec(), {"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        (
            JobSpec(),
            {"tricks.dropout.rate": 1.5},
            "tricks.dropout.rate: Input should be less than 1",
        ),
        (
            JobSpec(),
            {"tricks.dropout": "yes"},
            'tricks.dropout: a trick is on or off, true or false, not "yes"',
        ),
        (JobSpec(), {"kernel_size": 3}, "kernel_size: a field of architecture 'cnn', not of 'mlp'"),
    ],
)
def test_a_combination_that_is_no_job_spec_says_why(base, params, reason):
    with pytest.raises(ValueError) as caught:
        space.trial_spec(base, params)
    assert reason in str(caught.value)


def test_every_value_the_spec_accepts_makes_a_trial():
    spec = search(
        {
            "learning_rate": RATE,
            "hidden_units": WIDTHS,
            "tricks.momentum.nesterov": {"type": "choice", "values": [True, False]},
        }
    )
    for trial in run(spec, [TrialState.COMPLETE] * 5):
        job = space.trial_spec(spec.base, trial.params)
        assert job.hidden_units in WIDTHS["values"]
        assert 0.0001 <= (job.learning_rate or 0) <= 0.1


HISTORY = [TrialState.COMPLETE] * 11 + [TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING]


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_the_same_history_and_number_ask_the_same_params(sampler):
    spec = search({"learning_rate": RATE, "hidden_units": WIDTHS}, sampler=sampler, seed=7)
    trials = run(spec, HISTORY)
    number = len(trials)
    asks = [replay(spec, trials, number).ask(space.distributions(spec)).params for _ in range(2)]
    assert asks[0] == asks[1]
    again = run(spec, HISTORY)
    assert [t.params for t in again] == [t.params for t in trials]
    other = search({"learning_rate": RATE, "hidden_units": WIDTHS}, sampler=sampler, seed=8)
    assert [t.params for t in run(other, HISTORY)] != [t.params for t in trials]


def test_each_trial_number_draws_anew():
    spec = search({"learning_rate": RATE}, sampler="random")
    first = [replay(spec, [], number).ask(space.distributions(spec)).params for number in range(3)]
    assert len({params["learning_rate"] for params in first}) == 3


def test_the_grid_gives_each_configuration_once_in_its_first_trials():
    spec = search(
        {"hidden_units": WIDTHS, "learning_rate": {"type": "choice", "values": [0.01, 0.001]}},
        sampler="grid",
        seed=3,
    )
    states = [TrialState.RUNNING, TrialState.FAIL, TrialState.PRUNED] + [TrialState.COMPLETE] * 3
    trials = run(spec, states)
    configurations = {(t.params["hidden_units"], t.params["learning_rate"]) for t in trials}
    assert len(configurations) == spec.grid_size == 6
    assert [t.system_attrs["grid_id"] for t in trials] == list(range(6))
    assert trials[0].system_attrs["search_space"] == {
        "hidden_units": ["[64]", "[128,32]", "[256,64]"],
        "learning_rate": [0.01, 0.001],
    }
    # Past the grid, GridSampler repeats a configuration still running: the planner stops at
    # spec.trial_limit instead.
    extra = replay(spec, trials, 6)
    assert isinstance(extra.sampler, optuna.samplers.GridSampler)
    assert not extra.sampler.is_exhausted(extra)
    again = extra.ask(space.distributions(spec)).params
    assert (again["hidden_units"], again["learning_rate"]) in configurations


def test_the_grid_order_depends_on_the_seed_only():
    grid = {"hidden_units": WIDTHS, "batch_size": {"type": "choice", "values": [16, 32, 64]}}
    order = [t.params for t in run(search(grid, sampler="grid", seed=1), [TrialState.COMPLETE] * 9)]
    assert order == [
        t.params for t in run(search(grid, sampler="grid", seed=1), [TrialState.RUNNING] * 9)
    ]
    assert order != [
        t.params for t in run(search(grid, sampler="grid", seed=2), [TrialState.COMPLETE] * 9)
    ]


def test_asha_prunes_at_its_rungs_and_records_them_for_replay():
    spec = search({"learning_rate": RATE}, base={"epochs": 9}, scheduler={"type": "asha", "eta": 3})
    assert isinstance(space.pruner(spec), optuna.pruners.SuccessiveHalvingPruner)
    rivals = [
        create_trial(
            state=TrialState.RUNNING,
            system_attrs={"completed_rung_0": value},
            intermediate_values={1: value},
        )
        for value in (0.8, 0.7, 0.6)
    ]
    study = replay(spec, rivals, 3)
    good = study.ask()
    good.report(0.9, step=1)
    assert not good.should_prune()
    assert study.trials[-1].system_attrs["completed_rung_0"] == 0.9
    bad = study.ask()
    bad.report(0.5, step=1)
    assert bad.should_prune()
    good.report(0.5, step=2)  # between rungs: never pruned
    assert not good.should_prune()


def test_no_scheduler_never_prunes():
    spec = search({"learning_rate": RATE}, scheduler={"type": "none"})
    assert isinstance(space.pruner(spec), optuna.pruners.NopPruner)


def test_direction_follows_the_objective():
    assert space.direction(search({"learning_rate": RATE})) == "maximize"
    assert space.direction(search({"learning_rate": RATE}, objective="val_loss")) == "minimize"


def test_optuna_hands_out_a_waiting_trial_instead_of_sampling():
    # Why the planner replays queued trials as RUNNING, never as WAITING.
    spec = search({"learning_rate": RATE})
    waiting = create_trial(
        state=TrialState.WAITING,
        params={"learning_rate": 0.05},
        distributions=space.distributions(spec),
    )
    study = replay(spec, [waiting], 1)
    assert study.ask(space.distributions(spec)).params == {"learning_rate": 0.05}

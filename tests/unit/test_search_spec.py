"""Search specs: every rule that refuses a search names the key and what would be allowed, and
the rungs, seeds and trial limit follow from the spec."""

import pytest
from pydantic import ValidationError

from core.spec import MAX_SEED
from search.spec import MAX_GRID, Asha, Choice, SearchSpec

RATE = {"type": "log_uniform", "low": 0.0001, "high": 0.1}


def search(**fields) -> SearchSpec:
    return SearchSpec.model_validate({"space": {"learning_rate": RATE}, **fields})


def refusal(**fields) -> str:
    with pytest.raises(ValidationError) as caught:
        search(**fields)
    return str(caught.value)


def choice(*values):
    return {"type": "choice", "values": list(values)}


def test_defaults():
    spec = search()
    assert (spec.sampler, spec.objective, spec.max_trials, spec.max_concurrent_trials) == (
        "tpe",
        "val_accuracy",
        20,
        4,
    )
    assert spec.scheduler == Asha(min_epochs=1, eta=3)
    assert (spec.confirm.top, spec.confirm.repeats, spec.seed) == (3, 3, 0)


@pytest.mark.parametrize(
    ("space", "fragment"),
    [
        (
            {"epochs": {"type": "int", "low": 1, "high": 5}},
            "'epochs' is no key a search may vary; allowed: learning_rate, batch_size",
        ),
        ({"seed": {"type": "int", "low": 1, "high": 5}}, "'seed' is no key a search may vary"),
        ({"tricks": choice(True)}, "'tricks' is no key a search may vary"),
        (
            {"tricks.jitter": choice(True, False)},
            "space.tricks.jitter: no trick 'jitter'; tricks: dropout, weight_decay",
        ),
        (
            {"tricks.dropout.amount": RATE},
            "trick 'dropout' has no parameter 'amount'; its parameters: rate, spatial",
        ),
        (
            {"batch_size": {"type": "uniform", "low": 16, "high": 64}},
            "space.batch_size: takes an integer, which a uniform distribution does not give; use int or choice",
        ),
        (
            {"learning_rate": {"type": "int", "low": 1, "high": 2}},
            "space.learning_rate: takes a number, which a int distribution",
        ),
        (
            {"hidden_units": {"type": "int", "low": 1, "high": 2}},
            "space.hidden_units: takes a list",
        ),
        (
            {"tricks.dropout": {"type": "uniform", "low": 0.1, "high": 0.5}},
            "space.tricks.dropout: takes true or false",
        ),
        (
            {"tricks.dropout": choice(True, 1)},
            "space.tricks.dropout: 1 gives no valid job spec: tricks.dropout: a trick is on or off, true or false, not 1",
        ),
        (
            {"batch_size": {"type": "int", "low": 0, "high": 64}},
            "space.batch_size: 0 gives no valid job spec: batch_size: Input should be greater than or equal to 1",
        ),
        (
            {"learning_rate": {"type": "uniform", "low": 0.1, "high": 20}},
            "space.learning_rate: 20.0 gives no valid job spec: learning_rate: Input should be less than or equal to 10",
        ),
        (
            {"tricks.dropout.rate": {"type": "uniform", "low": 0.5, "high": 1.0}},
            "space.tricks.dropout.rate: 1.0 gives no valid job spec: tricks.dropout.rate: Input should be less than 1",
        ),
        (
            {"architecture": choice("mlp", "rnn")},
            "space.architecture: \"rnn\" gives no valid job spec: architecture: Input should be 'mlp' or 'cnn'",
        ),
        (
            {"hidden_units": choice([64], [64, 5000])},
            "space.hidden_units: [64, 5000] gives no valid job spec: hidden_units: Input should be less than or equal to 4096",
        ),
        (
            {"conv_filters": choice([8])},
            "space.conv_filters: [8] gives no valid job spec: conv_filters: a field of architecture 'cnn', not of 'mlp'",
        ),
        (
            {"tricks.dropout.spatial": choice(False, True)},
            "space.tricks.dropout.spatial: true gives no valid job spec: dropout: spatial drops whole feature maps",
        ),
        (
            {"learning_rate": {"type": "log_uniform", "low": 0, "high": 1}},
            "log_uniform needs low > 0, not 0.0",
        ),
        (
            {"learning_rate": {"type": "uniform", "low": 0.1, "high": 0.1}},
            "low (0.1) must be below high (0.1)",
        ),
        (
            {"batch_size": {"type": "int", "low": 0, "high": 8, "log": True}},
            "int with log true needs low ≥ 1, not 0",
        ),
        (
            {"learning_rate": {"type": "normal", "low": 0, "high": 1}},
            "does not match any of the expected tags: 'log_uniform', 'uniform', 'int', 'choice'",
        ),
        (
            {"learning_rate": {**RATE, "step": 2}},
            "unknown field 'step'; allowed fields: type, low, high",
        ),
        (
            {"learning_rate": {"type": "uniform", "low": False, "high": 1}},
            "must be a number, not false",
        ),
        ({"batch_size": choice(16, 32, 16)}, "16 is listed more than once"),
        ({"learning_rate": choice(1, 1.0)}, "1.0 is listed more than once"),
        ({"hidden_units": choice([64, 32], [64, 32])}, "[64, 32] is listed more than once"),
        ({"batch_size": choice()}, "List should have at least 1 item"),
        ({}, "Dictionary should have at least 1 item"),
    ],
)
def test_a_space_that_does_not_fit_is_refused_naming_the_key(space, fragment):
    assert fragment in refusal(space=space)


def test_true_and_one_are_different_choices():
    values = Choice.model_validate(choice(True, 1, 1.5, "1", None, [1])).values
    assert [type(v) for v in values] == [bool, int, float, str, type(None), list]


def test_too_many_keys_are_refused():
    space = {f"tricks.{name}": choice(True, False) for name in ["dropout", "momentum"]}
    space |= {f"k{n}": choice(1) for n in range(31)}
    assert "Dictionary should have at most 32 items" in refusal(space=space)


def test_a_trick_in_the_base_may_not_be_varied():
    message = refusal(
        base={"tricks": ["dropout"]},
        space={"tricks.dropout.rate": {"type": "uniform", "low": 0.1, "high": 0.5}},
    )
    assert "space.tricks.dropout.rate: trick 'dropout' is already in base.tricks" in message


def test_a_trick_parameter_must_fit_the_base_dataset():
    message = refusal(
        base={"dataset": "mnist"}, space={"tricks.augmentation.flip": choice(False, True)}
    )
    assert (
        "space.tricks.augmentation.flip: true gives no valid job spec: augmentation: mirrored digits"
        in message
    )


def test_shape_fields_fit_where_the_space_picks_their_architecture():
    spec = search(
        base={"architecture": "cnn"},
        space={
            "architecture": choice("mlp", "cnn"),
            "hidden_units": choice([64], [256, 64]),
            "kernel_size": {"type": "int", "low": 3, "high": 5},
        },
    )
    assert list(spec.space) == ["architecture", "hidden_units", "kernel_size"]


def test_a_shape_field_of_an_architecture_never_picked_is_refused():
    message = refusal(space={"architecture": choice("mlp"), "dense_units": choice([64])})
    assert (
        "space.dense_units: shapes architecture 'cnn', which space.architecture never picks"
        in message
    )


def test_the_objective_needs_validation_images():
    assert "base.validation_size must be > 0" in refusal(base={"validation_size": 0})


def test_asha_needs_a_rung_below_the_budget():
    message = refusal(base={"epochs": 3}, scheduler={"type": "asha", "min_epochs": 3})
    assert "scheduler.min_epochs (3) must be below base.epochs (3)" in message
    assert search(base={"epochs": 3}, scheduler={"type": "none"}).rungs() == [3]


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        (
            {"scheduler": {"type": "asha", "eta": 1}},
            "scheduler.asha.eta\n  Input should be greater than or equal to 2",
        ),
        (
            {"scheduler": {"type": "asha", "min_epochs": 0}},
            "Input should be greater than or equal to 1",
        ),
        ({"scheduler": {"type": "hyperband"}}, "expected tags: 'asha', 'none'"),
        ({"confirm": {"top": 11}}, "confirm.top\n  Input should be less than or equal to 10"),
        (
            {"confirm": {"repeats": 1}},
            "confirm.repeats\n  Input should be greater than or equal to 2",
        ),
        ({"sampler": "cmaes"}, "Input should be 'tpe', 'random' or 'grid'"),
        ({"objective": "test_accuracy"}, "Input should be 'val_accuracy' or 'val_loss'"),
        ({"max_trials": 0}, "max_trials\n  Input should be greater than or equal to 1"),
        (
            {"max_concurrent_trials": 65},
            "max_concurrent_trials\n  Input should be less than or equal to 64",
        ),
        ({"seed": MAX_SEED + 1}, "seed\n  Input should be less than or equal to 2147483647"),
        ({"name": "x" * 201}, "name\n  String should have at most 200 characters"),
        ({"budget": 3}, "unknown field 'budget'; allowed fields: name, base, space, sampler"),
    ],
)
def test_fields_out_of_range_are_refused(fields, fragment):
    assert fragment in refusal(**fields)


def test_the_confirmation_seeds_must_fit():
    message = refusal(base={"seed": MAX_SEED - 2}, confirm={"repeats": 3})
    assert f"past the largest seed {MAX_SEED}: lower base.seed" in message
    spec = search(base={"seed": MAX_SEED - 3}, confirm={"repeats": 3})
    assert spec.confirmation_seeds == [MAX_SEED - 2, MAX_SEED - 1, MAX_SEED]


def test_the_grid_takes_choices_only():
    message = refusal(sampler="grid", space={"learning_rate": RATE, "batch_size": choice(16, 32)})
    assert "the grid sampler takes choices only, and learning_rate is a range" in message


def test_a_grid_too_large_is_refused():
    widths = choice(*([n] for n in range(1, 65)))
    space = {
        "hidden_units": widths,
        "batch_size": choice(*range(1, 65)),
        "learning_rate": choice(0.1),
    }
    assert search(sampler="grid", space=space).grid_size == 64 * 64
    space["learning_rate"] = choice(0.1, 0.01, 0.001)
    assert f"the grid has {64 * 64 * 3} configurations, more than {MAX_GRID}" in refusal(
        sampler="grid", space=space
    )


def test_the_grid_caps_the_trials():
    space = {"learning_rate": choice(0.1, 0.01), "batch_size": choice(16, 32, 64)}
    spec = search(sampler="grid", space=space, max_trials=100)
    assert (spec.max_trials, spec.grid_size, spec.trial_limit) == (100, 6, 6)
    assert search(sampler="grid", space=space, max_trials=4).trial_limit == 4
    assert search(sampler="random", space=space, max_trials=100).trial_limit == 100


@pytest.mark.parametrize(
    ("epochs", "scheduler", "rungs"),
    [
        (10, {"type": "asha"}, [1, 3, 9, 10]),
        (9, {"type": "asha"}, [1, 3, 9]),
        (20, {"type": "asha", "min_epochs": 2, "eta": 2}, [2, 4, 8, 16, 20]),
        (5, {"type": "asha", "min_epochs": 4, "eta": 4}, [4, 5]),
        (10, {"type": "none"}, [10]),
    ],
)
def test_rungs(epochs, scheduler, rungs):
    assert search(base={"epochs": epochs}, scheduler=scheduler).rungs() == rungs


def test_the_base_is_a_resolved_job_spec():
    spec = search(base={"tricks": ["momentum"], "epochs": 5})
    assert spec.base.learning_rate == 0.01
    assert SearchSpec.model_validate(spec.model_dump(mode="json")) == spec

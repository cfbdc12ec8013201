"""Design expansion: the exact variant sets, deduplication, the preset and the limits."""

import pytest

from analysis.studies import StudyError, StudySpec, expand, trick_label

TRICKS = ["dropout", "weight_decay", "momentum"]


def names(design, tricks=TRICKS, **fields):
    return [v.name for v in expand(StudySpec(tricks=tricks, design=design, **fields), 1000)]


def test_one_at_a_time():
    assert names("one_at_a_time") == [
        "base",
        "base + dropout",
        "base + weight_decay",
        "base + momentum",
    ]


def test_leave_one_out():
    assert names("leave_one_out") == [
        "all",
        "all − dropout",
        "all − weight_decay",
        "all − momentum",
    ]


def test_cumulative_adds_in_the_order_given():
    assert names("cumulative", ["momentum", "dropout"]) == [
        "base",
        "base + momentum",
        "base + momentum + dropout",
    ]


def test_full_factorial_is_every_subset():
    assert names("full_factorial") == [
        "base",
        "base + dropout",
        "base + weight_decay",
        "base + momentum",
        "base + dropout + weight_decay",
        "base + dropout + momentum",
        "base + weight_decay + momentum",
        "base + dropout + weight_decay + momentum",
    ]


def test_explicit_variants_that_resolve_alike_are_one():
    study = StudySpec(
        design="explicit",
        variants=[
            [],
            ["dropout"],
            [{"name": "dropout", "rate": 0.1}],  # the default rate: the same spec
            [{"name": "dropout", "rate": 0.2}],
            ["momentum", "dropout"],
            ["dropout", "momentum"],
        ],
    )
    variants = expand(study, 1000)
    assert [v.name for v in variants] == [
        "base",
        "base + dropout",
        "base + dropout(rate=0.2)",
        "base + momentum + dropout",
    ]
    assert len({v.spec.model_dump_json() for v in variants}) == 4


def test_every_variant_runs_on_the_same_seeds_from_the_base_seed():
    study = StudySpec(base={"seed": 40}, tricks=["dropout"], repeats=3)
    assert study.seeds == [40, 41, 42]
    (base, dropout) = expand(study, 1000)
    assert [dropout.job_spec(seed).seed for seed in study.seeds] == [40, 41, 42]
    assert base.job_spec(41).model_dump(exclude={"seed"}) == base.spec.model_dump(exclude={"seed"})


def test_the_base_spec_carries_into_every_variant():
    study = StudySpec(base={"epochs": 3, "tricks": ["batch_norm"]}, tricks=["dropout"])
    for variant in expand(study, 1000):
        assert variant.spec.epochs == 3
        assert "batch_norm" in [t.name for t in variant.spec.tricks]


def test_momentum_brings_its_own_default_learning_rate():
    rates = {v.name: v.spec.learning_rate for v in expand(StudySpec(tricks=["momentum"]), 10)}
    assert rates == {"base": 0.001, "base + momentum": 0.01}
    given = StudySpec(base={"learning_rate": 0.05}, tricks=["momentum"])
    assert {v.spec.learning_rate for v in expand(given, 10)} == {0.05}


def test_the_notebook_preset_is_its_progression_over_20_epochs():
    study = StudySpec(preset="notebook")
    assert (study.design, study.base.epochs, study.base.batch_size, study.repeats) == (
        "cumulative",
        20,
        32,
        3,
    )
    assert names("cumulative", study.tricks)[-1] == (
        "base + dropout(rate=0.5) + weight_decay(l2=0.01) + early_stopping + batch_norm + momentum"
    )
    assert StudySpec(preset="notebook", repeats=5, base={"epochs": 4}).base.epochs == 4


def test_the_notebook_cnn_preset_is_the_same_progression_on_the_cnn():
    study = StudySpec(preset="notebook-cnn")
    notebook = StudySpec(preset="notebook")
    assert (study.name, study.design, study.tricks, study.repeats) == (
        "notebook-cnn",
        notebook.design,
        notebook.tricks,
        3,
    )
    assert (study.base.architecture, study.base.conv_filters, study.base.epochs) == (
        "cnn",
        [32, 64],
        10,
    )
    assert {v.spec.architecture for v in expand(study, 100)} == {"cnn"}
    quick = StudySpec(preset="notebook-cnn", repeats=1, base={"epochs": 1, "kernel_size": 5})
    assert (quick.base.architecture, quick.base.epochs, quick.base.kernel_size) == ("cnn", 1, 5)


def test_more_jobs_than_the_limit_are_refused_before_any_is_made():
    study = StudySpec(tricks=TRICKS, design="full_factorial", repeats=3)
    with pytest.raises(StudyError, match=r"24 jobs \(8 variants × 3 repeats\); the limit is 20"):
        expand(study, 20)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tricks": []}, "needs at least one trick"),
        ({"tricks": ["dropout", "dropout"]}, "'dropout' is listed more than once"),
        ({"base": {"tricks": ["dropout"]}, "tricks": ["dropout"]}, "already in the base spec"),
        ({"design": "explicit", "tricks": ["dropout"]}, "needs 'variants'"),
        ({"design": "explicit", "variants": [[]], "tricks": ["dropout"]}, "not 'tricks'"),
        ({"tricks": ["dropout"], "variants": [[]]}, "only for the explicit design"),
        ({"tricks": ["dropout"], "repeats": 0}, "greater than or equal to 1"),
        ({"tricks": ["dropout"], "repeats": True}, "must be a number, not true"),
        (
            {"base": {"seed": 2**31 - 1}, "tricks": ["dropout"], "repeats": 2},
            "the seeds run from base.seed 2147483647 to 2147483648 .* past the largest seed",
        ),
        ({"tricks": ["dropout"] * 9}, "List should have at most 8 items"),
        (
            {"design": "explicit", "variants": [["dropout"] * 9]},
            "List should have at most 8 items",
        ),
    ],
)
def test_invalid_studies_are_refused_with_the_reason(fields, message):
    with pytest.raises(ValueError, match=message):
        StudySpec(**fields)


def test_trick_labels_name_only_the_parameters_changed():
    assert trick_label({"name": "dropout", "rate": 0.1}, "mlp") == "dropout"
    assert trick_label({"name": "momentum", "momentum": 0.8, "nesterov": False}, "mlp") == (
        "momentum(momentum=0.8, nesterov=False)"
    )


def test_the_last_seed_may_be_the_largest_one():
    study = StudySpec(base={"seed": 2**31 - 2}, tricks=["dropout"], repeats=2)
    assert study.seeds == [2**31 - 2, 2**31 - 1]

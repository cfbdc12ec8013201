import math

import pytest
from pydantic import ValidationError

from core.spec import TRICKS, Dropout, JobSpec, trick_catalogue


def errors_of(document: dict) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(document)
    return [(e["loc"], e["msg"]) for e in caught.value.errors()]


def test_defaults_are_the_notebook_base_model():
    spec = JobSpec()
    assert spec.model_dump() == {
        "dataset": "fashion_mnist",
        "architecture": "mlp",
        "tricks": [],
        "epochs": 10,
        "batch_size": 32,
        "learning_rate": 0.001,
        "validation_size": 10_000,
        "hidden_units": [128, 32],
        "conv_filters": None,  # the cnn's shape fields
        "kernel_size": None,
        "dense_units": None,
        "seed": 0,
        "exact": False,
    }


def test_the_cnn_defaults_are_two_conv_blocks_and_a_dense_128_head():
    spec = JobSpec.model_validate({"architecture": "cnn"})
    shape = ("hidden_units", "conv_filters", "kernel_size", "dense_units")
    assert spec.model_dump(include=set(shape)) == {
        "hidden_units": None,
        "conv_filters": [32, 64],
        "kernel_size": 3,
        "dense_units": [128],
    }
    assert spec.feature_maps() == [28, 26, 13, 11, 5]
    assert JobSpec.model_validate(spec.model_dump()) == spec  # nulls of the other: accepted
    assert JobSpec.model_validate(spec.template()) == spec


def test_a_spec_stored_before_architectures_reads_as_the_mlp():
    stored = {"dataset": "fashion_mnist", "tricks": [{"name": "dropout", "rate": 0.5}]}
    spec = JobSpec.model_validate({**stored, "hidden_units": [64]})
    assert (spec.architecture, spec.hidden_units, spec.trick(Dropout).spatial) == (
        "mlp",
        [64],
        False,
    )


def test_trick_names_resolve_to_their_defaults():
    spec = JobSpec.model_validate({"tricks": list(TRICKS)})
    assert spec.model_dump()["tricks"] == [
        {"name": "dropout", "rate": 0.1, "spatial": False},
        {"name": "weight_decay", "l2": 0.001},
        {"name": "batch_norm", "momentum": 0.99},
        {"name": "early_stopping", "patience": 3, "min_delta": 0.0},
        {"name": "momentum", "momentum": 0.9, "nesterov": True},
        {"name": "label_smoothing", "amount": 0.1},
        {"name": "cosine_decay", "final_fraction": 0.0},
        {"name": "augmentation", "shift": 0.1, "flip": True},
    ]


def test_resolved_specs_are_canonical():
    one = JobSpec.model_validate({"tricks": ["weight_decay", {"name": "dropout"}]})
    two = JobSpec.model_validate({"tricks": [{"name": "dropout", "rate": 0.1}, "weight_decay"]})
    assert one == two
    assert JobSpec.model_validate(one.model_dump()) == one  # resolving is idempotent


@pytest.mark.parametrize(
    ("document", "learning_rate"),
    [
        ({}, 0.001),
        ({"tricks": ["momentum"]}, 0.01),
        ({"tricks": ["momentum"], "learning_rate": 0.1}, 0.1),
    ],
)
def test_learning_rate_follows_the_optimizer(document, learning_rate):
    assert JobSpec.model_validate(document).learning_rate == learning_rate


@pytest.mark.parametrize(
    ("document", "loc", "message"),
    [
        ({"tricks": ["dropot"]}, ("tricks", 0), "'dropout', 'weight_decay'"),
        (
            {"colour": 1},
            (),
            "unknown field 'colour'; allowed fields: dataset, architecture, tricks",
        ),
        (
            {"tricks": [{"name": "dropout", "rat": 0.1}]},
            ("tricks", 0, "dropout"),
            "allowed fields: name, rate",
        ),
        ({"epochs": 0}, ("epochs",), "greater than or equal to 1"),
        ({"epochs": 10**6}, ("epochs",), "less than or equal to 1000"),
        ({"batch_size": 0}, ("batch_size",), "greater than or equal to 1"),
        (
            {"tricks": [{"name": "dropout", "rate": -0.1}]},
            ("tricks", 0, "dropout", "rate"),
            "greater than 0",
        ),
        (
            {"tricks": [{"name": "dropout", "rate": 1}]},
            ("tricks", 0, "dropout", "rate"),
            "less than 1",
        ),
        (
            {"tricks": [{"name": "dropout", "rate": math.nan}]},
            ("tricks", 0, "dropout", "rate"),
            "finite",
        ),
        ({"learning_rate": math.inf}, ("learning_rate",), "finite"),
        (
            {"tricks": [{"name": "weight_decay", "l2": -1}]},
            ("tricks", 0, "weight_decay", "l2"),
            "greater than 0",
        ),
        (
            {"tricks": [{"name": "momentum", "momentum": 1.5}]},
            ("tricks", 0, "momentum", "momentum"),
            "less than 1",
        ),
        ({"dataset": "cifar10"}, ("dataset",), "'fashion_mnist' or 'mnist'"),
        ({"hidden_units": []}, ("hidden_units",), "at least 1 item"),
        ({"validation_size": -1}, ("validation_size",), "greater than or equal to 0"),
        ({"tricks": ["dropout", "dropout"]}, (), "'dropout' is listed more than once"),
        ({"tricks": ["early_stopping"], "validation_size": 0}, (), "validation_size must be > 0"),
        ({"dataset": "mnist", "tricks": ["augmentation"]}, (), "use flip false on mnist"),
        (
            {"tricks": [{"name": "augmentation", "shift": 0, "flip": False}]},
            ("tricks", 0, "augmentation"),
            "changes nothing",
        ),
        ({"tricks": [7]}, ("tricks", 0), "valid dictionary"),
        ({"architecture": "resnet"}, ("architecture",), "'mlp' or 'cnn'"),
        (
            {"architecture": "cnn", "hidden_units": [64]},
            ("hidden_units",),
            "a field of architecture 'mlp', not of 'cnn'; architecture 'cnn' is shaped by "
            "conv_filters, kernel_size, dense_units",
        ),
        (
            {"kernel_size": 3},
            ("kernel_size",),
            "a field of architecture 'cnn', not of 'mlp'; architecture 'mlp' is shaped by "
            "hidden_units",
        ),
        ({"dense_units": [64], "architecture": "mlp"}, ("dense_units",), "architecture 'cnn'"),
        ({"architecture": "cnn", "conv_filters": []}, ("conv_filters",), "at least 1 item"),
        (
            {"architecture": "cnn", "conv_filters": [8] * 4},
            ("conv_filters",),
            "at most 3 items",
        ),
        ({"architecture": "cnn", "conv_filters": [257]}, ("conv_filters", 0), "256"),
        ({"architecture": "cnn", "kernel_size": 8}, ("kernel_size",), "less than or equal to 7"),
        ({"architecture": "cnn", "kernel_size": True}, ("kernel_size",), "not true"),
        ({"architecture": "cnn", "dense_units": [0]}, ("dense_units", 0), "greater than"),
        (
            {"architecture": "cnn", "conv_filters": [8, 8, 8], "kernel_size": 5},
            (),
            "3 conv blocks with 5×5 kernels leave no position of a 28×28 image",
        ),
        (
            {"tricks": [{"name": "dropout", "spatial": True}]},
            (),
            "only architecture 'cnn' has; use spatial false on 'mlp'",
        ),
    ],
)
def test_invalid_specs_name_the_field_and_the_allowed_values(document, loc, message):
    errors = errors_of(document)
    assert any(error_loc == loc and message in text for error_loc, text in errors), errors


def test_catalogue_lists_every_trick_with_defaults_and_limits():
    catalogue = {entry["name"]: entry for entry in trick_catalogue()}
    assert list(catalogue) == list(TRICKS)
    for entry in catalogue.values():
        assert len(entry["description"]) > 40
        for parameter in entry["parameters"].values():
            assert "default" in parameter and parameter["description"]
    rate = catalogue["dropout"]["parameters"]["rate"]
    assert (rate["default"], rate["exclusiveMinimum"], rate["exclusiveMaximum"]) == (0.1, 0, 1)
    assert catalogue["early_stopping"]["parameters"]["patience"]["default"] == 3
    assert catalogue["momentum"]["parameters"]["nesterov"]["default"] is True

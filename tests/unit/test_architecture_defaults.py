"""Trick defaults by architecture: a parameter the client did not give takes its
architecture's default, one given is kept, and labels and the catalogue say so. The real
table is chosen on validation, so these tests set their own: on the cnn, dropout's rate 0.25."""

from typing import get_args

import pytest

from analysis.report import job_curves, job_variants
from analysis.studies import StudySpec, expand, trick_label
from core.spec import (
    ARCHITECTURE_DEFAULTS,
    TRICKS,
    Architecture,
    Dropout,
    JobSpec,
    trick_catalogue,
    trick_defaults,
)
from jobqueue.models import Job
from jobqueue.states import JobStatus

CNN_RATE = 0.25


@pytest.fixture
def cnn_dropout(monkeypatch):
    monkeypatch.setitem(ARCHITECTURE_DEFAULTS["cnn"], "dropout", {"rate": CNN_RATE})


def rate(document: dict) -> float:
    dropout = JobSpec.model_validate(document).trick(Dropout)
    assert dropout is not None
    return dropout.rate


def test_the_table_names_real_tricks_and_parameters_at_valid_values():
    assert set(ARCHITECTURE_DEFAULTS) == set(get_args(Architecture))
    for architecture, tricks in ARCHITECTURE_DEFAULTS.items():
        assert set(tricks) <= set(TRICKS), architecture
        for name, parameters in tricks.items():
            assert set(parameters) <= set(TRICKS[name].model_fields) - {"name"}, name
    for architecture in ARCHITECTURE_DEFAULTS:
        for name, kind in TRICKS.items():
            kind.model_validate(trick_defaults(name, architecture))


def test_a_parameter_not_given_takes_the_architecture_default(cnn_dropout):
    assert rate({"architecture": "cnn", "tricks": ["dropout"]}) == CNN_RATE
    assert rate({"architecture": "cnn", "tricks": [{"name": "dropout", "spatial": True}]}) == (
        CNN_RATE
    )
    assert rate({"architecture": "mlp", "tricks": ["dropout"]}) == 0.1
    assert trick_defaults("dropout", "cnn") == {"name": "dropout", "rate": 0.25, "spatial": False}


def test_a_parameter_given_is_kept_even_at_the_class_default(cnn_dropout):
    assert rate({"architecture": "cnn", "tricks": [{"name": "dropout", "rate": 0.1}]}) == 0.1


def test_a_resolved_spec_round_trips(cnn_dropout):
    spec = JobSpec.model_validate({"architecture": "cnn", "tricks": ["dropout", "weight_decay"]})
    again = JobSpec.model_validate(spec.model_dump(mode="json"))
    assert again.model_dump() == spec.model_dump()
    assert JobSpec.model_validate(spec.template()).model_dump() == spec.model_dump()
    assert [t.model_fields_set for t in spec.tricks] == [t.model_fields_set for t in again.tricks]


def test_the_catalogue_shows_the_defaults_that_differ_by_architecture(cnn_dropout):
    catalogue = {entry["name"]: entry for entry in trick_catalogue()}
    assert catalogue["dropout"]["architecture_defaults"] == {"cnn": {"rate": CNN_RATE}}
    assert catalogue["dropout"]["parameters"]["rate"]["default"] == 0.1
    assert catalogue["weight_decay"]["architecture_defaults"] == {}


def test_study_variants_take_and_label_by_the_architecture_defaults(cnn_dropout):
    study = StudySpec(
        base={"architecture": "cnn"},
        design="explicit",
        variants=[
            ["dropout"],
            [{"name": "dropout", "rate": 0.1}],
            [{"name": "dropout", "rate": 0.25}],
        ],
    )
    variants = expand(study, 100)
    assert [(v.name, v.tricks, v.spec.tricks[0].rate) for v in variants] == [
        ("base + dropout", ("dropout",), CNN_RATE),
        ("base + dropout(rate=0.1)", ("dropout(rate=0.1)",), 0.1),
    ]  # the explicit 0.25 is the cnn's default: the first variant
    (_, bare) = expand(StudySpec(base={"architecture": "cnn"}, tricks=["dropout"]), 100)
    assert (bare.name, bare.spec.tricks[0].rate) == ("base + dropout", CNN_RATE)
    (_, on_mlp) = expand(StudySpec(tricks=[{"name": "dropout", "rate": 0.25}]), 100)
    assert on_mlp.name == "base + dropout(rate=0.25)"


def test_leave_one_out_names_the_trick_left_out_by_the_architecture_defaults(cnn_dropout):
    study = StudySpec(
        base={"architecture": "cnn"},
        design="leave_one_out",
        tricks=[{"name": "dropout", "rate": 0.1}, "weight_decay"],
    )
    assert [v.name for v in expand(study, 100)] == [
        "all",
        "all − dropout(rate=0.1)",
        "all − weight_decay",
    ]


def test_labels_of_stored_jobs_compare_with_their_architecture(cnn_dropout):
    def stored(tricks: list, **fields) -> Job:
        spec = JobSpec.model_validate({"tricks": tricks, **fields}).model_dump(mode="json")
        return Job(id=f"{tricks}{fields}", status=JobStatus.QUEUED, spec=spec)

    jobs = [
        stored(["dropout"], architecture="cnn"),
        stored([{"name": "dropout", "rate": 0.1}], architecture="cnn", seed=1),
        stored(["dropout"]),
    ]
    assert [v.tricks for v in job_variants(jobs, {})] == [
        ("dropout",),
        ("dropout(rate=0.1)",),
        ("dropout",),
    ]
    assert job_curves(jobs[1], []).variants[0].name == "base + dropout(rate=0.1)"
    assert trick_label({"name": "dropout", "rate": CNN_RATE}, "mlp") == "dropout(rate=0.25)"

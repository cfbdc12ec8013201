"""The report's grouping and its rule for comparing a trick: every pair of variants that
differ by that trick alone, averaged per seed, the interval taken over seeds."""

import csv
import io

import numpy as np
import pytest

from analysis.report import (
    EffectPair,
    effects_csv,
    job_variants,
    report,
    study_status,
    variants_csv,
)
from core.spec import JobSpec
from jobqueue.models import Job
from jobqueue.states import JobStatus
from tests.support.data import RESULT


def job(tricks, seed, accuracy, **fields):
    spec = JobSpec.model_validate({"tricks": tricks, "seed": seed, **fields})
    return Job(
        id=f"{'-'.join(tricks) or 'base'}-{seed}-{fields}",
        status=JobStatus.SUCCEEDED,
        spec=spec.model_dump(mode="json"),
        result=RESULT.model_copy(
            update={"test_accuracy": accuracy, "test_loss": 1 - accuracy, "seconds": 1.0}
        ),
    )


def effects_of(jobs):
    return {e.trick: e for e in report(job_variants(jobs, {})).effects}


def test_a_factorial_trick_effect_is_its_main_effect_over_all_subsets():
    # accuracy = 0.8 + 0.02·dropout + 0.01·momentum + noise by seed
    jobs = [
        job(
            tricks,
            seed,
            0.8
            + 0.02 * ("dropout" in tricks)
            + 0.01 * ("momentum" in tricks)
            + [0.0, 0.01, -0.01][seed]
            + 0.001 * seed * len(tricks),
        )
        for seed in range(3)
        for tricks in ([], ["dropout"], ["momentum"], ["dropout", "momentum"])
    ]
    effects = effects_of(jobs)
    dropout = effects["dropout"]
    assert [(p.without, p.with_) for p in dropout.pairs] == [
        ("base", "base + dropout"),
        ("base + momentum", "base + dropout + momentum"),
    ]
    # per seed: mean of the two pairs' differences = 0.02 + 0.001·seed
    assert dropout.difference.mean == pytest.approx(0.02 + 0.001)
    assert dropout.verdict == "helps"
    assert effects["momentum"].difference.mean == pytest.approx(0.011)


def test_a_learning_rate_left_to_its_default_does_not_stop_momentum_pairing():
    jobs = [job(t, s, 0.8 + 0.01 * s) for s in range(2) for t in ([], ["momentum"])]
    pairs = effects_of(jobs)["momentum"].pairs
    assert [p.model_dump() for p in pairs] == [{"without": "base", "with": "base + momentum"}]


def test_variants_differing_in_more_than_tricks_are_not_paired_and_are_named_apart():
    jobs = [job([], 0, 0.8, epochs=5), job(["dropout"], 0, 0.82, epochs=10)]
    variants = report(job_variants(jobs, {})).variants
    assert [v.name for v in variants] == ["base", "base + dropout"]
    assert effects_of(jobs)["dropout"].verdict == "not compared"
    same_tricks = [job([], 0, 0.8, epochs=5), job([], 0, 0.82, epochs=10)]
    assert [v.name for v in report(job_variants(same_tricks, {})).variants] == [
        "base (epochs=5)",
        "base (epochs=10)",
    ]


def test_only_seeds_with_both_runs_finished_are_compared():
    jobs = [job([], s, 0.8) for s in range(3)] + [job(["dropout"], s, 0.81) for s in range(2)]
    dropout = effects_of(jobs)["dropout"]
    assert dropout.seeds == [0, 1]
    assert dropout.difference.n == 2


@pytest.mark.parametrize(
    ("seeds", "spread", "verdict", "says"),
    [
        (3, 0.002, "helps", "dropout helps: +1.20 points of test accuracy (95% CI +0.70 to"),
        # Two seeds whose interval lies above 0, but on one degree of freedom.
        (2, 0.0005, "not enough repeats", "dropout: not enough repeats to judge (3 matched"),
        (1, 0.002, "not enough repeats", "dropout: not enough repeats to compare (1 matched seed;"),
        (3, 0.0, "no spread", "dropout: no spread: identical differences on every seed, +1.00"),
        (4, 0.0, "no spread", "+1.00 points of test accuracy on each of 4 seeds"),
    ],
)
def test_a_verdict_needs_three_seeds_whose_differences_vary(seeds, spread, verdict, says):
    # dropout adds 1 point, and `spread` more on each later seed; the seeds' own noise is larger
    jobs = [
        job(t, s, 0.8 + [0.0, 0.03, -0.02, 0.01][s] + len(t) * (0.01 + spread * s))
        for s in range(seeds)
        for t in ([], ["dropout"])
    ]
    data = report(job_variants(jobs, {}))
    (effect,) = data.effects
    assert effect.verdict == verdict
    assert says in effect.summary
    (row,) = csv.DictReader(io.StringIO(effects_csv(data), newline=""))
    assert row["verdict"] == verdict and row["seeds"] == str(seeds)


def test_variant_statistics_use_succeeded_runs_only():
    failed = job([], 2, 0.0)
    failed.status, failed.result = JobStatus.FAILED, None
    (variant,) = report(job_variants([job([], 0, 0.8), job([], 1, 0.9), failed], {})).variants
    assert variant.seeds == [0, 1]
    assert variant.final_test_accuracy.mean == pytest.approx(0.85)
    assert variant.progress["failed"] == 1 and variant.progress["total"] == 3
    assert np.isclose(variant.final_test_loss.mean, 0.15)


@pytest.mark.parametrize(
    ("cancelled", "statuses", "expected"),
    [
        (False, ["queued", "queued"], "queued"),
        (False, ["succeeded", "queued"], "running"),
        (False, ["succeeded", "succeeded"], "succeeded"),
        (False, ["succeeded", "failed"], "failed"),
        (True, ["succeeded", "cancelled"], "cancelled"),
    ],
)
def test_study_status(cancelled, statuses, expected):
    assert study_status(cancelled, [JobStatus(s) for s in statuses]) == expected


# Cells that a spreadsheet would take for a formula (CSV injection), each with its text.
CRAFTED = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1:A9)", "\t=1+1", "\r=1+1"]


def test_no_text_cell_of_the_csv_tables_starts_a_formula_and_numbers_stay_numbers():
    # Dropout hurts: its differences are negative numbers, written as they are.
    jobs = [
        job(t, s, 0.8 - 0.01 * len(t) + 0.002 * s * len(t))
        for s in range(3)
        for t in ([], ["dropout"])
    ]
    data = report(job_variants(jobs, {}))
    for i, variant in enumerate(data.variants):
        variant.name = CRAFTED[i]
        variant.tricks = [CRAFTED[i + 2]]
    (effect,) = data.effects
    effect.trick, effect.verdict = CRAFTED[4], CRAFTED[5]
    effect.pairs = [EffectPair(without=CRAFTED[3], with_="base")]

    variants = list(csv.DictReader(io.StringIO(variants_csv(data), newline="")))
    assert [row["variant"] for row in variants] == ["'" + text for text in CRAFTED[:2]]
    assert [row["tricks"] for row in variants] == ["'" + text for text in CRAFTED[2:4]]
    # A run that early stopping did not stop is "none": no cell of ours starts a formula.
    assert variants[0]["stopped_epochs"] == "none none none"
    mean = data.variants[0].final_test_accuracy.mean
    assert variants[0]["final_test_accuracy_mean"] == repr(mean)

    (row,) = csv.DictReader(io.StringIO(effects_csv(data), newline=""))
    # A carriage return would end the row where it is not quoted: it is a line feed, quoted.
    assert row["trick"] == "'\t=1+1" and row["verdict"] == "'\n=1+1"
    assert row["pairs"] == "'@SUM(A1:A9) → base"
    difference = effect.difference
    assert difference.mean < 0 and difference.high < 0
    assert row["difference_mean"] == repr(difference.mean)  # -0.01…: a number, left alone
    assert row["difference_high"] == repr(difference.high)
    assert float(row["p_value"]) == pytest.approx(effect.p_value)


@pytest.mark.parametrize("text", ["base", "all − dropout", "dropout(rate=0.2)", "", "'=x", " =x"])
def test_text_that_starts_no_formula_is_written_as_it_is(text):
    data = report(job_variants([job([], 0, 0.8)], {}))
    data.variants[0].name = text
    (row,) = csv.DictReader(io.StringIO(variants_csv(data), newline=""))
    assert row["variant"] == text

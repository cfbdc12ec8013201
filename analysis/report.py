"""The comparison report of a study, or of any jobs: per variant, means with 95% intervals
over its seeds; per trick, the paired difference its adding makes to the test accuracy.

A trick's effect is measured on every pair of variants that differ by that trick alone (the
same spec otherwise): a one_at_a_time design gives one pair per trick (base, base + trick), a
cumulative one the step that adds it, leave_one_out (all − trick, all), and a full factorial
every subset with and without it (its main effect). For each seed the pairs' differences are
averaged, and the interval is taken over seeds: runs with the same seed share their weight
initialisation and data order, which is what makes pairing remove most of the seed noise.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from analysis.stats import MIN_REPEATS, Estimate, estimate, paired
from analysis.studies import trick_label, variant_name
from core.results import EpochRow, JobResult
from core.spec import JobSpec
from jobqueue.models import EpochMetrics, Job, Study
from jobqueue.states import JobStatus

CURVES = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "test_accuracy", "gap")


class Curve(BaseModel):
    """One metric per epoch: the mean over the runs that reached the epoch, its 95% interval
    (null with fewer than 2 runs) and the number of those runs."""

    mean: list[float | None]
    low: list[float | None]
    high: list[float | None]
    n: list[int | None]


class Curves(BaseModel):
    epoch: list[int]
    train_loss: Curve
    val_loss: Curve
    train_accuracy: Curve
    val_accuracy: Curve
    test_accuracy: Curve
    gap: Curve = Field(description="Generalisation gap: train minus validation accuracy.")


class RunRead(BaseModel):
    """One succeeded job of a variant."""

    seed: int
    job: str
    test_accuracy: float | None = Field(description="Of the saved model.")
    test_loss: float | None
    epochs: int = Field(description="Epochs it trained (fewer when early stopping stopped it).")


class VariantReport(BaseModel):
    """A variant's runs summarised: each statistic a mean over its succeeded seeds with a 95%
    t interval (null while no run has finished)."""

    name: str
    tricks: list[str] = Field(description="The tricks it adds to the base.")
    spec: dict[str, Any] = Field(description="Its resolved spec, without the seed.")
    jobs: list[str] = Field(description="One job per seed, in seed order.")
    seeds: list[int] = Field(description="Seeds whose jobs succeeded: the runs summarised.")
    runs: list[RunRead] = Field(description="Those runs, in seed order.")
    progress: dict[str, int] = Field(description="Its jobs per status, and the total.")
    final_test_accuracy: Estimate | None = Field(
        description="Of the saved model (the best epoch's weights under early stopping)."
    )
    final_test_loss: Estimate | None
    best_test_accuracy: Estimate | None = Field(description="The highest of any epoch.")
    best_test_loss: Estimate | None = Field(description="The lowest of any epoch.")
    best_epoch: Estimate | None = Field(description="Early stopping's best epoch.")
    stopped_epochs: list[int | None] = Field(
        description="Where early stopping stopped each run (null: it ran every epoch)."
    )
    generalisation_gap: Estimate | None = Field(
        description="Train minus validation accuracy at the last epoch."
    )
    seconds_per_epoch: Estimate | None
    total_seconds: Estimate | None
    curves: Curves


class EffectPair(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    without: str
    with_: str = Field(alias="with")


Verdict = Literal[
    "helps", "hurts", "no detectable difference", "not enough repeats", "no spread", "not compared"
]


class EffectRead(BaseModel):
    """What adding a trick does to the final test accuracy, paired seed by seed."""

    trick: str
    metric: str
    pairs: list[EffectPair] = Field(description="Variant pairs that differ by this trick alone.")
    seeds: list[int] = Field(description="Seeds with both runs of a pair finished.")
    difference: Estimate | None = Field(
        description="Mean difference (with − without) over seeds, as a fraction, and its 95% "
        "interval."
    )
    p_value: float | None = Field(
        description="Two-sided paired t test; null with fewer than 2 seeds or no spread."
    )
    verdict: Verdict = Field(
        description="helps or hurts: the whole interval is above or below 0, over at least 3 "
        "seeds whose differences vary; no detectable difference: it straddles 0; not enough "
        "repeats: fewer than 3 seeds; no spread: 3 or more seeds with the same difference on "
        "every one, which gives no interval to judge by; not compared: no two variants differ "
        "by this trick alone."
    )
    summary: str = Field(description="The verdict in plain words, with the numbers.")


class ReportRead(BaseModel):
    """The comparison report: what the API answers, the CSV tables hold and the plots draw."""

    variants: list[VariantReport]
    effects: list[EffectRead]


@dataclass(frozen=True)
class Run:
    """One succeeded job of a variant."""

    job_id: str
    result: JobResult | None  # None while the job runs (a job's own curves)
    epochs: list[EpochRow]  # its epoch metrics, from 1
    best_epoch: int | None
    stopped_epoch: int | None


@dataclass
class VariantRuns:
    name: str
    tricks: tuple[str, ...]  # trick labels, as analysis.studies.trick_label
    spec: dict[str, Any]  # resolved, without the seed
    jobs: list[Job] = field(default_factory=list)
    runs: dict[int, Run] = field(default_factory=dict)  # by seed: succeeded jobs only


def study_variants(
    study: Study, jobs: dict[str, Job], metrics: dict[str, list[EpochMetrics]]
) -> list[VariantRuns]:
    """A study's variants with their jobs and runs so far."""
    return [
        _collect(
            VariantRuns(
                variant["name"],
                tuple(variant["tricks"]),
                variant["spec"],
                [jobs[job_id] for job_id in variant["jobs"]],
            ),
            metrics,
        )
        for variant in study.variants
    ]


def job_variants(jobs: list[Job], metrics: dict[str, list[EpochMetrics]]) -> list[VariantRuns]:
    """Any jobs, grouped into variants by their spec apart from the seed. A variant is named
    by its tricks, and, where several share the tricks, by the fields that set them apart."""
    groups: dict[str, list[Job]] = {}
    specs = {job.id: _resolved(job.spec) for job in jobs}
    for job in jobs:
        rest = {key: value for key, value in specs[job.id].items() if key != "seed"}
        groups.setdefault(json.dumps(rest, sort_keys=True), []).append(job)
    variants = []
    for members in groups.values():
        spec = {key: value for key, value in specs[members[0].id].items() if key != "seed"}
        architecture = spec.get("architecture", "mlp")
        labels = tuple(trick_label(trick, architecture) for trick in spec["tricks"])
        variants.append(_collect(VariantRuns(variant_name(labels), labels, spec, members), metrics))
    by_name: dict[str, list[VariantRuns]] = {}
    for variant in variants:
        by_name.setdefault(variant.name, []).append(variant)
    for namesakes in by_name.values():
        if len(namesakes) == 1:
            continue
        differing = [
            key
            for key in namesakes[0].spec
            if key != "tricks" and len({json.dumps(v.spec[key]) for v in namesakes}) > 1
        ]
        for variant in namesakes:  # null: a field of another architecture's
            fields = ", ".join(
                f"{key}={json.dumps(variant.spec[key])}"
                for key in differing
                if variant.spec[key] is not None
            )
            variant.name += f" ({fields})"
    return variants


def _resolved(spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec as the current code resolves it, so that a job stored before a field
    existed (architecture, dropout's spatial) groups with one that names its default."""
    try:
        return JobSpec.model_validate(spec).model_dump(mode="json")
    except ValueError:  # stored by a version whose specs this one refuses: as it is
        return spec


def progress(statuses: Sequence[JobStatus]) -> dict[str, int]:
    """How many jobs are in each status, and in all."""
    counts = Counter(statuses)
    return {"total": len(statuses), **{s.value: counts[s] for s in JobStatus}}


def study_status(cancelled: bool, statuses: Sequence[JobStatus]) -> str:
    """queued until a job starts, running until all have ended, then succeeded when all
    did, else failed; cancelled once the study is."""
    if cancelled:
        return "cancelled"
    if any(s in (JobStatus.QUEUED, JobStatus.RUNNING) for s in statuses):
        started = any(s != JobStatus.QUEUED for s in statuses)
        return "running" if started else "queued"
    return "succeeded" if all(s == JobStatus.SUCCEEDED for s in statuses) else "failed"


def _collect(variant: VariantRuns, metrics: dict[str, list[EpochMetrics]]) -> VariantRuns:
    """Fill in the runs of the variant's succeeded jobs from their metrics rows."""
    for job in variant.jobs:
        if job.status == JobStatus.SUCCEEDED and job.result is not None:
            variant.runs[job.spec["seed"]] = Run(
                job.id,
                job.result,
                _rows(metrics.get(job.id, ())),
                job.best_epoch,
                job.stopped_epoch,
            )
    return variant


def job_curves(job: Job, metrics: Sequence[EpochMetrics]) -> ReportRead:
    """One job's learning curves so far, whatever its status, as a report with one variant
    (one run: no intervals), so that the study plots draw it."""
    run = Run(job.id, job.result, _rows(metrics), job.best_epoch, job.stopped_epoch)
    architecture = job.spec.get("architecture", "mlp")
    labels = tuple(trick_label(trick, architecture) for trick in job.spec["tricks"])
    spec = {key: value for key, value in job.spec.items() if key != "seed"}
    variant = VariantRuns(variant_name(labels), labels, spec, [job], {job.spec["seed"]: run})
    return ReportRead(variants=[_variant(variant)], effects=[])


def _rows(metrics: Sequence[EpochMetrics]) -> list[EpochRow]:
    return [EpochRow.model_validate(m) for m in metrics]


def report(variants: list[VariantRuns]) -> ReportRead:
    """The whole report, statistics as analysis.stats.Estimate."""
    return ReportRead(variants=[_variant(v) for v in variants], effects=_effects(variants))


def _variant(variant: VariantRuns) -> VariantReport:
    runs = [variant.runs[seed] for seed in sorted(variant.runs)]
    statuses = [job.status for job in variant.jobs]

    def final(key: str) -> Estimate | None:
        return estimate([v for r in runs if (v := getattr(r.result, key, None)) is not None])

    def over_epochs(key: str, pick: Any) -> Estimate | None:
        return estimate([pick(getattr(row, key) for row in r.epochs) for r in runs if r.epochs])

    last_gaps = [gap for r in runs if r.epochs and (gap := r.epochs[-1].gap) is not None]
    return VariantReport(
        name=variant.name,
        tricks=list(variant.tricks),
        spec=variant.spec,
        jobs=[job.id for job in variant.jobs],
        seeds=sorted(variant.runs),
        runs=[
            RunRead(
                seed=seed,
                job=run.job_id,
                test_accuracy=run.result and run.result.test_accuracy,
                test_loss=run.result and run.result.test_loss,
                epochs=len(run.epochs),
            )
            for seed, run in sorted(variant.runs.items())
        ],
        progress=progress(statuses),
        final_test_accuracy=final("test_accuracy"),
        final_test_loss=final("test_loss"),
        best_test_accuracy=over_epochs("test_accuracy", max),
        best_test_loss=over_epochs("test_loss", min),
        best_epoch=estimate([r.best_epoch for r in runs if r.best_epoch is not None]),
        stopped_epochs=[r.stopped_epoch for r in runs],
        generalisation_gap=estimate(last_gaps),
        seconds_per_epoch=estimate(
            [float(np.mean([row.seconds for row in r.epochs])) for r in runs if r.epochs]
        ),
        total_seconds=final("seconds"),
        curves=_curves(runs),
    )


def _curves(runs: list[Run]) -> Curves:
    """Per epoch, each metric's mean and interval over the runs that reached that epoch
    (early stopping ends some runs sooner)."""
    longest = max((len(r.epochs) for r in runs), default=0)
    curves: dict[str, Any] = {"epoch": list(range(1, longest + 1))}
    for key in CURVES:
        points = [
            estimate(
                [
                    value
                    for r in runs
                    if e < len(r.epochs) and (value := getattr(r.epochs[e], key)) is not None
                ]
            )
            for e in range(longest)
        ]
        curves[key] = Curve(
            **{
                part: [getattr(p, part) if p else None for p in points]
                for part in ("mean", "low", "high", "n")
            }
        )
    return Curves(**curves)


def _effects(variants: list[VariantRuns]) -> list[EffectRead]:
    def rest(variant: VariantRuns) -> str:  # all but the tricks, the seed, a default rate
        template = JobSpec.model_validate(variant.spec).template()
        return json.dumps({k: v for k, v in template.items() if k not in ("tricks", "seed")})

    keys = [(frozenset(v.tricks), rest(v)) for v in variants]  # once: pairing is quadratic
    labels = list(dict.fromkeys(label for v in variants for label in v.tricks))
    effects = []
    for label in labels:
        pairs = [
            (without, with_)
            for with_, (with_tricks, with_rest) in zip(variants, keys, strict=True)
            for without, (without_tricks, without_rest) in zip(variants, keys, strict=True)
            if label not in without_tricks
            and with_tricks == without_tricks | {label}
            and with_rest == without_rest
        ]
        # Per seed, the mean over the pairs with both runs finished, with and without.
        by_seed: dict[int, tuple[list[float], list[float]]] = {}
        for without, with_ in pairs:
            for seed in with_.runs.keys() & without.runs.keys():
                treated, reference = by_seed.setdefault(seed, ([], []))
                treated.append(_test_accuracy(with_.runs[seed]))
                reference.append(_test_accuracy(without.runs[seed]))
        seeds = sorted(by_seed)
        comparison = paired(
            [float(np.mean(by_seed[seed][0])) for seed in seeds],
            [float(np.mean(by_seed[seed][1])) for seed in seeds],
        )
        verdict = comparison.verdict if pairs else None
        effects.append(
            EffectRead(
                trick=label,
                metric="final_test_accuracy",
                pairs=[EffectPair(without=a.name, with_=b.name) for a, b in pairs],
                seeds=seeds,
                difference=comparison.difference,
                p_value=comparison.p_value,
                verdict=verdict or "not compared",
                summary=_summary(label, verdict, comparison.difference),
            )
        )
    return effects


def _test_accuracy(run: Run) -> float:
    assert run.result is not None  # a variant's runs are its succeeded jobs
    return run.result.test_accuracy


def _summary(label: str, verdict: str | None, difference: Estimate | None) -> str:
    if verdict is None:
        return f"{label}: no two variants differ by this trick alone, so it is not compared"
    if difference is None or difference.low is None or difference.high is None:
        seeds = difference.n if difference else 0
        return (
            f"{label}: not enough repeats to compare ({seeds} matched "
            f"{'seed' if seeds == 1 else 'seeds'}; {MIN_REPEATS} are needed)"
        )
    points = f"{difference.mean * 100:+.2f} points of test accuracy"
    interval = (
        f"{points} (95% CI {difference.low * 100:+.2f} to {difference.high * 100:+.2f}, "
        f"{difference.n} seeds)"
    )
    if verdict == "helps":
        return f"{label} helps: {interval}"
    if verdict == "hurts":
        return f"{label} hurts: {interval}"
    if verdict == "not enough repeats":
        return (
            f"{label}: not enough repeats to judge ({MIN_REPEATS} matched seeds are needed): "
            f"{interval}"
        )
    if verdict == "no spread":
        return (
            f"{label}: no spread: identical differences on every seed, {points} on each of "
            f"{difference.n} seeds, which leave no interval to judge an effect by"
        )
    return f"{label}: no detectable difference at {difference.n} repeats: {interval}"


VARIANT_COLUMNS = (
    "final_test_accuracy",
    "final_test_loss",
    "best_test_accuracy",
    "best_test_loss",
    "best_epoch",
    "generalisation_gap",
    "seconds_per_epoch",
    "total_seconds",
)


def variants_csv(data: ReportRead) -> str:
    """One row per variant: each statistic's mean, interval bounds and run count."""
    header = ["variant", "tricks", "runs", "jobs_total"]
    for column in VARIANT_COLUMNS:
        header += [f"{column}_mean", f"{column}_low", f"{column}_high"]
    header.append("stopped_epochs")
    rows = []
    for variant in data.variants:
        row = [
            variant.name,
            " + ".join(variant.tricks),
            len(variant.seeds),
            variant.progress["total"],
        ]
        for column in VARIANT_COLUMNS:
            value: Estimate | None = getattr(variant, column)
            row += [value.mean, value.low, value.high] if value else [None] * 3
        row.append(" ".join(str(e) if e else "none" for e in variant.stopped_epochs))
        rows.append(row)
    return csv_table(header, rows)


def effects_csv(data: ReportRead) -> str:
    """One row per trick: the paired difference in final test accuracy and the verdict."""
    header = [
        "trick",
        "difference_mean",
        "difference_low",
        "difference_high",
        "seeds",
        "p_value",
        "verdict",
        "pairs",
    ]
    rows = []
    for effect in data.effects:
        difference = effect.difference
        rows.append(
            [
                effect.trick,
                *([difference.mean, difference.low, difference.high] if difference else [None] * 3),
                len(effect.seeds),
                effect.p_value,
                effect.verdict,
                "; ".join(f"{p.without} → {p.with_}" for p in effect.pairs),
            ]
        )
    return csv_table(header, rows)


# A spreadsheet opening a CSV file takes a cell that starts with one of these for a formula
# (and a formula can run commands, or send the sheet's data away: CSV injection). OWASP's
# rule: such a text cell gets a leading apostrophe, which shows and makes the cell text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_table(header: list[str], rows: list[list[Any]]) -> str:
    """A CSV table in which no text cell starts a formula: every text cell goes through the
    rule, so text that users write (and names built from it) cannot. Numbers are written as
    numbers, negative ones included: to a spreadsheet they are numbers, not formulas."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in [header, *rows]:
        writer.writerow([_inert_cell(cell) for cell in row])
    return out.getvalue()


def _inert_cell(cell: Any) -> Any:
    if not isinstance(cell, str):
        return cell
    if cell.startswith(FORMULA_STARTS):
        cell = "'" + cell
    # The writer quotes a cell with a line feed in it, but not one with a lone carriage return
    # (the lines end in "\n"), which readers and spreadsheets take for the end of the row: one
    # name could add rows of its own.
    return cell.replace("\r\n", "\n").replace("\r", "\n")

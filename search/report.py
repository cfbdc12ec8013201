"""A search's report: what was selected on validation, and how it fared on fresh seeds.

The search phase selects on the validation objective alone. Test accuracy enters only with
the confirmation, where the best configurations and the base run again on seeds no trial used,
so the figures reported for them were not selected on. The report also says by how much the
best trial's own validation score overstated the same configuration's on the fresh seeds.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from analysis.stats import Comparison, Estimate, estimate, paired
from jobqueue.models import Job, Search
from jobqueue.states import JobStatus

NOTE = (
    "Trials were ranked on the validation objective only; their test metrics were recorded "
    "but never used. Test accuracy is reported for the confirmation alone: the chosen "
    "configurations and the base, each on the same fresh seeds that no trial used."
)


class Interval(BaseModel):
    mean: float
    low: float | None
    high: float | None
    n: int

    @classmethod
    def of(cls, found: Estimate | None) -> Interval | None:
        if found is None:
            return None
        return cls(mean=found.mean, low=found.low, high=found.high, n=found.n)


class Effect(BaseModel):
    """`name` − `against`, paired by seed, in test accuracy."""

    against: str
    difference: Interval | None
    p_value: float | None
    verdict: str

    @classmethod
    def of(cls, against: str, comparison: Comparison) -> Effect:
        return cls(
            against=against,
            difference=Interval.of(comparison.difference),
            p_value=comparison.p_value,
            verdict=comparison.verdict,
        )


class BestTrial(BaseModel):
    trial: int
    job_id: str | None
    params: dict[str, Any]
    value: float = Field(description="Its validation objective: what selected it.")


class Confirmed(BaseModel):
    name: str = Field(description="'base', or the trial whose configuration this is.")
    trial: int | None
    params: dict[str, Any]
    jobs: list[str] = Field(description="One job per confirmation seed, in seed order.")
    test_accuracy: Interval | None = Field(description="Over its succeeded fresh seeds.")
    validation: Interval | None = Field(description="The objective on validation, likewise.")
    effects: list[Effect] = Field(
        description="Against the base, then against each configuration ranked above it."
    )


class SearchReport(BaseModel):
    selected_on: Literal["validation"] = "validation"
    objective: str
    note: str = NOTE
    best: BestTrial | None = Field(description="The trial the search ranked first.")
    seeds: list[int] = Field(description="The confirmation's seeds.")
    confirmed: list[Confirmed]
    optimism: float | None = Field(
        description="The best trial's validation objective minus its configuration's mean "
        "validation objective on the fresh seeds, signed so that positive means the search's "
        "own figure was the better one: how much selecting on it flattered the winner (in the "
        "objective's units)."
    )


def report(search: Search, jobs: dict[str, Job], best: BestTrial | None) -> SearchReport:
    """The report so far: `best` as the planner ranks the trials; the confirmation's runs
    count once their jobs succeed, with their saved models' scores (which retention keeps)."""
    objective = search.request.get("objective", "val_accuracy")
    confirmed = []
    tests: dict[str, dict[int, float]] = {}
    for confirmation in search.confirmations or []:
        test, validation = {}, {}
        for index, job_id in enumerate(confirmation["jobs"]):
            job = jobs.get(job_id)
            if job is None or job.status != JobStatus.SUCCEEDED or job.result is None:
                continue
            test[index] = job.result.test_accuracy
            value = getattr(job.result, objective)
            if value is not None:
                validation[index] = value
        tests[confirmation["name"]] = test
        effects = [
            Effect.of(other, _paired(test, tests[other]))
            for other in tests
            if other != confirmation["name"]
        ]
        confirmed.append(
            Confirmed(
                name=confirmation["name"],
                trial=confirmation["trial"],
                params=confirmation["params"],
                jobs=confirmation["jobs"],
                test_accuracy=Interval.of(estimate(list(test.values()))),
                validation=Interval.of(estimate(list(validation.values()))),
                effects=effects,
            )
        )
    optimism = None
    same = next((c for c in confirmed if best and c.trial == best.trial), None)
    if best is not None and same is not None and same.validation is not None:
        optimism = best.value - same.validation.mean
        if objective == "val_loss":
            optimism = -optimism
    return SearchReport(
        objective=objective,
        best=best,
        seeds=search.seeds or [],
        confirmed=confirmed,
        optimism=optimism,
    )


def _paired(test: dict[int, float], other: dict[int, float]) -> Comparison:
    seeds = sorted(set(test) & set(other))
    return paired([test[s] for s in seeds], [other[s] for s in seeds])

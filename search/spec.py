"""Search specs: a base job spec, a space over its fields and its tricks' parameters, how to
sample it, what to select on, how to stop trials early and how to confirm the winners.

A key of the space is a spec field (`learning_rate`), a trick on or off (`tricks.dropout`) or a
trick's parameter (`tricks.dropout.rate`, which puts the trick on in every trial unless a
`tricks.dropout` key samples it). Every trial trains on `base.seed` for at most `base.epochs`;
the confirmation trains the winners on the seeds after it, which no trial used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StringConstraints, model_validator

from core.spec import MAX_SEED, SHAPE_FIELDS, TRICKS, Integer, JobSpec, Number, Strict

# What a key varies: it decides which distributions fit it.
Kind = Literal["number", "integer", "list", "flag", "label"]
# The spec fields a search may vary. Not epochs (base.epochs is each trial's budget), seed
# (trials share base.seed; the confirmation takes fresh ones), validation_size (the objective is
# measured on it), dataset or exact, nor tricks as a whole (tricks.NAME turns one on or off).
FIELD_KINDS: dict[str, Kind] = {
    "learning_rate": "number",
    "batch_size": "integer",
    "hidden_units": "list",
    "conv_filters": "list",
    "kernel_size": "integer",
    "dense_units": "list",
    "architecture": "label",
}
_PARAMETER_KINDS: dict[Any, Kind] = {float: "number", int: "integer", bool: "flag"}
FITTING_TYPES: dict[Kind, tuple[str, ...]] = {
    "number": ("log_uniform", "uniform", "choice"),
    "integer": ("int", "choice"),
    "list": ("choice",),
    "flag": ("choice",),
    "label": ("choice",),
}
_KIND_NAMES: dict[Kind, str] = {
    "number": "a number",
    "integer": "an integer",
    "list": "a list (each choice value a list of integers)",
    "flag": "true or false",
    "label": "a name",
}
# GridSampler lists every configuration up front; a larger grid could never be exhausted in
# max_trials (at most 1000) anyway.
MAX_GRID = 10_000


class FloatRange(Strict):
    """Numbers from low to high: evenly (uniform) or evenly in their logarithm (log_uniform)."""

    type: Literal["log_uniform", "uniform"]
    low: Number
    high: Number

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.type == "log_uniform" and self.low <= 0:
            raise ValueError(f"log_uniform needs low > 0, not {self.low}")
        return self


class IntRange(Strict):
    """Integers from low to high, both included; evenly in their logarithm when log is true.
    low must be below high: a field that takes one value belongs in base."""

    type: Literal["int"]
    low: Integer
    high: Integer
    log: StrictBool = Field(False, description="Sample evenly in the logarithm (needs low ≥ 1).")

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"int with log true needs low ≥ 1, not {self.low}")
        return self


ChoiceValue = (
    StrictBool
    | StrictInt
    | StrictFloat
    | Annotated[str, StringConstraints(strict=True, max_length=100)]
    | None
    | Annotated[list[Integer], Field(min_length=1, max_length=8)]
)


class Choice(Strict):
    """One of the values: JSON scalars, or lists of integers for list fields such as
    hidden_units; true and false for a trick on or off."""

    type: Literal["choice"]
    values: list[ChoiceValue] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _distinct(self) -> Choice:
        seen: set[Any] = set()
        for value in self.values:
            # True == 1 in Python, but they are different JSON values; 1 and 1.0 are the same.
            key = (isinstance(value, bool), tuple(value) if isinstance(value, list) else value)
            if key in seen:
                raise ValueError(f"{json.dumps(value)} is listed more than once")
            seen.add(key)
        return self


Distribution = Annotated[FloatRange | IntRange | Choice, Field(discriminator="type")]


class Asha(Strict):
    """Asynchronous successive halving: a trial stops at each rung (min_epochs · etaᵏ epochs,
    then base.epochs) unless it is among the best 1/eta of the trials that reached the rung."""

    type: Literal["asha"] = "asha"
    min_epochs: Integer = Field(1, ge=1, le=1000, description="Epochs to the first rung.")
    eta: Integer = Field(3, ge=2, le=100, description="Each rung has eta times the epochs.")


class NoScheduler(Strict):
    """Every trial trains base.epochs."""

    type: Literal["none"] = "none"


Scheduler = Annotated[Asha | NoScheduler, Field(discriminator="type")]


class Confirm(Strict):
    """The best configurations and the base, trained anew on fresh seeds."""

    top: Integer = Field(3, ge=1, le=10, description="Configurations confirmed, best first.")
    repeats: Integer = Field(
        3,
        ge=2,
        le=20,
        description="Seeds each: base.seed + 1 … base.seed + repeats, none used by a trial.",
    )


class SearchSpec(Strict):
    """What to search: trials that vary `space` around `base`, selected on validation only."""

    name: str = Field("", max_length=200, description="A label for people; need not be unique.")
    base: JobSpec = Field(
        default_factory=JobSpec,
        description="The spec every trial starts from. base.epochs is a trial's most epochs; "
        "every trial trains on base.seed.",
    )
    space: dict[str, Distribution] = Field(
        min_length=1,
        max_length=32,
        description="Key → distribution. Keys: "
        f"{', '.join(FIELD_KINDS)}; tricks.NAME (the trick on or off: a choice over true and "
        "false); tricks.NAME.PARAM (the trick's parameter, which puts the trick on in every "
        "trial unless a tricks.NAME key samples it). A trick in the space must not be in "
        "base.tricks.",
    )
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe",
        description="tpe: Optuna's tree-structured Parzen estimator (random for its first 10 "
        "trials). random: independent draws. grid: every combination of the choices once, in "
        "a shuffled order; needs every distribution to be a choice.",
    )
    objective: Literal["val_accuracy", "val_loss"] = Field(
        "val_accuracy",
        description="Selected on validation only: val_accuracy is maximised, val_loss minimised.",
    )
    max_trials: Integer = Field(
        20,
        ge=1,
        le=1000,
        description="Trials to run. With the grid sampler the search also ends once every "
        "configuration of the grid has been tried, if that comes first.",
    )
    max_concurrent_trials: Integer = Field(
        4,
        ge=1,
        le=64,
        description="Trials queued or training at once. More finish the search sooner, but "
        "each is sampled knowing less of the others' results.",
    )
    scheduler: Scheduler = Field(
        default_factory=Asha, description="How trials are stopped early: asha or none."
    )
    confirm: Confirm = Field(default_factory=Confirm)
    seed: Integer = Field(
        0, ge=0, le=MAX_SEED, description="Seeds the sampler (not the trials' training)."
    )

    @model_validator(mode="after")
    def _objective_on_validation(self) -> SearchSpec:
        if self.base.validation_size == 0:
            raise ValueError(
                f"objective {self.objective} is measured on validation images: "
                "base.validation_size must be > 0"
            )
        return self

    @model_validator(mode="after")
    def _rungs_fit(self) -> SearchSpec:
        if isinstance(self.scheduler, Asha) and self.scheduler.min_epochs >= self.base.epochs:
            raise ValueError(
                f"scheduler.min_epochs ({self.scheduler.min_epochs}) must be below base.epochs "
                f"({self.base.epochs}), a trial's most epochs; or use scheduler none"
            )
        return self

    @model_validator(mode="after")
    def _seeds_fit(self) -> SearchSpec:
        last = self.base.seed + self.confirm.repeats
        if last > MAX_SEED:
            raise ValueError(
                f"the confirmation's seeds run from base.seed + 1 to {last}, past the largest "
                f"seed {MAX_SEED}: lower base.seed"
            )
        return self

    @model_validator(mode="after")
    def _space_fits(self) -> SearchSpec:
        for key, distribution in self.space.items():
            kind = key_kind(key)
            if distribution.type not in FITTING_TYPES[kind]:
                raise ValueError(
                    f"space.{key}: takes {_KIND_NAMES[kind]}, which a {distribution.type} "
                    f"distribution does not give; use {' or '.join(FITTING_TYPES[kind])}"
                )
            trick = key.split(".")[1] if key.startswith("tricks.") else None
            if trick is not None and trick in {t.name for t in self.base.tricks}:
                raise ValueError(
                    f"space.{key}: trick {trick!r} is already in base.tricks; a search varies "
                    "tricks it adds to the base, so remove it there"
                )
        for key, distribution in self.space.items():
            _refuse_unfit(self, key, distribution)
        return self

    @model_validator(mode="after")
    def _grid_of_choices(self) -> SearchSpec:
        if self.sampler != "grid":
            return self
        ranges = [key for key, d in self.space.items() if not isinstance(d, Choice)]
        if ranges:
            raise ValueError(
                f"the grid sampler takes choices only, and {', '.join(ranges)} "
                f"{'is a range' if len(ranges) == 1 else 'are ranges'}: list their values as "
                '{"type": "choice", "values": [...]}, or use sampler tpe or random'
            )
        if self.grid_size > MAX_GRID:
            raise ValueError(
                f"the grid has {self.grid_size} configurations, more than {MAX_GRID}: "
                "use fewer choices, or sample the space with tpe or random"
            )
        return self

    @property
    def grid_size(self) -> int:
        """Configurations of the grid: the product of the choices' counts (ranges count 0)."""
        return math.prod(len(d.values) if isinstance(d, Choice) else 0 for d in self.space.values())

    @property
    def trial_limit(self) -> int:
        """Trials the search runs at most: max_trials, or fewer where a grid runs out first."""
        return min(self.max_trials, self.grid_size) if self.sampler == "grid" else self.max_trials

    def rungs(self) -> list[int]:
        """The epochs at which a trial is stopped, ascending; the last is base.epochs."""
        rungs = []
        if isinstance(self.scheduler, Asha):
            epochs = self.scheduler.min_epochs
            while epochs < self.base.epochs:
                rungs.append(epochs)
                epochs *= self.scheduler.eta
        return [*rungs, self.base.epochs]

    @property
    def confirmation_seeds(self) -> list[int]:
        return [self.base.seed + offset for offset in range(1, self.confirm.repeats + 1)]


def key_kind(key: str) -> Kind:
    """What the space's key varies; ValueError naming the allowed keys where it is none."""
    if key in FIELD_KINDS:
        return FIELD_KINDS[key]
    parts = key.split(".")
    if parts[0] != "tricks" or len(parts) not in (2, 3):
        raise ValueError(
            f"space: {key!r} is no key a search may vary; allowed: {', '.join(FIELD_KINDS)}, "
            "tricks.NAME or tricks.NAME.PARAM (epochs is the budget: base.epochs is a "
            "trial's most epochs)"
        )
    if parts[1] not in TRICKS:
        raise ValueError(f"space.{key}: no trick {parts[1]!r}; tricks: {', '.join(TRICKS)}")
    if len(parts) == 2:
        return "flag"
    fields = TRICKS[parts[1]].model_fields
    parameters = [name for name in fields if name != "name"]
    if parts[2] not in parameters:
        raise ValueError(
            f"space.{key}: trick {parts[1]!r} has no parameter {parts[2]!r}; its parameters: "
            f"{', '.join(parameters)}"
        )
    return _PARAMETER_KINDS[fields[parts[2]].annotation]


def _refuse_unfit(
    search: SearchSpec, key: str, distribution: FloatRange | IntRange | Choice
) -> None:
    """ValueError unless the base with the key at each end of the range (each choice) is a
    valid job spec, built as the planner builds a trial's."""
    for value in _ends(distribution):
        try:
            _corner(search, key, value)
        except ValueError as error:
            raise ValueError(
                f"space.{key}: {json.dumps(value)} gives no valid job spec: {error}"
            ) from None


def corners(search: SearchSpec) -> Iterator[tuple[str, JobSpec]]:
    """Each key of the space at each end of its range (each choice), the others at the
    base's: the specs to check against a deployment's limits before anything is queued."""
    for key, distribution in search.space.items():
        for value in _ends(distribution):
            yield key, _corner(search, key, value)


def _ends(distribution: FloatRange | IntRange | Choice) -> list[Any]:
    if isinstance(distribution, Choice):
        return list(distribution.values)
    return [distribution.low, distribution.high]


def _corner(search: SearchSpec, key: str, value: Any) -> JobSpec:
    from search.space import trial_spec  # space.py builds on this module's models

    return trial_spec(search.base, {**_architecture_for(search, key), key: value})


def _architecture_for(search: SearchSpec, key: str) -> dict[str, Any]:
    """{"architecture": owner} for a shape field where the space samples the architecture:
    the field applies only to the trials of the architecture it shapes."""
    sampled = search.space.get("architecture")
    owner = next((a for a, fields in SHAPE_FIELDS.items() if key in fields), None)
    if owner is None or not isinstance(sampled, Choice):
        return {}
    if owner not in sampled.values:
        raise ValueError(
            f"space.{key}: shapes architecture {owner!r}, which space.architecture never picks"
        )
    return {"architecture": owner}

"""Studies: a base spec, tricks to compare, a design and repeats, expanded into variants.

Every variant runs once per seed, and every variant uses the same seeds, so two variants'
runs pair up seed by seed: the comparison of a trick is then a paired one (analysis.report).
Variants that resolve to the same spec are one variant, so one job per seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from core.spec import (
    MAX_SEED,
    TRICK_TYPES,
    Architecture,
    Integer,
    JobSpec,
    Strict,
    TrickItem,
    refuse_repeated,
    trick_defaults,
)

Design = Literal["one_at_a_time", "leave_one_out", "cumulative", "full_factorial", "explicit"]
DESIGNS: dict[str, str] = {
    "one_at_a_time": "the base, and the base with each trick alone",
    "leave_one_out": "all the tricks, and all of them but one, for each",
    "cumulative": "the base, then adding the tricks one by one in the order given",
    "full_factorial": "every subset of the tricks",
    "explicit": "the trick lists given in `variants`",
}
# The study notebook's progression: its five classifiers, then its momentum optimizer.
# The notebook's tricks with its parameters where tricklab's defaults differ.
NOTEBOOK_TRICKS: tuple[dict[str, Any], ...] = (
    {"name": "dropout", "rate": 0.5},
    {"name": "weight_decay", "l2": 0.01},
    {"name": "early_stopping"},
    {"name": "batch_norm"},
    {"name": "momentum"},
)
NOTEBOOK_EPOCHS = 20
# Each preset's base: the same progression on the notebook's MLP, or on the default CNN, which
# learns in fewer epochs and costs about 100 times more a step.
PRESETS: dict[str, dict[str, Any]] = {
    "notebook": {"epochs": NOTEBOOK_EPOCHS, "batch_size": 32},
    "notebook-cnn": {"architecture": "cnn", "epochs": 10, "batch_size": 32},
}


class StudyError(ValueError):
    """The study cannot be expanded as asked; the message says why."""


class StudySpec(Strict):
    """What to compare. Every variant adds some of `tricks` to `base` and runs once per seed:
    `base.seed`, `base.seed + 1`, … (`repeats` seeds), the same seeds for every variant."""

    name: str = Field("", max_length=200, description="A label for people; need not be unique.")
    preset: Literal["notebook", "notebook-cnn"] | None = Field(
        None,
        description="notebook: the study notebook's progression base → +dropout → "
        "+weight_decay → +early_stopping → +batch_norm → +momentum with the notebook's "
        "dropout rate 0.5 and L2 0.01, 20 epochs, batch 32. "
        "notebook-cnn: the same progression on the default CNN (architecture cnn), 10 epochs, "
        "batch 32. Fields given beside it (repeats, base, ...) override the preset's; a base "
        "given beside it overrides the preset's base field by field.",
    )
    base: JobSpec = Field(
        default_factory=JobSpec, description="The spec every variant starts from."
    )
    tricks: list[TrickItem] = Field(
        default_factory=list,
        max_length=len(TRICK_TYPES),
        description="The tricks compared, each at most once (not for the explicit design).",
    )
    design: Design = Field(
        "one_at_a_time", description="; ".join(f"{k}: {v}" for k, v in DESIGNS.items())
    )
    variants: list[Annotated[list[TrickItem], Field(max_length=len(TRICK_TYPES))]] | None = Field(
        None, min_length=1, max_length=256, description="The explicit design's trick lists."
    )
    repeats: Integer = Field(
        3, ge=1, le=50, description="Seeds per variant (at least 2 for intervals)."
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and isinstance(data.get("preset"), str)
            and data["preset"] in PRESETS
        ):
            name = data["preset"]
            tricks = [dict(trick) for trick in NOTEBOOK_TRICKS]
            preset = {"name": name, "tricks": tricks, "design": "cumulative"}
            study = {**preset, **data}
            base = data.get("base", {})
            if isinstance(base, dict):  # the architecture stays unless the base names another
                study["base"] = {**PRESETS[name], **base}
            return study
        return data

    @model_validator(mode="after")
    def _seeds_fit(self) -> StudySpec:
        if self.seeds[-1] > MAX_SEED:
            raise ValueError(
                f"the seeds run from base.seed {self.base.seed} to {self.seeds[-1]} "
                f"({self.repeats} repeats), past the largest seed {MAX_SEED}: lower base.seed"
            )
        return self

    @model_validator(mode="after")
    def _check_design(self) -> StudySpec:
        if self.design == "explicit":
            if self.variants is None:
                raise ValueError("the explicit design needs 'variants': a list of trick lists")
            if self.tricks:
                raise ValueError(
                    "the explicit design takes its tricks from 'variants', not 'tricks'"
                )
            return self
        if self.variants is not None:
            raise ValueError(f"'variants' is only for the explicit design, not {self.design}")
        if not self.tricks:
            raise ValueError(f"the {self.design} design needs at least one trick in 'tricks'")
        names = [trick.name for trick in self.tricks]
        refuse_repeated(names)
        in_base = sorted(set(names) & {trick.name for trick in self.base.tricks})
        if in_base:
            raise ValueError(
                f"trick {', '.join(map(repr, in_base))} is already in the base spec: a study "
                "compares tricks added to the base"
            )
        return self

    @property
    def seeds(self) -> list[int]:
        return [self.base.seed + offset for offset in range(self.repeats)]


@dataclass(frozen=True)
class Variant:
    name: str
    tricks: tuple[str, ...]  # the tricks it adds to the base, by trick_label
    spec: JobSpec  # resolved, with the base's seed; its jobs take the study's seeds

    def job_spec(self, seed: int) -> JobSpec:
        return self.spec.model_copy(update={"seed": seed})

    def document(self) -> dict[str, Any]:
        """As a study stores it (its jobs' ids are added by the store)."""
        spec = self.spec.model_dump(mode="json", exclude={"seed"})
        return {"name": self.name, "tricks": list(self.tricks), "spec": spec}


def expand(study: StudySpec, max_jobs: int) -> list[Variant]:
    """The study's distinct variants, in design order. Raises StudyError."""
    variants: dict[str, Variant] = {}  # by resolved spec: colliding variants are one
    for added in _trick_lists(study):
        spec = _resolve(study.base, added)
        key = spec.model_dump_json()
        if key not in variants:
            resolved = {trick.name: trick.model_dump() for trick in spec.tricks}
            labels = tuple(trick_label(resolved[t["name"]], spec.architecture) for t in added)
            variants[key] = Variant(_name(study, labels), labels, spec)
    jobs = len(variants) * study.repeats
    if jobs > max_jobs:
        raise StudyError(
            f"the study would run {jobs} jobs ({len(variants)} variants × {study.repeats} "
            f"repeats); the limit is {max_jobs} (TRICKLAB_MAX_STUDY_JOBS): use fewer tricks, "
            "repeats or another design"
        )
    return list(variants.values())


def _trick_lists(study: StudySpec) -> list[list[dict[str, Any]]]:
    """Each variant's added tricks, as trick objects with the parameters the client gave."""
    if study.design == "explicit":
        return [_dumped(tricks) for tricks in study.variants or []]
    tricks = _dumped(study.tricks)
    count = len(tricks)
    if study.design == "one_at_a_time":
        return [[], *([trick] for trick in tricks)]
    if study.design == "leave_one_out":
        return [tricks, *([t for t in tricks if t is not left] for left in tricks)]
    if study.design == "cumulative":
        return [tricks[:size] for size in range(count + 1)]
    return [list(subset) for size in range(count + 1) for subset in combinations(tricks, size)]


def _resolve(base: JobSpec, added: list[dict[str, Any]]) -> JobSpec:
    document = base.template()
    document["tricks"] = [*document["tricks"], *added]
    try:
        return JobSpec.model_validate(document)
    except ValidationError as error:
        names = " + ".join(trick["name"] for trick in added) or "the base"
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors())
        raise StudyError(f"the variant with {names} is not a valid job spec: {reasons}") from None


def trick_label(trick: dict[str, Any], architecture: Architecture) -> str:
    """'dropout', or with the parameters that differ from the architecture's defaults:
    'dropout(rate=0.2)'."""
    defaults = trick_defaults(trick["name"], architecture)
    changed = [f"{key}={value}" for key, value in trick.items() if value != defaults[key]]
    return f"{trick['name']}({', '.join(changed)})" if changed else trick["name"]


def _name(study: StudySpec, added: tuple[str, ...]) -> str:
    if study.design == "leave_one_out":
        architecture = study.base.architecture
        every = [trick_label(trick, architecture) for trick in _dumped(study.tricks)]
        left_out = [label for label in every if label not in added]
        return f"all − {left_out[0]}" if left_out else "all"
    return variant_name(added)


def variant_name(labels: tuple[str, ...]) -> str:
    """The name of the base spec with these tricks added: 'base + dropout'."""
    return " + ".join(("base", *labels))


def _dumped(tricks: list[Any]) -> list[dict[str, Any]]:
    """Only the parameters the client gave: the others take the architecture's defaults when
    the variant's spec resolves, which a class default frozen in here would override."""
    return [{"name": trick.name, **trick.model_dump(exclude_unset=True)} for trick in tricks]

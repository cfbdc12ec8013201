"""The bridge to Optuna: a search's space as Optuna's distributions, its sampler and pruner, and
the job spec of a trial from the parameters Optuna gives.

The planner rebuilds an in-memory Optuna study from the database for every decision, so what it
stores must let it replay each trial exactly (`optuna.trial.create_trial`, `Study.add_trial`):
- every trial, failed ones included, in trial-number order: Optuna numbers a study's trials by
  their position, and the samplers below are seeded by that number;
- params as Optuna gives them (`encoded` turns the values people read back into them), with
  `distributions(spec)`;
- state COMPLETE or PRUNED with the objective's value, FAIL without one, or RUNNING for a trial
  queued or training (`add_trial` takes RUNNING trials; TPE's constant liar steers away from
  their params). Never WAITING: `Study.ask` hands out a WAITING trial instead of sampling;
- intermediate_values by epoch, which the pruner reads;
- system_attrs, which GridSampler and SuccessiveHalvingPruner write and read: GridSampler's
  "grid_id" (int) and "search_space" (key → its encoded choices) from `ask`, the pruner's
  "completed_rung_K" (the objective's value at rung K) from `pruner(spec).prune`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import ValidationError

from core.spec import SHAPE_FIELDS, JobSpec, trick_defaults
from search.spec import FIELD_KINDS, Asha, FloatRange, IntRange, SearchSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def distributions(spec: SearchSpec) -> dict[str, BaseDistribution]:
    """The space as Optuna's distributions; a choice of lists offers them as JSON strings."""
    found: dict[str, BaseDistribution] = {}
    for key, distribution in spec.space.items():
        if isinstance(distribution, FloatRange):
            log = distribution.type == "log_uniform"
            found[key] = FloatDistribution(distribution.low, distribution.high, log=log)
        elif isinstance(distribution, IntRange):
            found[key] = IntDistribution(distribution.low, distribution.high, log=distribution.log)
        else:
            found[key] = CategoricalDistribution([_encoded(v) for v in distribution.values])
    return found


def _encoded(value: Any) -> Any:
    # Optuna's choices are None, bool, int, float or str; canonical JSON keeps lists apart.
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list) else value


def decoded(params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's params (as `trial.params` gives them) → the values people read: lists back as
    lists. Decoded params pass through unchanged."""
    return {
        key: json.loads(value)
        if FIELD_KINDS.get(key) == "list" and isinstance(value, str)
        else value
        for key, value in params.items()
    }


def trial_spec(base: JobSpec, params: dict[str, Any]) -> JobSpec:
    """The base with the params (Optuna's or decoded) applied; ValueError with the reasons
    where they make no valid job spec, such as conv blocks that leave no position.

    A spec field is set. `tricks.NAME` true adds the trick, false leaves it off;
    `tricks.NAME.PARAM` sets the parameter and adds the trick unless `tricks.NAME` is false.
    Parameters not given stay unset, so they take their architecture's defaults. Where the
    params pick another architecture than the base's, the base's shape fields and its tricks'
    parameters at the base architecture's defaults are dropped for the new one's, and shape
    fields of the architecture not picked are ignored.
    """
    values = decoded(params)
    document = base.template()
    architecture = values.get("architecture", base.architecture)
    if architecture != base.architecture and architecture in SHAPE_FIELDS:
        for field in SHAPE_FIELDS[base.architecture]:
            document[field] = None
        document["tricks"] = [_without_defaults(t, base.architecture) for t in document["tricks"]]
    for key, value in values.items():
        ignored = "architecture" in values and _shapes_another(key, architecture)
        if not key.startswith("tricks.") and not ignored:
            document[key] = value
    document["tricks"] = [*document["tricks"], *_added_tricks(values)]
    try:
        return JobSpec.model_validate(document)
    except ValidationError as error:
        raise ValueError(_reasons(error)) from None


def _shapes_another(key: str, architecture: str) -> bool:
    return any(key in fields for a, fields in SHAPE_FIELDS.items() if a != architecture)


def _without_defaults(trick: dict[str, Any], architecture: Literal["mlp", "cnn"]) -> dict[str, Any]:
    defaults = trick_defaults(trick["name"], architecture)
    return {k: v for k, v in trick.items() if k == "name" or v != defaults[k]}


def _added_tricks(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The tricks the params put on, each with the parameters they set."""
    on: dict[str, bool] = {}
    added: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if not key.startswith("tricks."):
            continue
        name, _, parameter = key.removeprefix("tricks.").partition(".")
        if parameter:
            added.setdefault(name, {"name": name})[parameter] = value
        elif isinstance(value, bool):
            on[name] = value
            added.setdefault(name, {"name": name})
        else:
            raise ValueError(f"{key}: a trick is on or off, true or false, not {json.dumps(value)}")
    return [trick for name, trick in added.items() if on.get(name, True)]


def _reasons(error: ValidationError) -> str:
    """'batch_size: Input should be ...; tricks.dropout.rate: ...': each problem at its key."""
    reasons = []
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"] if not isinstance(part, int))
        message = str(problem["msg"]).removeprefix("Value error, ")
        reasons.append(f"{path}: {message}" if path else message)
    return "; ".join(reasons)


def sampler(spec: SearchSpec, trial_number: int) -> optuna.samplers.BaseSampler:
    """The sampler that asks trial `trial_number`: the same history and number give the same
    params, however often the planner rebuilds the study."""
    if spec.sampler == "grid":
        # GridSampler gives trial n the n-th configuration of one shuffled order, so every
        # trial's sampler must shuffle alike: seeded by the search alone.
        grid = distributions(spec)  # choices only, as the spec checks
        choices = {
            key: list(d.choices)
            for key, d in grid.items()
            if isinstance(d, CategoricalDistribution)
        }
        return optuna.samplers.GridSampler(choices, seed=spec.seed)
    seed = int(np.random.SeedSequence([spec.seed, trial_number]).generate_state(1)[0])
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Several trials train at once: the constant liar counts those still running as bad
    # results, so that TPE samples away from them instead of next to them.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    """Successive halving at the spec's rungs for asha; never prunes for none.

    Asynchronous successive halving as its paper has it: a trial goes on from a rung only
    once η trials have reached it, and then only the best 1/η of them. Without the bootstrap
    count, Optuna would let the best so far through while fewer than η had arrived, and the
    first trials of a search would run to the end whatever they are worth."""
    if isinstance(spec.scheduler, Asha):
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.scheduler.min_epochs,
            reduction_factor=spec.scheduler.eta,
            min_early_stopping_rate=0,
            bootstrap_count=spec.scheduler.eta - 1,
        )
    return optuna.pruners.NopPruner()


def direction(spec: SearchSpec) -> Literal["maximize", "minimize"]:
    return "maximize" if spec.objective == "val_accuracy" else "minimize"

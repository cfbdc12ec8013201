"""Plots of a search's trials, PNG or SVG: the space in parallel coordinates coloured by the
objective, the best so far by trial, and ASHA's rungs with the promoted trials.

They read the trials as the API answers them (service.schemas.TrialRead: params decoded, values
by epoch) and draw as analysis.plots draws a study's: matplotlib's object API, titles and the
values users write drawn as written. Each trial's line is an SVG group with the id `trial-N`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator, PercentFormatter

from analysis import plots
from analysis.plots import NEUTRAL, NothingToPlot
from search.space import direction
from search.spec import Choice, Distribution, IntRange, SearchSpec
from search.states import TrialState

PlotName = Literal["parallel", "best", "rungs"]
NAMES = (
    "parallel: the space in parallel coordinates, one line per trial coloured by its objective "
    "at its last epoch; best: each trial's objective at its last epoch and the best completed "
    "trial so far; rungs: each trial's objective at each of ASHA's rungs it reached, promoted "
    "trials highlighted."
)
OBJECTIVES = {"val_accuracy": "validation accuracy", "val_loss": "validation loss"}
HIGHLIGHT = "#e66101"
BEST = "#1f77b4"
COLUMN_INCHES = 1.4  # a parallel axis, its tick labels beside it
TICKS = 5  # on a range's parallel axis, evenly spaced as drawn


class Trial(Protocol):
    """What the plots read of a trial: service.schemas.TrialRead answers it."""

    @property
    def number(self) -> int: ...

    @property
    def params(self) -> dict[str, Any]: ...

    @property
    def state(self) -> str: ...

    @property
    def rung(self) -> int: ...

    @property
    def values(self) -> dict[int, float]: ...


def render(
    name: PlotName, spec: SearchSpec, trials: Sequence[Trial], title: str, fmt: plots.Format
) -> bytes:
    """The named plot of the search's trials as an image file."""
    return plots.image(draw(name, spec, trials, title), fmt)


def draw(name: PlotName, spec: SearchSpec, trials: Sequence[Trial], title: str) -> Figure:
    """The named plot as a figure; NothingToPlot while no trial has a value on validation."""
    scored = [trial for trial in trials if trial.values and math.isfinite(last(trial))]
    if not scored:
        raise NothingToPlot("no trial has a value on validation yet")
    return DRAW[name](spec, scored, plots.heading(title))


def last(trial: Trial) -> float:
    """The trial's objective at the last epoch it trained."""
    return trial.values[max(trial.values)]


def _parallel(spec: SearchSpec, trials: list[Trial], title: str) -> Figure:
    keys = list(spec.space)
    finals = np.array([last(trial) for trial in trials])
    low, high = float(finals.min()), float(finals.max())
    if low == high:  # one value: its axis spans a little either side
        low, high = low - 0.005, high + 0.005
    columns = [
        _column(spec.space[key], [trial.params.get(key) for trial in trials]) for key in keys
    ]
    columns.append(((finals - low) / (high - low), _objective_ticks(spec, low, high)))
    figure = Figure(figsize=(max(10, COLUMN_INCHES * len(columns)), 6), layout="constrained")
    axes = figure.subplots()
    colours = matplotlib.colormaps["viridis" if direction(spec) == "maximize" else "viridis_r"]
    norm = Normalize(low, high)
    # The better trials last, on top.
    order = sorted(range(len(trials)), key=lambda i: finals[i] * _sign(spec))
    for i in order:
        completed = trials[i].state == TrialState.COMPLETED
        (line,) = axes.plot(
            range(len(columns)),
            [positions[i] for positions, _ in columns],
            color=colours(norm(finals[i])),
            linewidth=1.8 if completed else 0.9,
            alpha=0.9 if completed else 0.5,
        )
        line.set_gid(f"trial-{trials[i].number}")
    for x, (_, ticks) in enumerate(columns):
        axes.axvline(x, color="black", linewidth=0.8)
        for position, text in ticks:
            axes.annotate(
                text,
                (x, position),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1},
            )
    names = [*keys, OBJECTIVES[spec.objective]]
    axes.set_xticks(range(len(columns)), names, rotation=15, ha="right", rotation_mode="anchor")
    axes.yaxis.set_major_locator(NullLocator())
    axes.set(xlim=(-0.2, len(columns) - 0.4), ylim=(-0.05, 1.05))
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)
    figure.suptitle(
        f"{title}\nthe space in parallel coordinates: one line per trial, coloured by its "
        f"{OBJECTIVES[spec.objective]} at its last epoch\nthick: completed trials, thin: "
        "stopped at an earlier rung or still training"
    )
    return figure


Column = tuple[np.ndarray, list[tuple[float, str]]]  # each trial's position from 0 to 1, ticks


def _column(distribution: Distribution, values: list[Any]) -> Column:
    """A key's parallel axis: choices evenly spaced in their order, ranges from low to high
    (log distributions evenly in the logarithm)."""
    if isinstance(distribution, Choice):
        keys = [_choice_key(choice) for choice in distribution.values]
        spaced = [0.5] if len(keys) == 1 else list(np.linspace(0, 1, len(keys)))
        found = [_choice_key(value) for value in values]
        positions = np.array([spaced[keys.index(k)] if k in keys else np.nan for k in found])
        labels = [plots.label(_text(choice), COLUMN_INCHES - 0.2) for choice in distribution.values]
        return positions, list(zip(spaced, labels, strict=True))
    log = distribution.type == "log_uniform" or (
        isinstance(distribution, IntRange) and distribution.log
    )
    ends = np.array([distribution.low, distribution.high], dtype=float)
    low, high = np.log10(ends) if log else ends

    def position(numbers: Any) -> np.ndarray:
        found = np.array(numbers, dtype=float)
        return ((np.log10(found) if log else found) - low) / (high - low)

    ticks = low + np.linspace(0, 1, TICKS) * (high - low)
    ticks = 10**ticks if log else ticks
    if isinstance(distribution, IntRange):
        ticks = np.unique(np.round(ticks))  # the integers among them, each once
    texts = [f"{round(t)}" if isinstance(distribution, IntRange) else f"{t:.3g}" for t in ticks]
    positions = position([np.nan if value is None else value for value in values])
    return positions, list(zip(position(ticks).tolist(), texts, strict=True))


def _objective_ticks(spec: SearchSpec, low: float, high: float) -> list[tuple[float, str]]:
    return [
        (float(p), _objective_text(spec, low + p * (high - low))) for p in np.linspace(0, 1, TICKS)
    ]


def _best(spec: SearchSpec, trials: list[Trial], title: str) -> Figure:
    figure = Figure(figsize=(10, 6), layout="constrained")
    axes = figure.subplots()
    trials = sorted(trials, key=lambda trial: trial.number)
    completed = [trial for trial in trials if trial.state == TrialState.COMPLETED]
    others = [trial for trial in trials if trial.state != TrialState.COMPLETED]
    for group, colour, name in (
        (others, NEUTRAL, "stopped at an earlier rung, or training"),
        (completed, BEST, "completed"),
    ):
        if group:
            numbers = [trial.number for trial in group]
            axes.plot(numbers, [last(trial) for trial in group], "o", color=colour, label=name)
    if completed:
        numbers = [trial.number for trial in completed]
        signed = np.array([last(trial) * _sign(spec) for trial in completed])
        running = list(np.maximum.accumulate(signed) * _sign(spec))
        end = max(trial.number for trial in trials)  # the best so far holds to the last trial
        axes.step(
            [*numbers, end], [*running, running[-1]], where="post", color=BEST, label="best so far"
        )
    axes.set(xlabel="trial", ylabel=OBJECTIVES[spec.objective])
    _objective_axis(axes, spec)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.suptitle(
        f"{title}\neach trial's {OBJECTIVES[spec.objective]} at its last epoch, and the best "
        "completed trial so far"
    )
    return figure


def _rungs(spec: SearchSpec, trials: list[Trial], title: str) -> Figure:
    rungs = spec.rungs()
    figure = Figure(figsize=(10, 6), layout="constrained")
    axes = figure.subplots()
    drawn = 0
    for trial in trials:
        reached = [(rung, epochs) for rung, epochs in enumerate(rungs) if epochs in trial.values]
        if not reached:
            continue
        epochs = [epochs for _, epochs in reached]
        (line,) = axes.plot(
            epochs,
            [trial.values[e] for e in epochs],
            "o-",
            color=NEUTRAL,
            alpha=0.6,
            linewidth=0.8,
            markersize=4,
        )
        line.set_gid(f"trial-{trial.number}")
        # A trial past a rung was among the best 1/η there: promoted.
        promoted = [epochs for rung, epochs in reached if rung < trial.rung]
        axes.plot(promoted, [trial.values[e] for e in promoted], "o", color=HIGHLIGHT, zorder=3)
        drawn += 1
    if not drawn:
        raise NothingToPlot(f"no trial has reached its first rung ({rungs[0]} epochs) yet")
    axes.set_xscale("log")  # the rungs grow by η
    axes.set_xticks(rungs, [str(epochs) for epochs in rungs])
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set(xlabel="epochs (each rung)", ylabel=OBJECTIVES[spec.objective])
    _objective_axis(axes, spec)
    axes.grid(alpha=0.3)
    axes.legend(
        handles=[
            Line2D([], [], marker="o", color=HIGHLIGHT, linestyle="", label="promoted onwards"),
            Line2D([], [], marker="o", color=NEUTRAL, label="a trial, rung by rung"),
        ]
    )
    figure.suptitle(
        f"{title}\nASHA's rungs: each trial's {OBJECTIVES[spec.objective]} at every rung it reached"
    )
    return figure


DRAW: dict[str, Callable[[SearchSpec, list[Trial], str], Figure]] = {
    "parallel": _parallel,
    "best": _best,
    "rungs": _rungs,
}


def _sign(spec: SearchSpec) -> int:
    """+1 where a higher objective is better."""
    return 1 if direction(spec) == "maximize" else -1


def _objective_axis(axes: Axes, spec: SearchSpec) -> None:
    if spec.objective == "val_accuracy":
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))


def _objective_text(spec: SearchSpec, value: float) -> str:
    return f"{value:.1%}" if spec.objective == "val_accuracy" else f"{value:.3g}"


def _choice_key(value: Any) -> tuple[bool, Any]:
    # As the spec tells choices apart: true is not 1, and lists are compared by value.
    return isinstance(value, bool), tuple(value) if isinstance(value, list) else value


def _text(value: Any) -> str:
    """A choice as JSON writes it (true, [32, 16], null); a name as written."""
    return value if isinstance(value, str) else json.dumps(value)

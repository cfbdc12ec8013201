"""Plots of a comparison report (analysis.report): learning curves with confidence bands, the final
test accuracy per variant with error bars, the generalisation gap, and each trick's paired
effect. PNG or SVG.

Drawn with matplotlib's object API, never pyplot: pyplot keeps global state that is not
thread-safe, and the service renders plots in its worker threads.

Titles and names are text that users write (a study's name), so they are drawn as written:
never parsed as mathtext, on lines of their own, cut to a length that fits (see `_lines`).
"""

from __future__ import annotations

import io
import textwrap
from bisect import bisect_right
from collections.abc import Callable
from typing import Any, Literal

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import text_to_path
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

from analysis.report import Curve, ReportRead, VariantReport
from analysis.stats import Estimate

PlotName = Literal["curves", "accuracy", "gap", "effects"]
JobPlotName = Literal["curves", "gap"]  # a single job has no variants to compare
Format = Literal["png", "svg"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}
DPI = 100

# Set once for the process (rc_context would not be thread-safe): text stays text in SVGs,
# and the same plot gives the same SVG bytes. Every text is drawn as written: mathtext would
# draw a study named "$x$" as an italic x and fail on one named "$\frac{a}{b}$" (the plot a
# 500); no text of these plots is meant as mathtext or LaTeX.
matplotlib.rcParams.update(
    {
        "svg.fonttype": "none",
        "svg.hashsalt": "tricklab",
        "font.size": 10,
        "text.parse_math": False,
        "text.usetex": False,
    }
)

RANGES = {"train_loss": (0, None), "val_loss": (0, None), "gap": (-1, 1)} | dict.fromkeys(
    ("train_accuracy", "val_accuracy", "test_accuracy"), (0, 1)
)
# Room for text, measured as drawn (a line of W is twice as wide as one of i): a title line
# across the narrowest figure (10 inches), in lines of at most TITLE_CHARACTERS; a variant's
# name as a row label or a legend entry, beside a row's note and a plot still worth reading
# (about 80 characters of ordinary text; all the notebook's tricks take 70, but with the
# notebook's own parameters its preset's last variant takes 88 and is cut); a trick's, beside
# the effects plot's long axis label, which needs more room (about 55 characters; a trick with
# all its parameters set takes 40).
FIGURE_INCHES = 9.5
TITLE_CHARACTERS, TITLE_LINES = 70, 2
VARIANT_INCHES, TRICK_INCHES = 6.5, 4.5
LEGEND_HANDLE_INCHES = 0.8  # a legend entry's line sample, and the padding around it
VERDICT_COLOURS = {"helps": "#1a9850", "hurts": "#d73027"}
NEUTRAL = "#7f7f7f"


class NothingToPlot(Exception):
    """The report has no finished runs (or no compared tricks) to draw yet."""


def render(name: PlotName, data: ReportRead, title: str, fmt: Format = "png") -> bytes:
    """The named plot of a report as an image file."""
    return image(draw(name, data, title), fmt)


def image(figure: Figure, fmt: Format) -> bytes:
    """A figure as an image file."""
    out = io.BytesIO()
    # No creation date in the file: the same report always gives the same bytes.
    metadata = {"Date": None} if fmt == "svg" else {}
    figure.savefig(out, format=fmt, dpi=DPI, metadata=metadata)
    return out.getvalue()


def _curves(data: ReportRead, title: str) -> Figure:
    variants = _with_runs(data)
    figure = Figure(figsize=(11, 8), layout="constrained")
    panels = [
        ("train_loss", "Training loss", "loss"),
        ("val_loss", "Validation loss", "loss"),
        ("val_accuracy", "Validation accuracy", "accuracy"),
        ("test_accuracy", "Test accuracy", "accuracy"),
    ]
    for axes, (key, heading, unit) in zip(figure.subplots(2, 2).flat, panels, strict=True):
        drawn = [_band(axes, v, key, colour) for v, colour in _coloured(variants)]
        axes.set(title=heading, xlabel="epoch", ylabel=unit)
        _epoch_axis(axes)
        if unit == "accuracy":
            axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        if not any(drawn):
            _note(axes, "not recorded (no validation split)")
    _legend(figure, variants)
    figure.suptitle(f"{title}\nlearning curves\n{_band_caption(variants)}")
    return figure


def _gap(data: ReportRead, title: str) -> Figure:
    variants = _with_runs(data)
    figure = Figure(figsize=(10, 6), layout="constrained")
    axes = figure.subplots()
    drawn = [_band(axes, v, "gap", colour) for v, colour in _coloured(variants)]
    if not any(drawn):
        raise NothingToPlot("no validation split, so no generalisation gap was recorded")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set(xlabel="epoch", ylabel="training − validation accuracy")
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    _epoch_axis(axes)
    _legend(figure, variants)
    figure.suptitle(
        f"{title}\ngeneralisation gap (above 0: better on the training data than on held-out "
        f"data)\n{_band_caption(variants)}"
    )
    return figure


def _accuracy(data: ReportRead, title: str) -> Figure:
    variants = [v for v in _with_runs(data) if v.final_test_accuracy]
    if not variants:
        raise NothingToPlot("no finished run has a test accuracy yet")
    figure, axes = _interval_rows([label(v.name, VARIANT_INCHES) for v in variants])
    for row, (variant, colour) in enumerate(_coloured(variants)):
        accuracy = variant.final_test_accuracy
        assert accuracy is not None
        high = accuracy.high
        spread = "" if high is None else f" ± {(high - accuracy.mean) * 100:.2f}"
        _interval(axes, row, accuracy, colour, f"{accuracy.mean * 100:.2f}{spread}%")
        seeds = [run.test_accuracy for run in variant.runs if run.test_accuracy is not None]
        axes.plot(seeds, [row] * len(seeds), "o", color=colour, alpha=0.35, markersize=4)
    axes.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    axes.set_xlabel("final test accuracy")
    figure.suptitle(
        f"{title}\nfinal test accuracy: "
        "◆ mean over seeds, bars: 95% confidence interval, dots: single seeds"
    )
    return figure


def _effects(data: ReportRead, title: str) -> Figure:
    effects = [e for e in data.effects if e.difference]
    if not effects:
        raise NothingToPlot(
            "no trick is compared yet: it needs two variants that differ by that trick alone, "
            "with runs of the same seeds finished"
        )
    figure, axes = _interval_rows([label(e.trick, TRICK_INCHES) for e in effects])
    for row, effect in enumerate(effects):
        colour = VERDICT_COLOURS.get(effect.verdict, NEUTRAL)
        assert effect.difference is not None
        _interval(axes, row, effect.difference, colour, effect.verdict)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x * 100:+.1f}"))
    axes.set_xlabel("change in final test accuracy when the trick is added (percentage points)")
    figure.suptitle(
        f"{title}\nwhat each trick does: "
        "◆ mean paired difference over seeds, bars: 95% confidence interval"
    )
    return figure


DRAW: dict[str, Callable[[ReportRead, str], Figure]] = {
    "curves": _curves,
    "accuracy": _accuracy,
    "gap": _gap,
    "effects": _effects,
}


def draw(name: PlotName, data: ReportRead, title: str) -> Figure:
    """The named plot of a report as a figure. The title may hold text that users write: it is
    drawn as written, on at most TITLE_LINES lines of its own above the plot's description."""
    return DRAW[name](data, heading(title))


def heading(title: str) -> str:
    """A title that users may write, as drawn: on at most TITLE_LINES lines (see `_lines`)."""
    return _lines(title, TITLE_CHARACTERS, TITLE_LINES)


def _with_runs(data: ReportRead) -> list[VariantReport]:
    variants = [v for v in data.variants if v.curves.epoch]
    if not variants:
        raise NothingToPlot("no run has finished an epoch yet")
    return variants


def _coloured(variants: list[VariantReport]) -> list[tuple[VariantReport, Any]]:
    """A colour per variant, in report order: the same variant has the same colour in every
    plot of one report."""
    palette = matplotlib.colormaps["tab10" if len(variants) <= 10 else "tab20"]
    return [(v, palette(i % palette.N)) for i, v in enumerate(variants)]


def _band(axes: Axes, variant: VariantReport, key: str, colour: Any) -> bool:
    """The mean curve and its 95% band; False when the metric was not recorded."""
    curve: Curve = getattr(variant.curves, key)
    mean = np.array(curve.mean, dtype=float)  # None (not recorded) becomes NaN
    if np.isnan(mean).all():
        return False
    epochs = variant.curves.epoch
    marker = "o" if len(epochs) == 1 else None  # one point draws no line
    name = label(variant.name, VARIANT_INCHES)
    axes.plot(epochs, mean, color=colour, label=name, marker=marker, linewidth=1.6)
    # An interval past what the metric can reach (accuracy over 100%, a negative loss) says
    # only that the runs are few: draw it to the reachable range.
    floor, ceiling = RANGES[key]
    low = np.clip(np.array(curve.low, dtype=float), floor, ceiling)
    high = np.clip(np.array(curve.high, dtype=float), floor, ceiling)
    axes.fill_between(epochs, low, high, color=colour, alpha=0.18, linewidth=0)
    return True


def _interval_rows(labels: list[str]) -> tuple[Figure, Axes]:
    """A chart of one labelled row per estimate, the first on top."""
    figure = Figure(figsize=(10, 1.8 + 0.5 * len(labels)), layout="constrained")
    axes = figure.subplots()
    axes.set_yticks(range(len(labels)), labels)
    axes.invert_yaxis()
    axes.margins(y=0.5 / len(labels))
    axes.grid(axis="x", alpha=0.3)
    return figure, axes


def _interval(axes: Axes, row: int, value: Estimate, colour: Any, text: str) -> None:
    """A mean as a diamond on its row, its confidence interval as a bar, and a note at the
    right edge."""
    if value.low is not None and value.high is not None:
        bar = [[value.mean - value.low], [value.high - value.mean]]
        axes.errorbar(value.mean, row, xerr=bar, fmt="none", ecolor=colour, capsize=4)
    axes.plot(value.mean, row, "D", color=colour, markersize=7)
    axes.annotate(
        f"{text} (n={value.n})",
        (1, row),
        xycoords=("axes fraction", "data"),
        xytext=(6, 0),
        textcoords="offset points",
        va="center",
        color=colour,
    )


def _legend(figure: Figure, variants: list[VariantReport]) -> None:
    """One legend for the figure, below the plots, in as many columns as the names fit."""
    if len(variants) < 2:
        return
    handles, labels = figure.axes[0].get_legend_handles_labels()
    size = matplotlib.rcParams["legend.fontsize"]
    widest = max(_inches(label, size) for label in labels) + LEGEND_HANDLE_INCHES
    columns = max(1, min(3, int(FIGURE_INCHES // widest), len(variants)))
    figure.legend(handles, labels, loc="outside lower center", ncols=columns)


def _band_caption(variants: list[VariantReport]) -> str:
    seeds = sorted({len(v.seeds) for v in variants})
    if seeds == [1]:
        return "one run" if len(variants) == 1 else "one run per variant: no confidence bands"
    counts = "/".join(map(str, seeds))
    return f"lines: mean over {counts} seeds, bands: 95% confidence interval"


def _epoch_axis(axes: Axes) -> None:
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)


def _note(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, transform=axes.transAxes, ha="center", va="center", color=NEUTRAL)


# Characters that would break a line, or the plot: a line break (of any kind) in a name would
# start a line of the title or legend that the name does not own, control characters and
# unpaired surrogates are not allowed in an SVG (XML) file and have no glyph, and the bidi
# controls reorder the text after them in a browser's SVG but not in the PNG. Line breaks
# become spaces; the rest become U+FFFD, so that what was there still shows.
_BREAKS = "\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029"
_UNDRAWABLE = [
    *range(0x20),
    *range(0x7F, 0xA0),
    *range(0xD800, 0xE000),
    0xFFFE,
    0xFFFF,
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
_DRAWABLE = str.maketrans({c: " " if chr(c) in _BREAKS else "\ufffd" for c in _UNDRAWABLE})


def _lines(text: str, width: int, count: int) -> str:
    """A title as drawn: printable, broken at spaces into at most `count` lines of at most
    `width` characters (a word longer than a line is broken too) that fit across the figure,
    the rest cut off with an ellipsis."""
    lines = textwrap.wrap(text.translate(_DRAWABLE), width, break_on_hyphens=False)
    if len(lines) > count:
        lines = lines[:count]
        lines[-1] = lines[-1][: width - 1].rstrip() + "…"
    size = matplotlib.rcParams["figure.titlesize"]
    return "\n".join(_fit(line, FIGURE_INCHES, size) for line in lines)


def label(name: str, inches: float) -> str:
    """A name (a variant's, a trick's, a search's choice) as a row label, a legend entry or a
    tick label: printable, on one line, cut off with an ellipsis where wider than `inches`."""
    return _fit(name.translate(_DRAWABLE), inches, matplotlib.rcParams["ytick.labelsize"])


def _fit(text: str, inches: float, size: Any) -> str:
    """The text, or as much of its start as fits in `inches` with an ellipsis after it."""
    if _inches(text, size) <= inches:
        return text
    fits = bisect_right(
        range(len(text)), inches, key=lambda end: _inches(text[:end].rstrip() + "…", size)
    )
    return text[: fits - 1].rstrip() + "…"


def _inches(text: str, size: Any) -> float:
    """How wide the text is drawn at this font size (as matplotlib takes it: 10, "large")."""
    width, _, _ = text_to_path.get_text_width_height_descent(
        text, FontProperties(size=size), ismath=False
    )
    return float(width) / 72

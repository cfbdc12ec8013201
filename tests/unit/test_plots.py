"""Every plot of a report is a valid PNG or SVG of a readable size that shows what it is
about, the same report gives the same SVG, and a report with nothing to draw says why."""

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from analysis import plots
from analysis.report import job_curves, job_variants, report
from core.spec import JobSpec
from jobqueue.models import EpochMetrics, Job
from jobqueue.states import JobStatus
from tests.support.data import RESULT

SVG = "{http://www.w3.org/2000/svg}"
EPOCHS = 6


def trained(tricks, seed, validation=True):
    """A succeeded job and its epoch rows; dropout lowers the loss a little, by a different
    amount on each seed (a verdict needs a spread), and seeds add noise."""
    spec = JobSpec.model_validate({"tricks": tricks, "seed": seed, "epochs": EPOCHS})
    job_id = f"{'-'.join(tricks) or 'base'}-{seed}"
    rows = []
    for epoch in range(1, EPOCHS + 1):
        loss = 1 / epoch - 0.02 * len(tricks) * (1 + 0.1 * seed) + 0.01 * seed
        rows.append(
            EpochMetrics(
                job_id=job_id,
                epoch=epoch,
                train_loss=loss,
                train_accuracy=0.9 - loss / 4,
                val_loss=loss + 0.1 if validation else None,
                val_accuracy=0.88 - loss / 4 if validation else None,
                test_loss=loss + 0.1,
                test_accuracy=0.87 - loss / 4,
                train_objective=loss,
                learning_rate=0.01,
                seconds=1.0,
            )
        )
    job = Job(
        id=job_id,
        status=JobStatus.SUCCEEDED,
        spec=spec.model_dump(mode="json"),
        result=RESULT.model_copy(
            update={"test_accuracy": rows[-1].test_accuracy, "test_loss": rows[-1].test_loss}
        ),
    )
    return job, rows


def study_report(validation=True):
    runs = [trained(tricks, seed, validation) for tricks in ([], ["dropout"]) for seed in range(3)]
    return report(job_variants([job for job, _ in runs], {job.id: rows for job, rows in runs}))


def svg_text(image: bytes) -> str:
    root = ET.fromstring(image)
    assert root.tag == f"{SVG}svg"
    return " ".join(element.text or "" for element in root.iter(f"{SVG}text"))


@pytest.mark.parametrize("name", ["curves", "accuracy", "gap", "effects"])
def test_each_study_plot_is_a_png_of_a_readable_size(name):
    image = Image.open(io.BytesIO(plots.render(name, study_report(), "Study 'tiny'")))
    assert image.format == "PNG"
    width, height = image.size
    assert 800 <= width <= 1600 and 200 <= height <= 1200
    assert len(np.unique(np.asarray(image.convert("L")))) > 20  # drawn, not blank


@pytest.mark.parametrize(
    ("name", "shows"),
    [
        ("curves", ["Training loss", "Validation accuracy", "base + dropout", "3 seeds"]),
        ("accuracy", ["final test accuracy", "base + dropout", "(n=3)"]),
        ("gap", ["generalisation gap", "base + dropout"]),
        ("effects", ["dropout", "helps (n=3)", "percentage points"]),
    ],
)
def test_each_study_plot_as_svg_names_what_it_shows(name, shows):
    image = plots.render(name, study_report(), "Study 'tiny'", "svg")
    text = svg_text(image)
    for words in ["Study 'tiny'", *shows]:
        assert words in text
    assert plots.render(name, study_report(), "Study 'tiny'", "svg") == image


@pytest.mark.parametrize(
    ("seeds", "spread", "verdict"),
    [(3, 0.1, "helps"), (2, 0.1, "not enough repeats"), (3, 0.0, "no spread")],
)
def test_the_effects_plot_colours_only_a_verdict_of_helps_or_hurts(seeds, spread, verdict):
    runs = []
    for tricks in ([], ["dropout"]):
        for seed in range(seeds):
            job, rows = trained(tricks, seed)
            # dropout adds 1 point, plus `spread` of a point more on each later seed
            accuracy = 0.85 + len(tricks) * 0.01 * (1 + spread * seed) + 0.01 * seed
            job.result = job.result.model_copy(update={"test_accuracy": accuracy})
            runs.append((job, rows))
    data = report(job_variants([job for job, _ in runs], {job.id: rows for job, rows in runs}))
    assert data.effects[0].verdict == verdict
    image = plots.render("effects", data, "S", "svg").decode()
    assert f"{verdict} (n={seeds})" in svg_text(image.encode())
    helps = plots.VERDICT_COLOURS["helps"]
    assert (helps in image) == (verdict == "helps")


def test_a_job_plot_draws_its_epochs_so_far_without_bands():
    job, rows = trained(["dropout"], seed=0)
    job.status = JobStatus.RUNNING
    curves = job_curves(job, rows[:3])
    drawn = curves.variants[0].curves.model_dump()
    assert drawn["epoch"] == [1, 2, 3]
    assert all(
        bound is None
        for key in ("train_loss", "test_accuracy")
        for part in ("low", "high")
        for bound in drawn[key][part]
    )
    text = svg_text(plots.render("curves", curves, "Job x", "svg"))
    assert "one run" in text
    assert "confidence" not in text


def test_without_a_validation_split_the_validation_panels_say_so_and_there_is_no_gap():
    text = svg_text(plots.render("curves", study_report(validation=False), "S", "svg"))
    assert text.count("not recorded (no validation split)") == 2
    with pytest.raises(plots.NothingToPlot, match="no validation split"):
        plots.render("gap", study_report(validation=False), "S")


@pytest.mark.parametrize("name", ["curves", "accuracy", "gap", "effects"])
def test_a_report_without_finished_runs_has_nothing_to_plot(name):
    job, _ = trained([], seed=0)
    job.status, job.result = JobStatus.QUEUED, None
    with pytest.raises(plots.NothingToPlot):
        plots.render(name, report(job_variants([job], {})), "S")


# Text that users write: a study's name reaches the title, and names (today built from
# tricks, tomorrow maybe labels) reach the legend and the row labels.
MATHTEXT = [r"$\frac{a}{b}$", r"$\alpha$", "$x", r"$\undefinedcommand$", "$$"]
MARKUP = "<script>alert(1)</script> ]]> & &amp; <!--"
PLOTS = ["curves", "accuracy", "gap", "effects"]


def named(text):
    """The study report with every name that a plot draws replaced by the text."""
    data = study_report()
    for i, variant in enumerate(data.variants):
        variant.name = f"{text} {i}"
    for effect in data.effects:
        effect.trick = text
    return data


def svg_root(image: bytes) -> ET.Element:
    root = ET.fromstring(image)  # raises on anything not well-formed: a name broke out
    assert not [e for e in root.iter() if e.tag.rsplit("}", 1)[-1].lower() == "script"]
    return root


def lines_of(image: bytes) -> list[str]:
    """Each line of text in an SVG plot (a line of a title is a text element of its own)."""
    return [element.text or "" for element in svg_root(image).iter(f"{SVG}text")]


@pytest.mark.parametrize("name", PLOTS)
@pytest.mark.parametrize("text", MATHTEXT)
def test_mathtext_in_titles_and_names_is_drawn_as_written(name, text):
    data = named(text)
    title = f"Study {text}"
    Image.open(io.BytesIO(plots.render(name, data, title))).verify()
    lines = lines_of(plots.render(name, data, title, "svg"))
    assert title in lines
    # The legend (curves, gap) or the row labels (accuracy, effects) draw the names too.
    assert (text if name == "effects" else f"{text} 1") in lines


@pytest.mark.parametrize("name", PLOTS)
def test_markup_in_names_is_escaped_in_the_svg(name):
    image = plots.render(name, named(MARKUP), f"Study {MARKUP}", "svg")
    assert b"<script" not in image and b"<!--" not in image
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in image
    lines = lines_of(image)
    assert f"Study {MARKUP}" in lines
    assert (MARKUP if name == "effects" else f"{MARKUP} 0") in lines


@pytest.mark.parametrize("name", PLOTS)
def test_control_characters_draw_neither_lines_of_their_own_nor_a_broken_file(name):
    # Line breaks become spaces: no name starts a title line of its own. What cannot be
    # drawn, or written in XML (NUL, an escape, an unpaired surrogate, a bidi override),
    # becomes U+FFFD, so that it still shows something was there.
    text = "a\nFORGED\r\nb\tc\x00d\x1be\x85f\u2028g\u202eh\ud800i\ufffe"
    drawn = "a FORGED  b c\ufffdd\ufffde f g\ufffdh\ufffdi\ufffd"
    data = named(text)
    Image.open(io.BytesIO(plots.render(name, data, f"Study {text}"))).verify()
    lines = lines_of(plots.render(name, data, f"Study {text}", "svg"))
    assert f"Study {drawn}" in lines
    assert (drawn if name == "effects" else f"{drawn} 0") in lines
    assert "FORGED" not in lines


@pytest.mark.parametrize("name", PLOTS)
@pytest.mark.parametrize(
    "text",
    [
        "A study with a very long name " * 7,  # about 200 characters, as long as a name goes
        "x" * 200,  # no space to break it at
        "W" * 200,  # the widest letter: a line of it is far wider than its count suggests
    ],
)
def test_long_names_are_cut_with_an_ellipsis_and_everything_stays_inside_the_figure(name, text):
    figure = plots.draw(name, named(text), f"Study {text}")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    drawn = figure.get_tightbbox(canvas.get_renderer())
    inside = figure.bbox_inches
    assert inside.x0 <= drawn.x0 and drawn.x1 <= inside.x1
    assert inside.y0 <= drawn.y0 and drawn.y1 <= inside.y1
    # The title's lines, then what the plot shows (and how its bands are drawn).
    lines = figure.get_suptitle().splitlines()
    assert len(lines) == plots.TITLE_LINES + 1 + (name in ("curves", "gap"))
    title = lines[: plots.TITLE_LINES]
    assert all(len(line) <= plots.TITLE_CHARACTERS for line in title)
    assert title[-1].endswith("…")
    labels = [t.get_text() for axes in figure.axes for t in axes.get_yticklabels()]
    if figure.legends:
        labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels and all(label.endswith("…") for label in labels)


def test_a_name_that_fits_is_drawn_whole():
    name = "base + dropout + weight_decay + early_stopping + batch_norm + momentum"
    data = study_report()
    data.variants[1].name = name
    lines = lines_of(plots.render("accuracy", data, "Study 'notebook'", "svg"))
    assert name in lines
    assert "Study 'notebook'" in lines

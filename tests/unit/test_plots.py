"""Every plot of a report is a valid PNG or SVG of a readable size that shows what it is
about, the same report gives the same SVG, and a report with nothing to draw says why."""

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from core import plots
from core.models import EpochMetrics, Job
from core.report import job_curves, job_variants, report
from core.spec import JobSpec
from core.states import JobStatus

SVG = "{http://www.w3.org/2000/svg}"
EPOCHS = 6


def trained(tricks, seed, validation=True):
    """A succeeded job and its epoch rows; dropout lowers the loss a little, seeds add noise."""
    spec = JobSpec.model_validate({"tricks": tricks, "seed": seed, "epochs": EPOCHS})
    job_id = f"{'-'.join(tricks) or 'base'}-{seed}"
    rows = []
    for epoch in range(1, EPOCHS + 1):
        loss = 1 / epoch - 0.02 * len(tricks) + 0.01 * seed
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
                seconds=1.0,
            )
        )
    job = Job(
        id=job_id,
        status=JobStatus.SUCCEEDED,
        spec=spec.model_dump(mode="json"),
        result={"test_accuracy": rows[-1].test_accuracy, "test_loss": rows[-1].test_loss},
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


def test_a_job_plot_draws_its_epochs_so_far_without_bands():
    job, rows = trained(["dropout"], seed=0)
    job.status = JobStatus.RUNNING
    curves = job_curves(job, rows[:3])
    drawn = curves["variants"][0]["curves"]
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

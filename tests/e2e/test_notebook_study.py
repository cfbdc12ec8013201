"""`make notebook-study` on tiny data: a real service and worker run the preset and the page
and its plots are written, stamped with the date and the commit."""

import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.studies import NOTEBOOK_TRICKS

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
QUICK = {
    "notebook": '{"base": {"epochs": 1, "batch_size": 32, "validation_size": 100}, "repeats": 2}',
    # the CNN's preset with tiny filters: its base keeps the preset's architecture
    "notebook-cnn": '{"base": {"epochs": 1, "validation_size": 100, "conv_filters": [4, 8], '
    '"dense_units": [16]}, "repeats": 2}',
}


@pytest.mark.parametrize("preset", ["notebook", "notebook-cnn"])
def test_the_notebook_study_writes_its_table_and_plots_stamped(tmp_path, data_dir, preset):
    out = tmp_path / "notebook-study"
    script = [sys.executable, "scripts/notebook_study.py", "--out", str(out), "--preset", preset]
    run = subprocess.run(
        [*script, "--data-dir", str(data_dir / "fashion-mnist"), "--study", QUICK[preset]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    page = (out / "results.md").read_text()
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    command = f"make {preset.replace('notebook', 'notebook-study')} STUDY='"
    assert f"Produced on {today} by `{command}" in page
    assert f"at commit {commit}" in page
    assert f"The `{preset}` preset on the genuine Fashion-MNIST, on " in page
    model = "the CNN (`conv_filters` [4, 8]" if preset == "notebook-cnn" else "the notebook's MLP"
    assert model in page
    rows = [line for line in page.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 1 + len(NOTEBOOK_TRICKS)  # the base, then one more trick per row
    assert "study status **succeeded**" in page
    for name in ("accuracy", "effects", "curves", "gap"):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert f"![{name}]({name}.png)" in page

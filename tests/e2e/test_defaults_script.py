"""`make defaults` on tiny data: a real service and worker train each candidate, and the page
bolds, per trick, the candidate with the best mean validation accuracy, stamped with the date,
the command and the commit the run started from."""

import datetime
import re
import subprocess
import sys
from pathlib import Path
from statistics import mean

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_the_defaults_page_bolds_the_best_validation_accuracy_of_each_trick(tmp_path, data_dir):
    out = tmp_path / "defaults"
    run = subprocess.run(
        [
            sys.executable,
            "scripts/defaults.py",
            "--architecture",
            "mlp",
            "--base",
            '{"epochs": 1, "validation_size": 100, "hidden_units": [16]}',
            "--out",
            str(out),
            "--data-dir",
            str(data_dir / "fashion-mnist"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    page = (out / "results.md").read_text()
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert f"Produced on {today} by `make defaults BASE='" in page
    assert "Test accuracy was neither looked at nor used" in page
    rows = re.findall(r"^\| (\w+) \| (.+?) \| (.+?) \| (.+?) \|$", page, re.MULTILINE)[1:]
    by_trick: dict[str, list[tuple[bool, float]]] = {}
    for trick, _, figure, seeds in rows:
        values = [float(v) for v in seeds.split(", ")]
        assert float(figure.strip("*%")) == pytest.approx(mean(values), abs=0.006)
        by_trick.setdefault(trick, []).append((figure.startswith("**"), mean(values)))
    assert set(by_trick) == {"dropout", "weight_decay"}
    for candidates in by_trick.values():
        assert sum(bold for bold, _ in candidates) == 1
        best = max(value for _, value in candidates)
        assert next(value for bold, value in candidates if bold) == best

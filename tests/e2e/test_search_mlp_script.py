"""`make search-mlp` on tiny data: a real service and worker run the search, and the page, its
plots and the recipe are written; the recipe is the confirmed configuration with the best
validation accuracy on the fresh seeds, a job spec the API takes as it is."""

import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.spec import JobSpec

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
QUICK = {
    "base": {"epochs": 3, "validation_size": 100, "hidden_units": [16]},
    "space": {"learning_rate": {"type": "log_uniform", "low": 0.001, "high": 0.1}},
    "max_trials": 3,
    "confirm": {"top": 2, "repeats": 2},
}


def test_the_search_page_plots_and_recipe_are_written(tmp_path, data_dir):
    out, recipe = tmp_path / "search-mlp", tmp_path / "recipes" / "mlp.json"
    run = subprocess.run(
        [
            sys.executable,
            "scripts/search_mlp.py",
            *("--out", str(out), "--recipe", str(recipe)),
            *("--data-dir", str(data_dir / "fashion-mnist"), "--search", json.dumps(QUICK)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    page = (out / "results.md").read_text()
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert f"Produced on {today} by `make search-mlp SEARCH='" in page
    assert "Search status **succeeded**" in page
    assert "never used" in page  # the report's note: selection on validation only
    rows = [line for line in page.splitlines() if line.startswith("| base") or "| trial " in line]
    assert rows[0].startswith("| base") and len(rows) >= 2
    for name in ("parallel", "best", "rungs"):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    spec = json.loads(recipe.read_text())
    assert "seed" not in spec
    JobSpec.model_validate(spec)  # a job spec as it is
    assert "The recipe, [docs/recipes/mlp.json]" in page

"""`make bench` keeps working for searches: `python -m bench.search --quick` runs end to end on
tiny data (a real API and worker with packing on, another with it off) and prints each
search, the ratios ASHA / none and the issue's targets."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.data import write_dataset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_the_search_benchmark_runs_quick_and_prints_its_ratios(tmp_path):
    # --quick holds out 500 validation images: 600 are left to train.
    data = write_dataset(tmp_path / "fashion-mnist", train=1100, test=100)
    result = subprocess.run(
        [sys.executable, "-m", "bench.search", "--quick"],
        cwd=ROOT,
        env={"TRICKLAB_DATA_DIR": str(data), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout

    searches = re.findall(
        r"^  round 1: (ASHA|none), (packing on|packing off) +trial epochs +(\d+)", output, re.M
    )
    assert [(s, p) for s, p, _ in searches] == [
        ("ASHA", "packing on"), ("none", "packing on"), ("ASHA", "packing off"), ("none", "packing off"),
    ], output  # fmt: skip
    epochs = {(s, p): int(e) for s, p, e in searches}
    # 3 trials of 3 epochs each without pruning; with ASHA each trains 1 epoch at least
    assert epochs["none", "packing on"] == epochs["none", "packing off"] == 9
    assert 3 <= epochs["ASHA", "packing on"] <= 9 and 3 <= epochs["ASHA", "packing off"] <= 9
    assert len(re.findall(r"^    epochs trained per trial: 3 \(3 trials\)$", output, re.M)) >= 2
    assert (
        len(re.findall(r"^    pick: trial \d .+ confirmed test accuracy [01]\.\d{4}", output, re.M))
        == 4
    )
    assert "every search sampled the same configurations in the same order: yes" in output
    for packing in ("packing on", "packing off"):
        for figure in ("trial epochs", "search phase", "whole search"):
            assert f"ratio ASHA / none, {figure}, {packing}: " in output
    assert re.search(r"^ratio packing on / off, whole search, ASHA: \d", output, re.M)
    assert re.search(
        r"^target, ASHA's confirmed pick within the interval of none's pick: (met|NOT MET)",
        output,
        re.M,
    )
    assert re.search(r"^bench/search.py took .+ in all$", output, re.M)

"""`tricklab search`, run as people and scripts run it, against real API and worker processes:
a small search created and followed to its end (and its raw event stream read beside it), then
shown, reported, watched and listed."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from tests.e2e.test_cli import TRICKLAB, environment, tricklab
from tests.e2e.test_events import Event, events
from tests.e2e.test_searches import SEARCH
from tests.support.cluster import Cluster, serving

pytestmark = pytest.mark.e2e
# 4 trials, 2 at once, paused at 1 epoch and the best promoted to 3; then the best and the
# base on 2 fresh seeds.
SMALL = {
    **SEARCH,
    "name": "cli search",
    "base": {**SEARCH["base"], "epochs": 3},
    "max_trials": 4,
    "max_concurrent_trials": 2,
    "confirm": {"top": 1, "repeats": 2},
}
TRIAL_ROW = re.compile(r"^│\s*(\d+)\s*│\s*(\w+)\s*│", re.MULTILINE)


@dataclass
class Followed:
    search_id: str
    status: int  # of `search create --wait`
    stdout: str
    stderr: str
    seen: list[Event]  # the raw stream, read while the command followed it too


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Cluster]:
    with serving(tmp_path_factory.mktemp("search-cli"), data_dir) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def followed(stack: Cluster) -> Followed:
    """`tricklab search create -f SEARCH.json --wait` running; from the moment it prints the
    id, the search's event stream read over HTTP beside it, to its end."""
    document = stack.root / "search.json"
    document.write_text(json.dumps(SMALL))
    process = subprocess.Popen(
        [str(TRICKLAB), "search", "create", "-f", str(document), "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(stack, stack.root / "config"),
    )
    try:
        assert process.stdout is not None
        search_id = process.stdout.readline().strip()
        assert re.fullmatch(r"[0-9a-f]{32}", search_id), process.communicate(timeout=30)
        seen = list(events(stack.client, f"/v1/searches/{search_id}/events"))
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    return Followed(search_id, process.returncode, search_id + "\n" + stdout, stderr, seen)


def test_create_wait_follows_the_search_to_its_end_and_exits_0(followed):
    assert followed.status == 0, followed.stderr
    assert followed.stdout == followed.search_id + "\n"  # the id alone, for scripts
    assert "Traceback" not in followed.stderr
    last = followed.stderr.splitlines()[-1]
    assert last.startswith(f"search {followed.search_id} succeeded: 4 trials"), last
    assert "; best trial " in last


def test_the_raw_stream_tells_progress_first_and_the_end_last_then_closes(followed, stack):
    seen = followed.seen  # a list: the server closed the stream after its end
    names = [event.name for event in seen]
    assert names[0] == "progress" and names[-1] == "end"
    assert set(names[:-1]) == {"progress"}
    progress = [event.data for event in seen[:-1]]
    assert all(before != after for before, after in pairwise(progress))
    asked = [data["trials"]["total"] for data in progress]
    assert asked == sorted(asked)
    final = seen[-1].data
    assert final == stack.client.get(f"/v1/searches/{followed.search_id}").json()
    assert final["status"] == "succeeded" and final["trials"]["total"] == 4
    assert final["best"] is not None


def test_show_has_the_summary_and_a_row_per_trial(followed, stack):
    short = followed.search_id[:8]
    shown = tricklab(stack, "search", "show", short)
    assert shown.returncode == 0, shown.stderr
    rows = TRIAL_ROW.findall(shown.stdout)
    assert sorted(int(number) for number, _ in rows) == [0, 1, 2, 3], shown.stdout
    assert {state for _, state in rows} <= {"completed", "pruned", "failed"}
    assert "4 trials" in shown.stdout and "val_accuracy" in shown.stdout
    as_json = tricklab(stack, "search", "show", short, "-o", "json")
    api = stack.client.get(f"/v1/searches/{followed.search_id}").json()
    assert json.loads(as_json.stdout) == api


def test_report_says_it_selected_on_validation_and_confirms_on_fresh_seeds(followed, stack):
    as_json = tricklab(stack, "search", "report", followed.search_id, "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report == stack.client.get(f"/v1/searches/{followed.search_id}/report").json()
    assert report["selected_on"] == "validation"
    shown = tricklab(stack, "search", "report", followed.search_id)
    assert shown.returncode == 0, shown.stderr
    best = report["best"]["trial"]
    assert f"selected on validation: trial {best}" in shown.stdout
    for name in ("base", f"trial {best}"):
        assert re.search(rf"│ {name}\s+│.*± .*│\s+2 │", shown.stdout), shown.stdout
    assert "optimism: " in shown.stdout and "never used" in shown.stdout


def test_watch_on_an_ended_search_prints_its_end_and_exits_0(followed, stack):
    watched = tricklab(stack, "search", "watch", followed.search_id[:8].upper())
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.splitlines()[-1].startswith(
        f"search {followed.search_id} succeeded: 4 trials"
    )


def test_list_shows_it_and_an_unknown_search_exits_4(followed, stack):
    listed = tricklab(stack, "search", "list")
    assert listed.returncode == 0 and followed.search_id in listed.stdout
    assert "cli search" in listed.stdout
    as_json = tricklab(stack, "search", "list", "-o", "json")
    assert json.loads(as_json.stdout) == stack.client.get("/v1/searches").json()
    missing = tricklab(stack, "search", "show", "0" * 32)
    assert missing.returncode == 4 and "0" * 32 in missing.stderr
    unseen = tricklab(stack, "search", "report", "fffffffe")
    assert unseen.returncode == 4
    assert "no search you can see has an id starting with 'fffffffe'" in unseen.stderr


def test_plot_saves_the_image_the_api_draws(followed, stack, tmp_path):
    short = followed.search_id[:8]
    saved = tricklab(stack, "search", "plot", short, "rungs", "--format", "svg", cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    drawn = (tmp_path / f"search-{followed.search_id}-rungs.svg").read_bytes()
    assert b"<svg" in drawn[:500]
    unknown = tricklab(stack, "search", "plot", short, "curves")
    assert unknown.returncode == 2 and "parallel" in unknown.stderr

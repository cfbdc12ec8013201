"""A small search trained to its end on tiny data in this process, through the API: its plots
as PNG and SVG, its trials and its report as CSV, each checked against the JSON answers."""

import csv
import io
import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobqueue.db import make_engine
from jobqueue.searches import Searches
from jobqueue.store import JobStore
from search.progress import Progress
from service.app import create_app
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY
from tests.support.inprocess import drain_queue, settings_in

# Rungs at 1 and 3 epochs: of 4 trials, ASHA promotes one at the first rung.
SEARCH: dict[str, Any] = {
    "name": "tiny",
    "base": {**TINY, "epochs": 3},
    "space": {
        "learning_rate": {"type": "log_uniform", "low": 0.001, "high": 0.3},
        "hidden_units": {"type": "choice", "values": [[32, 16], [8]]},
        "tricks.dropout": {"type": "choice", "values": [True, False]},
    },
    "sampler": "random",
    "max_trials": 4,
    "max_concurrent_trials": 4,
    "scheduler": {"type": "asha", "min_epochs": 1, "eta": 3},
    "confirm": {"top": 1, "repeats": 2},
    "seed": 1,
}
NAMES = ["parallel", "best", "rungs"]
PNG = b"\x89PNG\r\n\x1a\n"
SVG = "{http://www.w3.org/2000/svg}"
UNKNOWN = "0" * 32  # a well-formed id that nothing has


@pytest.fixture(scope="module")
def searched(tmp_path_factory, data_dir):
    settings = settings_in(tmp_path_factory.mktemp("searches"), data_dir)
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        created = client.post("/v1/searches", json=SEARCH)
        assert created.status_code == 201, created.text
        # The worker advances the search as it settles each job, as `python -m worker` does.
        progress = Progress(Searches(JobStore(make_engine(settings.database_url))), settings)
        drain_queue(settings, on_search_job=progress.advance)
        search = client.get(f"/v1/searches/{created.json()['id']}").json()
        assert search["status"] == "succeeded", search
        yield client, search


def trial_ids(svg: bytes) -> list[str]:
    """The ids of the trials' lines in a plot's SVG."""
    ids = [group.get("id", "") for group in ET.fromstring(svg).iter(f"{SVG}g")]
    return sorted(i for i in ids if i.startswith("trial-"))


@pytest.mark.parametrize("name", NAMES)
def test_every_search_plot_comes_as_png_and_svg(searched, name):
    client, search = searched
    url = search["links"]["plots"][name]
    png = client.get(url)
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png" and png.content.startswith(PNG)
    svg = client.get(url, params={"format": "svg"})
    assert svg.headers["content-type"] == "image/svg+xml"
    assert ET.fromstring(svg.content).tag == f"{SVG}svg"
    assert "Search 'tiny'" in svg.text


def test_the_parallel_and_rungs_plots_draw_one_line_per_trial(searched):
    client, search = searched
    trials = client.get(search["links"]["trials"]).json()
    scored = sorted(f"trial-{t['number']}" for t in trials["trials"] if t["values"])
    assert len(scored) == SEARCH["max_trials"]
    first_rung = str(trials["rungs"][0])
    reached = sorted(f"trial-{t['number']}" for t in trials["trials"] if first_rung in t["values"])
    parallel = client.get(search["links"]["plots"]["parallel"], params={"format": "svg"})
    assert trial_ids(parallel.content) == scored
    rungs = client.get(search["links"]["plots"]["rungs"], params={"format": "svg"})
    assert trial_ids(rungs.content) == reached


def test_plots_with_nothing_to_draw_yet_or_a_bad_name_get_clear_errors(searched):
    client, search = searched
    queued = client.post("/v1/searches", json={**SEARCH, "name": "queued"}).json()
    for name in NAMES:
        empty = client.get(queued["links"]["plots"][name])
        assert empty.status_code == 409
        assert "nothing to plot yet: no trial has a value on validation yet" in empty.text
    client.post(queued["links"]["cancel"])
    url = search["links"]["plots"]["best"]
    unknown = client.get(url.replace("best", "curves"))
    assert unknown.status_code == 422 and "'parallel', 'best' or 'rungs'" in unknown.text
    assert "'png' or 'svg'" in client.get(url, params={"format": "gif"}).text
    assert client.get(f"/v1/searches/{UNKNOWN}/plots/best").status_code == 404


def test_the_trials_come_as_csv_as_the_json_gives_them(searched):
    client, search = searched
    answer = client.get(search["links"]["trials_csv"])
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert f'filename="search-{search["id"]}-trials.csv"' in answer.headers["content-disposition"]
    table = csv.reader(io.StringIO(answer.text))
    keys = list(SEARCH["space"])
    fixed = ["number", "state", "rung", "rung_epochs", "epochs", "job_id"]
    assert next(table) == [*fixed, *keys, "val_accuracy", "error"]
    rows = list(table)
    trials = client.get(search["links"]["trials"]).json()["trials"]
    assert len(rows) == len(trials)
    for row, trial in zip(rows, trials, strict=True):
        last = max(trial["values"], key=int)
        assert row[:6] == [
            str(trial["number"]),
            trial["state"],
            str(trial["rung"]),
            str(trial["rung_epochs"]),
            last,
            trial["job_id"],
        ]
        assert float(row[6]) == pytest.approx(trial["params"]["learning_rate"])
        assert [json.loads(cell) for cell in row[7:9]] == [
            trial["params"]["hidden_units"],
            trial["params"]["tricks.dropout"],
        ]
        assert float(row[9]) == pytest.approx(trial["values"][last])
        assert row[10] == ""  # no error


def test_the_report_comes_as_csv_as_the_json_gives_it(searched):
    client, search = searched
    answer = client.get(search["links"]["report_csv"])
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    confirmed = client.get(search["links"]["report"]).json()["confirmed"]
    assert [row["name"] for row in rows] == [c["name"] for c in confirmed]
    assert len(rows) == 1 + SEARCH["confirm"]["top"] and rows[0]["name"] == "base"
    base, best = rows
    assert base["trial"] == base["learning_rate"] == base["effect_mean"] == ""
    assert best["trial"] == str(confirmed[1]["trial"])
    assert json.loads(best["hidden_units"]) == confirmed[1]["params"]["hidden_units"]
    for row, configuration in zip(rows, confirmed, strict=True):
        accuracy = configuration["test_accuracy"]
        assert float(row["test_accuracy_mean"]) == pytest.approx(accuracy["mean"])
        assert int(row["test_accuracy_n"]) == accuracy["n"] == SEARCH["confirm"]["repeats"]
    effect = confirmed[1]["effects"][0]
    assert effect["against"] == "base"
    assert float(best["effect_mean"]) == pytest.approx(effect["difference"]["mean"])
    assert float(best["effect_low"]) == pytest.approx(effect["difference"]["low"])
    assert best["effect_verdict"] == effect["verdict"]

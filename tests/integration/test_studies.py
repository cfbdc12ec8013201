"""A small study trained to completion on tiny data, through the API: its jobs, status,
report (checked against the jobs' own metrics), CSV, cancellation, and /v1/compare."""

import csv
import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from scipy import stats

from service.app import create_app
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY
from tests.support.inprocess import drain_queue, settings_in

# Small and slow to learn, so that seeds give different accuracies.
BASE = {**TINY, "learning_rate": 0.0005, "hidden_units": [4]}
STUDY = {
    "name": "tiny",
    "base": BASE,
    "tricks": ["dropout", {"name": "weight_decay", "l2": 0.01}],
    "design": "one_at_a_time",
    "repeats": 2,
}

UNKNOWN = "0" * 32  # a well-formed id that nothing has


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    settings = settings_in(tmp_path_factory.mktemp("studies"), data_dir, max_study_jobs=12)
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        created = client.post("/v1/studies", json=STUDY)
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "queued"
        drain_queue(settings)
        yield client, created.json()


def test_a_study_queues_one_job_per_variant_and_seed(finished):
    client, created = finished
    assert created["variants"] == ["base", "base + dropout", "base + weight_decay(l2=0.01)"]
    assert created["seeds"] == [0, 1]
    assert created["progress"]["total"] == 6
    specs = {}
    for variant in created["report"]["variants"]:
        for seed, job_id in zip(created["seeds"], variant["jobs"], strict=True):
            job = client.get(f"/v1/jobs/{job_id}").json()
            assert job["links"]["study"] == f"/v1/studies/{created['id']}"
            spec = job["spec"]
            assert spec["seed"] == seed
            specs[variant["name"], seed] = [trick["name"] for trick in spec["tricks"]]
    assert specs["base + dropout", 1] == ["dropout"]
    assert specs["base", 0] == []


def test_the_finished_study_reports_what_its_jobs_measured(finished):
    client, created = finished
    study = client.get(f"/v1/studies/{created['id']}").json()
    assert study["status"] == "succeeded"
    assert study["progress"]["succeeded"] == 6
    for variant in study["report"]["variants"]:
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in variant["jobs"]]
        finals = [job["result"]["test_accuracy"] for job in jobs]
        expected = stats.t.interval(
            0.95, len(finals) - 1, loc=np.mean(finals), scale=stats.sem(finals)
        )
        accuracy = variant["final_test_accuracy"]
        assert accuracy["n"] == 2
        assert accuracy["mean"] == pytest.approx(np.mean(finals))
        assert (accuracy["low"], accuracy["high"]) == pytest.approx(expected)
        curves = [client.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"] for job in jobs]
        assert variant["curves"]["epoch"] == [1, 2]
        for key in ("train_loss", "val_loss", "val_accuracy"):
            means = [np.mean([curve[e][key] for curve in curves]) for e in range(2)]
            assert variant["curves"][key]["mean"] == pytest.approx(means)
        best = [max(epoch["test_accuracy"] for epoch in curve) for curve in curves]
        assert variant["best_test_accuracy"]["mean"] == pytest.approx(np.mean(best))
        gaps = [curve[-1]["train_accuracy"] - curve[-1]["val_accuracy"] for curve in curves]
        assert variant["generalisation_gap"]["mean"] == pytest.approx(np.mean(gaps))


def test_each_trick_is_compared_with_the_base_seed_by_seed(finished):
    client, created = finished
    report = client.get(f"/v1/studies/{created['id']}/report").json()
    by_name = {v["name"]: v for v in report["variants"]}

    def finals(name):
        return [
            client.get(f"/v1/jobs/{job_id}").json()["result"]["test_accuracy"]
            for job_id in by_name[name]["jobs"]
        ]

    effects = {effect["trick"]: effect for effect in report["effects"]}
    assert list(effects) == ["dropout", "weight_decay(l2=0.01)"]
    for trick, effect in effects.items():
        variant = f"base + {trick}"
        assert effect["pairs"] == [{"without": "base", "with": variant}]
        with_, without = finals(variant), finals("base")
        expected = stats.ttest_rel(with_, without)
        interval = expected.confidence_interval(0.95)
        difference = effect["difference"]
        assert difference["mean"] == pytest.approx(np.mean(with_) - np.mean(without))
        assert (difference["low"], difference["high"]) == pytest.approx(
            (interval.low, interval.high)
        )
        # Equal differences on every seed (up to the rounding of the subtraction): no spread,
        # so no p-value (scipy says nan, or a p-value of that rounding).
        no_spread = np.ptp(np.subtract(with_, without)) < 1e-9
        p_value = None if no_spread else pytest.approx(expected.pvalue)
        assert effect["p_value"] == p_value
        # Two seeds: an interval, but no verdict, whatever it shows.
        assert effect["verdict"] == "not enough repeats"
        assert effect["summary"].startswith(f"{trick}: not enough repeats to judge")


def test_the_report_comes_as_csv_too(finished):
    client, created = finished
    response = client.get(f"/v1/studies/{created['id']}/report.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["variant"] for row in rows] == created["variants"]
    report = client.get(f"/v1/studies/{created['id']}/report").json()
    first = report["variants"][0]["final_test_accuracy"]
    assert float(rows[0]["final_test_accuracy_mean"]) == pytest.approx(first["mean"])
    effects = client.get(f"/v1/studies/{created['id']}/report.csv?table=effects").text
    assert effects.splitlines()[0].startswith("trick,difference_mean")
    assert client.get(f"/v1/studies/{created['id']}/report.csv?table=nope").status_code == 422


def test_comparing_the_same_jobs_gives_the_same_report(finished):
    client, created = finished
    report = client.get(f"/v1/studies/{created['id']}/report").json()
    ids = [job_id for variant in report["variants"] for job_id in variant["jobs"]]
    compared = client.get("/v1/compare", params={"jobs": ",".join(ids)}).json()
    assert [v["final_test_accuracy"] for v in compared["variants"]] == [
        v["final_test_accuracy"] for v in report["variants"]
    ]
    assert [e["difference"] for e in compared["effects"]] == [
        e["difference"] for e in report["effects"]
    ]
    assert client.get("/v1/compare", params={"jobs": "nope"}).status_code == 404
    assert client.get("/v1/compare", params={"jobs": " , "}).status_code == 422
    too_many = ",".join(f"{n:x}" for n in range(501))
    assert client.get("/v1/compare", params={"jobs": too_many}).status_code == 400


@pytest.mark.parametrize("name", ["curves", "accuracy", "gap", "effects"])
def test_every_study_plot_comes_as_png_and_svg(finished, name):
    client, created = finished
    url = created["links"]["plots"][name]
    png = client.get(url)
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.format == "PNG" and image.width >= 800 and image.height >= 200
    svg = client.get(url, params={"format": "svg"})
    assert svg.headers["content-type"] == "image/svg+xml"
    assert ET.fromstring(svg.content).tag == "{http://www.w3.org/2000/svg}svg"
    assert "Study 'tiny'" in svg.text


def test_compare_and_job_plots(finished):
    client, created = finished
    variants = created["report"]["variants"]
    ids = [job_id for variant in variants for job_id in variant["jobs"]]
    compared = client.get("/v1/compare/plots/effects", params={"jobs": ",".join(ids)})
    assert compared.status_code == 200
    assert Image.open(io.BytesIO(compared.content)).format == "PNG"
    job = client.get(f"/v1/jobs/{ids[0]}/plots/curves", params={"format": "svg"})
    assert job.status_code == 200
    assert f"Job {ids[0]} (base, succeeded)" in job.text
    assert client.get(f"/v1/jobs/{ids[0]}/plots/gap").headers["content-type"] == "image/png"


def test_plots_with_nothing_to_draw_or_bad_names_get_clear_errors(finished):
    client, created = finished
    queued = client.post("/v1/studies", json={**STUDY, "repeats": 1}).json()
    empty = client.get(f"/v1/studies/{queued['id']}/plots/curves")
    assert empty.status_code == 409
    assert "nothing to plot yet: no run has finished an epoch yet" in empty.text
    job = queued["report"]["variants"][0]["jobs"][0]
    assert client.get(f"/v1/jobs/{job}/plots/curves").status_code == 409
    client.post(f"/v1/studies/{queued['id']}/cancel")
    study = created["links"]["plots"]["curves"]
    unknown = client.get(study.replace("curves", "pie"))
    assert unknown.status_code == 422
    assert "'curves', 'accuracy', 'gap' or 'effects'" in unknown.text
    assert "'png' or 'svg'" in client.get(study, params={"format": "gif"}).text
    assert client.get(f"/v1/jobs/{job}/plots/effects").status_code == 422
    assert client.get(f"/v1/studies/{UNKNOWN}/plots/curves").status_code == 404
    assert client.get(f"/v1/jobs/{UNKNOWN}/plots/curves").status_code == 404
    assert client.get("/v1/compare/plots/curves", params={"jobs": "nope"}).status_code == 404


def test_studies_are_listed_newest_first_and_can_be_cancelled(finished):
    client, created = finished
    queued = client.post("/v1/studies", json={**STUDY, "repeats": 1}).json()
    listed = client.get("/v1/studies").json()
    ids = [s["id"] for s in listed["studies"]]
    assert ids[0] == queued["id"] and created["id"] in ids[1:]
    assert listed["studies"][0]["status"] == "queued"
    first = client.get("/v1/studies", params={"limit": 1}).json()
    second = client.get(first["next"]).json()
    assert [first["studies"][0]["id"], second["studies"][0]["id"]] == ids[:2]
    assert first["total"] == listed["total"] and listed["next"] is None
    cancelled = client.post(f"/v1/studies/{queued['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["progress"]["cancelled"] == 3
    assert client.post(f"/v1/studies/{UNKNOWN}/cancel").status_code == 404
    assert client.get(f"/v1/studies/{UNKNOWN}").status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**STUDY, "repeats": 5}, "would run 15 jobs (3 variants × 5 repeats); the limit is 12"),
        ({**STUDY, "tricks": []}, "needs at least one trick"),
        ({**STUDY, "tricks": ["dropout", "dropout"]}, "'dropout' is listed more than once"),
        ({**STUDY, "design": "explicit"}, "needs 'variants'"),
        ({**STUDY, "design": "nope"}, "design: Input should be"),
        ({**STUDY, "tricks": ["sparkles"]}, "tricks[0]"),
        (
            {**STUDY, "base": {**BASE, "validation_size": 0}, "tricks": ["early_stopping"]},
            "the variant with early_stopping is not a valid job spec",
        ),
    ],
)
def test_bad_studies_get_422_naming_the_problem(finished, body, message):
    client, _ = finished
    response = client.post("/v1/studies", json=body)
    assert response.status_code == 422
    assert message in response.text

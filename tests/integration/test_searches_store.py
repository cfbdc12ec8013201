"""The search verbs on SQLite and PostgreSQL: advances of one search take turns under its row
lock, so racing ones ask each trial once; the quota bounds what is queued; cancelling ends
paused trials' jobs too."""

from __future__ import annotations

import threading

from jobqueue.models import ADMIN
from jobqueue.searches import Searches
from jobqueue.states import JobStatus
from search.progress import Progress
from search.spec import SearchSpec
from tests.support.data import TINY
from tests.support.inprocess import settings_in

SEARCH = SearchSpec.model_validate(
    {
        "base": {**TINY, "epochs": 9},
        "space": {"learning_rate": {"type": "log_uniform", "low": 0.001, "high": 0.1}},
        "max_trials": 10,
        "max_concurrent_trials": 3,
    }
)


def progress_on(store, tmp_path, data_dir, **settings) -> Progress:
    return Progress(Searches(store), settings_in(tmp_path, data_dir, **settings))


def test_racing_advances_ask_each_trial_once(any_store, tmp_path, data_dir):
    progress = progress_on(any_store, tmp_path, data_dir)
    search = progress.searches.create(ADMIN, "race", SEARCH.model_dump(mode="json"))
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def advance() -> None:
        start.wait()
        try:
            progress.advance(search.id)
        except BaseException as error:  # a lost race shows as a duplicate trial number
            errors.append(error)

    threads = [threading.Thread(target=advance) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    trials = progress.searches.trials(search.id)
    assert [t.number for t in trials] == [0, 1, 2]  # max_concurrent_trials, asked once
    jobs = progress.searches.jobs(search.id)
    assert sorted(jobs) == sorted(t.job_id for t in trials)
    assert {job.epoch_limit for job in jobs.values()} == {1}  # to the first rung
    assert {job.status for job in jobs.values()} == {JobStatus.QUEUED}


def test_the_quota_bounds_the_trials_queued(any_store, tmp_path, data_dir):
    progress = progress_on(any_store, tmp_path, data_dir, quota_active_jobs=2)
    search = progress.searches.create(ADMIN, "quota", SEARCH.model_dump(mode="json"))
    progress.advance(search.id)
    assert len(progress.searches.trials(search.id)) == 2
    progress.advance(search.id)  # nothing has ended: still 2
    assert len(progress.searches.trials(search.id)) == 2


def test_cancelling_a_search_cancels_its_jobs_and_it_is_not_advanced_again(
    any_store, tmp_path, data_dir
):
    progress = progress_on(any_store, tmp_path, data_dir)
    search = progress.searches.create(ADMIN, "cancel", SEARCH.model_dump(mode="json"))
    progress.advance(search.id)
    assert progress.searches.cancel(search.id).status == "cancelled"
    assert progress.advance(search.id).status == "cancelled"
    trials = progress.searches.trials(search.id)
    assert len(trials) == 3 and {t.state for t in trials} == {"cancelled"}
    statuses = {job.status for job in progress.searches.jobs(search.id).values()}
    assert statuses == {JobStatus.CANCELLED}


def test_a_space_whose_ends_pass_a_limit_is_refused_naming_the_key(client):
    too_wide = {**SEARCH.model_dump(mode="json")}
    too_wide["space"] = {"hidden_units": {"type": "choice", "values": [[16], [4096] * 8]}}
    answer = client.post("/v1/searches", json=too_wide)
    assert answer.status_code == 422
    issues = answer.json()["detail"]
    assert issues, answer.text
    assert all(issue["loc"][:3] == ["body", "space", "hidden_units"] for issue in issues)
    assert "TRICKLAB_MAX_PARAMETERS" in answer.text, answer.text
    assert client.get("/v1/searches").json()["total"] == 0

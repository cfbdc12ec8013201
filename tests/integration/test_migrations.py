"""The schema's Alembic revisions on real databases: they agree with the models, and they
bring a database written before them up to date with every row kept."""

import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from core.results import EpochRow, JobResult
from core.spec import JobSpec
from jobqueue import db
from jobqueue.accounts import Accounts
from jobqueue.counts import JobCounts
from jobqueue.db import SchemaMismatch, init_db, make_engine, migrations
from jobqueue.models import ADMIN, Job
from jobqueue.reads import Reads
from jobqueue.store import Checkpoint, IdempotencyConflict, JobStore
from service.app import create_app
from tests.fixtures.legacy import write as legacy
from tests.support.data import EPOCH, TINY, tiny_images
from tests.support.images import encode
from tests.support.inprocess import settings_in

ROOT = Path(__file__).parents[2]
# Written by tricklab before Alembic (schema 6) through its own API and worker, on each
# database: see write.py beside them.
FIXTURES = ROOT / "tests/fixtures/schema6"
# Written by the init_db and models of tricklab at schema 2, 3, 4 and 5: see legacy/write.py.
LEGACY = ROOT / "tests/fixtures/legacy"
# The newest revision: where init_db brings every database.
HEAD = ScriptDirectory.from_config(migrations()).get_current_head()


def check(engine) -> None:
    """Alembic's `check`: fails when the models and the migrated database disagree."""
    with engine.connect() as connection:
        config = migrations()
        config.attributes["connection"] = connection
        command.check(config)


def test_the_migrations_create_what_the_models_describe(database_url):
    engine = make_engine(database_url)
    assert init_db(engine) == HEAD
    check(engine)


def load_dump(database_url: str, dump: str) -> None:
    """Run a dump (sqlite3's, or pg_dump's of the schema tricklab_fixture) into the database."""
    if make_url(database_url).get_backend_name() == "sqlite":
        with sqlite3.connect(make_url(database_url).database) as connection:
            connection.executescript(dump)
        return
    schema = make_url(database_url).query["options"].split("=")[1]
    statements = "\n".join(line for line in dump.splitlines() if not line.startswith("\\"))
    statements = statements.replace("CREATE SCHEMA tricklab_fixture;", "")
    engine = make_engine(database_url)
    connection = engine.raw_connection()
    try:
        connection.cursor().execute(statements.replace("tricklab_fixture", schema))
        connection.commit()
    finally:
        connection.close()
        engine.dispose()


def load_fixture(database_url: str) -> dict:
    """The schema-6 fixture's database, as tricklab before Alembic left it, and its manifest."""
    folder = FIXTURES / make_url(database_url).get_backend_name()
    load_dump(database_url, (folder / "dump.sql").read_text())
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.slow
def test_a_database_from_before_alembic_serves_its_users_jobs_studies_and_models(
    database_url, tmp_path, data_dir
):
    manifest = load_fixture(database_url)
    settings = settings_in(tmp_path, data_dir, database_url=database_url)
    shutil.copytree(
        FIXTURES / make_url(database_url).get_backend_name() / "artifacts", settings.artifacts_dir
    )
    upgraded = subprocess.run(
        [sys.executable, "-m", "jobqueue.db"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "TRICKLAB_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"database ready at schema version {HEAD}" in upgraded.stdout
    check(make_engine(database_url))

    answers, tokens, jobs = manifest["answers"], manifest["tokens"], manifest["jobs"]
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/me", headers=alice).json() == answers["me"]
        laptop = client.get("/v1/me", headers={"Authorization": f"Bearer {tokens['laptop']}"})
        assert laptop.json()["name"] == "alice"
        for refused in ("revoked", "bob"):  # revoked, and a disabled user's
            headers = {"Authorization": f"Bearer {tokens[refused]}"}
            assert client.get("/v1/me", headers=headers).status_code == 401
        assert_keeps(client.get("/v1/jobs", headers=alice).json(), answers["jobs"])
        admin = {"Authorization": f"Bearer {manifest['admin_token']}"}
        assert_keeps(client.get("/v1/jobs", headers=admin).json(), answers["admin_jobs"])
        keyed = jobs["keyed"]
        metrics = client.get(f"/v1/jobs/{keyed}/metrics", headers=alice).json()
        assert_keeps(metrics, answers["metrics"])
        report = client.get(f"/v1/studies/{manifest['study']}/report", headers=alice).json()
        # The rule for a verdict has changed since the fixture was written (none from fewer
        # than 3 seeds); the numbers it rests on must not.
        expected = answers["report"]
        worded = [(e.pop("verdict"), e.pop("summary")) for e in report["effects"]]
        for effect in expected["effects"]:
            del effect["verdict"], effect["summary"]
        assert_keeps(report, expected)
        assert [verdict for verdict, _ in worded] == ["not enough repeats"]
        image = encode(tiny_images(1, 2)[0][0])
        predicted = client.post(
            f"/v1/jobs/{keyed}/predict", files={"file": ("0.png", image)}, headers=alice
        ).json()
        before = answers["predict"]["predictions"][0]
        assert predicted["predictions"][0]["label"] == before["label"]
        assert predicted["predictions"][0]["probabilities"] == pytest.approx(
            before["probabilities"], abs=1e-6
        )
        # Her Idempotency-Key still finds her job; the counts go on from where they were.
        spec = client.get(f"/v1/jobs/{keyed}", headers=alice).json()["spec"]
        replay = client.post(
            "/v1/jobs", json=spec, headers={**alice, "Idempotency-Key": "fixture-key"}
        )
        assert (replay.headers["Idempotent-Replayed"], replay.json()["id"]) == ("true", keyed)
        assert client.post("/v1/jobs", json={**TINY, "seed": 11}, headers=alice).status_code == 201
        assert client.get("/v1/me", headers=alice).json()["active_jobs"] == 2


def assert_keeps(answer: Any, recorded: Any, where: str = "") -> None:
    """The answer holds everything the fixture recorded, unchanged: fields added to the API
    since (a job's epoch_limit, a paused count) may come beside them."""
    if isinstance(recorded, dict):
        assert isinstance(answer, dict), where
        for key, value in recorded.items():
            assert key in answer, f"{where}.{key} is gone"
            assert_keeps(answer[key], value, f"{where}.{key}")
    elif isinstance(recorded, list):
        assert isinstance(answer, list) and len(answer) == len(recorded), where
        for index, (item, value) in enumerate(zip(answer, recorded, strict=True)):
            assert_keeps(item, value, f"{where}[{index}]")
    else:
        assert answer == recorded, where


def test_a_newer_schema_is_refused_untouched(database_url):
    engine = make_engine(database_url)
    init_db(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '999'"))
    with pytest.raises(
        SchemaMismatch, match=f"schema version 999, newer than this tricklab's {HEAD}"
    ):
        init_db(engine)
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT version_num FROM alembic_version")) == "999"
        assert connection.scalar(text("SELECT value FROM tricklab_meta")) == HEAD


def test_an_older_schema_is_refused_with_advice(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE jobs (id TEXT PRIMARY KEY)")
    with pytest.raises(SchemaMismatch, match="schema version 1, this tricklab needs"):
        init_db(engine)


def counts_agree(store: JobStore) -> bool:
    """The job counts equal what a scan of the jobs finds."""
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(Job.owner, Job.status, func.count()).group_by(Job.owner, Job.status)
        )
        scanned = {(owner, status): n for owner, status, n in rows}
    owners = {owner for owner, _ in scanned}
    return scanned == {
        (o, s): n for o in owners for s, n in JobCounts(store.engine).by_status(o).items()
    }


@pytest.mark.parametrize("version", [2, 3, 4, 5])
def test_a_database_of_an_older_schema_is_brought_up_to_date_with_every_row(database_url, version):
    kind = make_url(database_url).get_backend_name()
    load_dump(database_url, (LEGACY / f"schema{version}" / f"{kind}.sql").read_text())
    engine = make_engine(database_url)
    assert init_db(engine) == HEAD
    check(engine)  # its columns, tables and indexes are the models' (retired indexes gone)
    store, reads = JobStore(engine), Reads(engine)
    owner = "alice" if version >= 5 else ADMIN  # before users, everything is the admin's
    trained, queued, failed = (store.get(c * 32) for c in "abc")
    assert (trained.status, queued.status, failed.status) == ("succeeded", "queued", "failed")
    assert trained.result == JobResult.model_validate(legacy.RESULT)
    assert (trained.best_epoch, trained.model_path) == (2, f"jobs/{'a' * 32}/t/model.keras")
    assert failed.failures[0]["message"] == "no such data" and failed.error_type == "ValueError"
    assert {trained.owner, queued.owner, failed.owner} == {owner}
    assert [(m.epoch, m.train_loss) for m in reads.metrics(trained.id)] == [(1, 0.5), (2, 0.25)]
    # The rows the upgrade made: each job's tricks and study, and the counts.
    assert [j.id for j in reads.list_jobs(trick="batch_norm")[0]] == [failed.id]
    if version >= 3:
        assert (trained.study_id, queued.study_id, failed.study_id) == ("d" * 32, "d" * 32, None)
        assert reads.list_studies(owner=owner)[1] == 1
    assert reads.list_jobs(owner=owner)[1] == 3 and counts_agree(store)
    # The Idempotency-Key still finds its job, now its owner's (today's code resolves the
    # stored spec with more fields: a conflict that names the job); the token still works.
    with pytest.raises(IdempotencyConflict, match=f"already used for job {queued.id}"):
        store.enqueue(JobSpec.model_validate(queued.spec), owner, legacy.KEY)
    if version >= 5:
        user, _ = Accounts(engine).identify(legacy.TOKEN)
        assert user.name == "alice"
    assert init_db(engine) == HEAD and reads.list_jobs(owner=owner)[1] == 3  # nothing repeated


def initialise(url: str) -> str:
    return init_db(make_engine(url))


def test_processes_that_start_at_once_initialise_the_database_once(database_url):
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        assert pool.map(initialise, [database_url] * 4) == [HEAD] * 4
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM users")) == 1  # one admin
        assert connection.scalar(text("SELECT count(*) FROM alembic_version")) == 1
    check(engine)


NEXT = str(int(HEAD) + 1)
REVISION_NEXT = f"""
from alembic import op

from jobqueue.migrations.counting import count_jobs

revision, down_revision, branch_labels, depends_on = "{NEXT}", "{HEAD}", None, None


def upgrade():
    with op.batch_alter_table("jobs", recreate="always"):
        pass
    count_jobs(op.get_bind())
"""


def test_a_revision_that_copies_the_jobs_table_on_sqlite_keeps_the_rows_that_point_at_it(
    tmp_path, monkeypatch
):
    engine = make_engine(f"sqlite:///{tmp_path / 'tricklab.db'}")
    init_db(engine)
    store = JobStore(engine)
    store.enqueue(JobSpec(tricks=["dropout"]), ADMIN)
    _, lease = store.claim("w", "CPU")
    store.record_epoch(lease, EpochRow(epoch=1, **EPOCH), Checkpoint(1, "c.npz", "0" * 64), 1.0)
    (tmp_path / "versions").mkdir()
    (tmp_path / f"versions/{NEXT}_copy_jobs.py").write_text(REVISION_NEXT)
    stock = db.migrations

    def with_the_next_revision():
        config = stock()
        config.set_main_option("path_separator", "os")
        versions = [str(ROOT / "jobqueue/migrations/versions"), str(tmp_path / "versions")]
        config.set_main_option("version_locations", os.pathsep.join(versions))
        return config

    monkeypatch.setattr(db, "migrations", with_the_next_revision)
    assert init_db(engine) == NEXT
    reads = Reads(engine)
    assert [m.epoch for m in reads.metrics(lease.job_id)] == [1]
    assert [j.id for j in reads.list_jobs(trick="dropout")[0]] == [lease.job_id]
    store.enqueue(JobSpec(seed=2), ADMIN)  # counted by the triggers installed again
    assert counts_agree(store)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1

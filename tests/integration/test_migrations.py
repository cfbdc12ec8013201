"""The schema's Alembic revisions on real databases: they agree with the models, and they
bring a database written before them up to date with every row kept."""

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from core.spec import JobSpec
from jobqueue.counts import JobCounts
from jobqueue.db import SchemaMismatch, init_db, make_engine, migrations
from jobqueue.models import ADMIN, Job
from jobqueue.reads import Reads
from jobqueue.store import JobStore
from jobqueue.studies import Studies
from service.app import create_app
from tests.support.data import TINY, tiny_images
from tests.support.images import encode
from tests.support.inprocess import settings_in

ROOT = Path(__file__).parents[2]
# Written by tricklab before Alembic (schema 6) through its own API and worker, on each
# database: see write.py beside them.
FIXTURES = ROOT / "tests/fixtures/schema6"


def check(engine) -> None:
    """Alembic's `check`: fails when the models and the migrated database disagree."""
    with engine.connect() as connection:
        config = migrations()
        config.attributes["connection"] = connection
        command.check(config)


def test_the_migrations_create_what_the_models_describe(database_url):
    engine = make_engine(database_url)
    assert init_db(engine) == "6"
    check(engine)
    assert init_db(engine) == "6"  # and again: nothing left to do


def load_fixture(database_url: str) -> dict:
    """The fixture's database, as tricklab before Alembic left it, and its manifest."""
    kind = make_url(database_url).get_backend_name()
    folder = FIXTURES / kind
    dump = (folder / "dump.sql").read_text()
    if kind == "sqlite":
        with sqlite3.connect(make_url(database_url).database) as connection:
            connection.executescript(dump)
    else:
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
    assert "database ready at schema version 6" in upgraded.stdout
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
        assert client.get("/v1/jobs", headers=alice).json() == answers["jobs"]
        admin = {"Authorization": f"Bearer {manifest['admin_token']}"}
        assert client.get("/v1/jobs", headers=admin).json() == answers["admin_jobs"]
        keyed = jobs["keyed"]
        assert client.get(f"/v1/jobs/{keyed}/metrics", headers=alice).json() == answers["metrics"]
        report = client.get(f"/v1/studies/{manifest['study']}/report", headers=alice)
        assert report.json() == answers["report"]
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


def test_a_newer_schema_is_refused_untouched(database_url):
    engine = make_engine(database_url)
    init_db(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '999'"))
    with pytest.raises(SchemaMismatch, match="schema version 999, newer than this tricklab's 6"):
        init_db(engine)


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


@pytest.mark.parametrize("version", ["2", "3", "4", "5"])
def test_an_older_database_is_brought_up_to_date_and_keeps_its_jobs(database_url, version):
    engine = make_engine(database_url)
    init_db(engine)
    spec = JobSpec(seed=3, tricks=["dropout", "batch_norm"])
    job, _ = JobStore(engine).enqueue(spec, ADMIN, None if version < "5" else "order-7")
    study = Studies(JobStore(engine)).create(ADMIN, "s", {}, [1], [({"name": "v"}, [JobSpec()])])
    with engine.begin() as connection:  # as tricklab with that schema version left it
        connection.exec_driver_sql("DROP TABLE alembic_version")
        on = " ON jobs" if connection.dialect.name == "postgresql" else ""
        for name in ("insert", "update", "delete"):
            connection.exec_driver_sql(f"DROP TRIGGER jobs_counted_{name}{on}")
        connection.exec_driver_sql("DROP TABLE job_counts")
        connection.exec_driver_sql("DROP TABLE job_tricks")
        connection.exec_driver_sql("ALTER TABLE jobs DROP COLUMN study_id")
        connection.exec_driver_sql(f"UPDATE tricklab_meta SET value = '{version}'")
        if version != "5":
            _as_before_schema_5(connection, version, job.id)
    assert init_db(engine) == "6"
    check(engine)
    store, reads = JobStore(engine), Reads(engine)
    upgraded = store.get(job.id)
    assert (upgraded.spec["seed"], upgraded.trained_seconds, upgraded.artifacts_deleted_at) == (
        3,
        0.0,
        None,
    )
    # Each job knows its study, and lists filter by trick, from the rows made by the upgrade.
    assert [j.id for j in reads.list_jobs(trick="batch_norm")[0]] == [job.id]
    assert len(reads.list_jobs(trick="dropout")[0]) == 1 and reads.list_jobs(trick="l2")[0] == []
    if version != "2":
        assert store.get(study.job_ids[0]).study_id == study.id
    # What was there belongs to the admin, who can replay its Idempotency-Key.
    assert upgraded.owner == ADMIN
    replayed, created = store.enqueue(spec, ADMIN, "order-7")
    assert (replayed.id, created) == (job.id, False)
    assert reads.list_jobs(owner=ADMIN)[1] == 2  # counted by the upgrade
    assert counts_agree(store)
    assert init_db(engine) == "6"  # and again: nothing left to do


def _as_before_schema_5(connection, version: str, keyed: str) -> None:
    for index in ("ix_jobs_owner_status_created_id", "ix_jobs_owner_created_id"):
        connection.exec_driver_sql(f"DROP INDEX {index}")
    connection.exec_driver_sql("DROP TABLE tokens")
    connection.exec_driver_sql("DROP TABLE users")
    connection.exec_driver_sql("ALTER TABLE jobs DROP COLUMN owner")
    # A key stored as it was then: not hashed.
    connection.exec_driver_sql(f"UPDATE jobs SET idempotency_key = 'order-7' WHERE id = '{keyed}'")
    if version == "2":
        connection.exec_driver_sql("DROP TABLE studies")
    else:
        connection.exec_driver_sql("DROP INDEX ix_studies_owner_created_id")
        connection.exec_driver_sql("ALTER TABLE studies DROP COLUMN owner")
    if version != "4":
        for column in ("trained_seconds", "artifacts_deleted_at"):
            connection.exec_driver_sql(f"ALTER TABLE jobs DROP COLUMN {column}")

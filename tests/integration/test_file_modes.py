"""What tricklab writes is its user's alone: the SQLite database (and its -wal and -shm), the
models and checkpoints a worker saves, the retention's archives, and every folder they are made
in, whatever the umask of the process that makes them."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobqueue import retention
from jobqueue.artifacts import ArtifactStore
from jobqueue.db import init_db, make_engine
from jobqueue.models import utcnow
from jobqueue.store import JobStore
from service.app import create_app
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY
from tests.support.inprocess import drain_queue, settings_in


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """A umask that lets the group write: modes must not come from it."""
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def modes(root: Path) -> dict[str, str]:
    """Every file and folder under `root`, the root included, with its permission bits."""
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.stat().st_mode))
    return found


def test_the_sqlite_database_and_its_folders_are_private(tmp_path):
    database = tmp_path / "var" / "db" / "tricklab.db"
    engine = make_engine(f"sqlite:///{database}")
    init_db(engine)
    with engine.connect() as connection:  # open, so that -wal and -shm exist
        connection.exec_driver_sql("SELECT 1")
        found = modes(tmp_path / "var")
    engine.dispose()
    assert found == {
        ".": "0o700",
        "db": "0o700",
        "db/tricklab.db": "0o600",
        "db/tricklab.db-wal": "0o600",
        "db/tricklab.db-shm": "0o600",
    }


def test_an_existing_folder_keeps_its_mode(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    ArtifactStore(shared).write_json("jobs/x/spec.json", {})
    assert modes(shared) == {
        ".": "0o755",
        "jobs": "0o700",
        "jobs/x": "0o700",
        "jobs/x/spec.json": "0o600",
    }


def test_models_checkpoints_and_archives_are_private(tmp_path, data_dir):
    settings = settings_in(tmp_path / "var", data_dir)
    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as client:
        job_id = client.post("/v1/jobs", json=TINY).json()["id"]
        drain_queue(settings)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    store = JobStore(make_engine(settings.database_url))
    artifacts = ArtifactStore(settings.artifacts_dir)
    later = utcnow() + timedelta(days=2)
    removed = retention.apply(store, artifacts, metrics_days=1, files_days=None, now=later)
    assert removed.archives
    found = modes(settings.artifacts_dir)
    files = [path for path in found if (settings.artifacts_dir / path).is_file()]
    assert any(path.endswith("model.keras") for path in files), found
    assert any(path.startswith("archive/") for path in files), found
    assert {mode for path, mode in found.items() if path in files} == {"0o600"}, found
    assert {mode for path, mode in found.items() if path not in files} == {"0o700"}, found
    assert oct(stat.S_IMODE((tmp_path / "var").stat().st_mode)) == "0o700"

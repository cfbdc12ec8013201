"""Shared fixtures: tiny IDX datasets written per session, a real SQLite file per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from core.config import Settings
from jobqueue.db import init_db, make_engine
from jobqueue.reads import Reads
from jobqueue.store import JobStore
from tests.support.auth import ADMIN_HEADERS
from tests.support.data import TINY, write_dataset
from tests.support.inprocess import settings_in

# PostgreSQL for the tests that run on both databases; .ci/run sets it.
POSTGRES_URL = os.environ.get("TRICKLAB_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with tiny fashion-mnist/ and mnist/ subfolders."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root / "fashion-mnist")
    write_dataset(root / "mnist")
    return root


@pytest.fixture(scope="module")
def splits(data_dir: Path) -> Any:
    """The tiny Fashion-MNIST folder loaded as the worker loads it, TINY's validation split."""
    from core import datasets

    return datasets.load("fashion_mnist", data_dir, TINY["validation_size"])


@pytest.fixture
def settings(tmp_path: Path, data_dir: Path) -> Settings:
    return settings_in(tmp_path, data_dir, poll_seconds=0.05)


@pytest.fixture
def store(settings: Settings) -> JobStore:
    engine = make_engine(settings.database_url)
    init_db(engine)
    return JobStore(engine)


@pytest.fixture
def reads(store: JobStore) -> Reads:
    """The reads behind lists and reports, on the store's database."""
    return Reads(store.engine)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind: a SQLite file, or a PostgreSQL schema of its own
    (selected by search_path in the URL, so subprocesses get it too)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tricklab.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip(
            "PostgreSQL tests need TRICKLAB_TEST_POSTGRES_URL, e.g. "
            "postgresql+psycopg://postgres@127.0.0.1:5432/test (.ci/run sets it)"
        )
    schema = f"tricklab_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def any_store(database_url: str) -> JobStore:
    """A store on each kind of database, with a short lease."""
    engine = make_engine(database_url)
    init_db(engine)
    return JobStore(engine, lease_seconds=0.5, max_attempts=3)


@pytest.fixture
def any_reads(any_store: JobStore) -> Reads:
    """The reads on any_store's database."""
    return Reads(any_store.engine)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from service.app import create_app

    with TestClient(create_app(settings), headers=ADMIN_HEADERS) as test_client:
        yield test_client

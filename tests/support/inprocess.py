"""Settings under a test's own folder, and a worker that drains the queue in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import Settings
from jobqueue.artifacts import ArtifactStore
from jobqueue.db import make_engine
from jobqueue.store import JobStore
from tests.support.auth import ADMIN_TOKEN


def settings_in(root: Path, data_dir: Path, **overrides: Any) -> Settings:
    """Settings with a SQLite file and an artifact store under root and the tests' admin
    token, ignoring any .env."""
    return Settings(
        **{
            "database_url": f"sqlite:///{root / 'tricklab.db'}",
            "artifacts_dir": root / "artifacts",
            "data_dir": data_dir,
            "admin_token": ADMIN_TOKEN,
            **overrides,
        },
        _env_file=None,  # type: ignore[call-arg]
    )


def drain_queue(settings: Settings, **options: Any) -> None:
    """Train every queued job in this process, as `python -m worker` would (`options`: the
    Worker's, e.g. pack_size)."""
    from worker.loop import Worker

    worker = Worker(
        JobStore(make_engine(settings.database_url), settings.lease_seconds, settings.max_attempts),
        ArtifactStore(settings.artifacts_dir),
        settings.data_dir,
        **options,
    )
    while worker.run_one():
        pass

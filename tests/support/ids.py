"""Jobs and studies with ids a test chooses, so that two can share a prefix on purpose (random
ids share their first 8 hex digits once in 4 billion pairs)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from unittest import mock

import jobqueue.store
import jobqueue.studies


@contextlib.contextmanager
def chosen_ids(*ids: str) -> Iterator[None]:
    """New jobs and studies take these ids, in order, in this process; the rest of the
    process's uuid4s stay random."""
    pending = iter(ids)

    def next_id() -> uuid.UUID:
        return uuid.UUID(hex=next(pending))

    fake = SimpleNamespace(uuid4=next_id)
    with (
        mock.patch.object(jobqueue.store, "uuid", fake),
        mock.patch.object(jobqueue.studies, "uuid", fake),
    ):
        yield

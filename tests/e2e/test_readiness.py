"""The readiness probes of a real API whose PostgreSQL refuses it: open to anyone, they say
that the service is unavailable and no more; why (a host, a role, a port) goes to the log."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2 as httpx
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from jobqueue.db import make_engine
from tests.conftest import POSTGRES_URL
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.e2e


@dataclass
class Role:
    """A PostgreSQL role of the test's own, owning a schema, that can be shut out."""

    name: str
    url: str  # the API's database URL: this role, its schema
    admin: Engine

    def allow_login(self, allowed: bool) -> None:
        with self.admin.begin() as connection:
            connection.execute(text(f"ALTER ROLE {self.name} {'LOGIN' if allowed else 'NOLOGIN'}"))
            if not allowed:  # its open connections too
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"
                    ),
                    {"r": self.name},
                )


@pytest.fixture
def role() -> Iterator[Role]:
    if not POSTGRES_URL:
        pytest.skip("needs TRICKLAB_TEST_POSTGRES_URL (.ci/run sets it)")
    name = f"tricklab_ready_{uuid.uuid4().hex[:12]}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE ROLE {name} LOGIN"))
        connection.execute(text(f"CREATE SCHEMA {name} AUTHORIZATION {name}"))
    url = make_url(POSTGRES_URL).set(username=name, password=None)
    url = url.update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield Role(name, url.render_as_string(hide_password=False), admin)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {name} CASCADE"))
        Role(name, "", admin).allow_login(False)
        with admin.begin() as connection:
            connection.execute(text(f"DROP ROLE {name}"))
        admin.dispose()


def test_readiness_tells_no_one_why_and_logs_it(tmp_path, data_dir, role):
    with Cluster(tmp_path, data_dir, role.url) as cluster:
        cluster.start_api()
        anonymous = httpx.Client(base_url=cluster.url, timeout=30)
        assert anonymous.get("/readyz").json() == {"status": "ready"}
        cluster.store.engine.dispose()
        role.allow_login(False)
        for client in (anonymous, cluster.client):  # the admin's token changes nothing
            ready = client.get("/readyz")
            assert (ready.status_code, ready.json()) == (503, {"status": "unavailable"})
            v2 = client.get("/v2/health/ready")
            assert (v2.status_code, v2.json()) == (503, {"error": "the database does not answer"})
        assert anonymous.get("/healthz").status_code == 200  # alive all the same
        reason = f'role "{role.name}" is not permitted to log in'
        wait_for(lambda: reason in cluster.log("api"), 10, "the reason in the API's log")
        assert "not ready" in cluster.log("api")
        role.allow_login(True)
        wait_for(lambda: anonymous.get("/readyz").status_code == 200, 30, "ready again")
        anonymous.close()

"""The API started for real without tokens (TRICKLAB_AUTH=off): refused unless it listens on
loopback, and even then driven only from this machine, never by a web page elsewhere."""

from __future__ import annotations

import subprocess
import sys

import httpx2 as httpx
import pytest

from tests.support.cluster import Cluster
from tests.support.data import TINY

pytestmark = pytest.mark.e2e


def test_without_tokens_the_api_refuses_to_listen_beyond_this_machine(tmp_path, data_dir):
    with Cluster(tmp_path, data_dir, f"sqlite:///{tmp_path / 'db'}", AUTH="off") as cluster:
        env = {**cluster.env, "TRICKLAB_HOST": "0.0.0.0"}
        done = subprocess.run(
            [sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode != 0
    assert "auth is off but the API would listen on '0.0.0.0'" in done.stderr
    assert "TRICKLAB_HOST=127.0.0.1" in done.stderr and "Traceback" not in done.stderr


def test_without_tokens_only_this_machine_may_drive_the_api(tmp_path, data_dir):
    with Cluster(tmp_path, data_dir, f"sqlite:///{tmp_path / 'db'}", AUTH="off") as cluster:
        cluster.start_api()
        with httpx.Client(base_url=cluster.url, timeout=30) as client:  # no token
            assert client.get("/v1/me").json()["name"] == "admin"
            submitted = client.post(
                "/v1/jobs", json=TINY, headers={"Origin": "http://localhost:5173"}
            )
            assert submitted.status_code == 201 and submitted.json()["owner"] == "admin"
            # DNS rebinding: a page's own name pointed at 127.0.0.1 arrives with its Host.
            rebound = client.get("/v1/jobs", headers={"Host": "attacker.example:8000"})
            assert rebound.status_code == 403 and "attacker.example" in rebound.json()["detail"]
            # A cross-site POST from a page the user visits arrives with its Origin.
            forged = client.post(
                "/v1/jobs", json=TINY, headers={"Origin": "https://attacker.example"}
            )
            assert forged.status_code == 403 and "attacker.example" in forged.json()["detail"]
            assert client.get("/v1/jobs").json()["total"] == 1  # the forged job was not queued
        assert "authentication is off" in cluster.log("api")

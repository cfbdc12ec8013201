"""The scraper's token (TRICKLAB_METRICS_TOKEN_FILE) against a real API: made on the first
start, kept across restarts, it reads /metrics and is refused everywhere else."""

from __future__ import annotations

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.support.auth import ADMIN_HEADERS
from tests.support.cluster import Cluster
from tests.support.data import TINY
from tests.support.inprocess import settings_in

pytestmark = pytest.mark.e2e


def test_the_metrics_token_reads_the_metrics_and_nothing_else(tmp_path, data_dir):
    token_file = tmp_path / "metrics" / "metrics-token"  # its folder made too
    database = f"sqlite:///{tmp_path / 'tricklab.db'}"
    with Cluster(tmp_path, data_dir, database, METRICS_TOKEN_FILE=str(token_file)) as cluster:
        cluster.start_api()
        token = token_file.read_text().strip()
        assert len(token) >= 32 and token_file.stat().st_mode & 0o777 == 0o640
        scraper = httpx.Client(
            base_url=cluster.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        with scraper:
            scraped = scraper.get("/metrics")
            assert scraped.status_code == 200 and "tricklab_http_requests_total" in scraped.text
            refused = {
                f"{method} {path}": scraper.request(method, path, **body).status_code
                for method, path, body in [
                    ("GET", "/v1/me", {}),
                    ("GET", "/v1/jobs", {}),
                    ("GET", "/v1/tricks", {}),
                    ("POST", "/v1/jobs", {"json": TINY}),
                    ("GET", "/v1/users", {}),
                    ("GET", "/v2", {}),
                    ("GET", "/metrics/", {}),
                ]
            }
            assert refused == dict.fromkeys(refused, 401)
            # Nor does it open a dashboard session.
            sign_in = scraper.post("/signin", data={"token": token}, follow_redirects=False)
            assert sign_in.status_code == 401 and "set-cookie" not in sign_in.headers
        assert cluster.client.get("/metrics").status_code == 200  # any user's token still does
        # A restart keeps the token that Prometheus was given.
        cluster.kill("api")
        cluster.start_api()
        assert token_file.read_text().strip() == token
        again = httpx.get(
            f"{cluster.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert again.status_code == 200
        wrong = httpx.get(
            f"{cluster.url}/metrics", headers={"Authorization": f"Bearer {token[:-1]}x"}
        )
        assert wrong.status_code == 401


def test_a_metrics_token_file_too_short_to_be_a_token_stops_the_start(tmp_path, data_dir):
    token_file = tmp_path / "metrics-token"
    token_file.write_text("short\n")
    settings = settings_in(tmp_path, data_dir, metrics_token_file=token_file)
    refused = pytest.raises(RuntimeError, match=r"TRICKLAB_METRICS_TOKEN_FILE\) holds 5 characters")
    with refused, TestClient(create_app(settings), headers=ADMIN_HEADERS):
        pass

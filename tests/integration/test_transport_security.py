"""HSTS on the answers served over https, and the setting that says which proxies may tell the
API so (TRICKLAB_FORWARDED_ALLOW_IPS). tests/e2e/test_tls_proxy.py runs both behind Caddy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from core.config import Settings
from service.app import create_app
from tests.support.auth import ADMIN_HEADERS
from tests.support.inprocess import settings_in

HSTS = "strict-transport-security"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (None, "127.0.0.1,::1"),  # the default: a proxy on this machine
        (" 10.201.0.2 , 10.0.0.0/29,fd00::1 ", "10.201.0.2,10.0.0.0/29,fd00::1"),
        ("", ""),  # none: X-Forwarded-* is never believed
    ],
)
def test_the_trusted_proxies_are_addresses_and_networks(given, kept):
    extra = {} if given is None else {"forwarded_allow_ips": given}
    settings = Settings(**extra, _env_file=None)  # type: ignore[call-arg]
    assert settings.forwarded_allow_ips == kept


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("*", "'*' would let any client claim any address"),
        ("127.0.0.1,proxy.internal", "'proxy.internal' is not an IP address or network"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or network"),
    ],
)
def test_anything_else_is_refused_by_name(given, said):
    with pytest.raises(ValidationError, match=said):
        Settings(forwarded_allow_ips=given, _env_file=None)  # type: ignore[call-arg]


def test_the_api_refuses_to_start_trusting_everyone(tmp_path):
    env = {**os.environ, "TRICKLAB_FORWARDED_ALLOW_IPS": "*", "TRICKLAB_PORT": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stderr.startswith("tricklab: invalid settings:"), result.stderr
    assert "forwarded_allow_ips" in result.stderr.lower() and "any client" in result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback


@pytest.mark.parametrize(
    ("base_url", "hsts_seconds", "expected"),
    [
        ("https://testserver", 31_536_000, "max-age=31536000"),
        ("https://testserver", 600, "max-age=600"),
        ("https://testserver", 0, None),  # turned off
        ("http://testserver", 31_536_000, None),  # meaningless in clear: browsers ignore it
    ],
)
def test_hsts_is_sent_on_every_answer_served_over_https(
    tmp_path, data_dir, base_url, hsts_seconds, expected
):
    settings = settings_in(tmp_path, data_dir, hsts_seconds=hsts_seconds)
    with TestClient(create_app(settings), base_url=base_url, headers=ADMIN_HEADERS) as client:
        answers = [
            client.get("/healthz"),
            client.get("/v1/me"),
            client.get("/v1/me", headers={"Authorization": ""}),  # a refusal, before any route
            client.get("/no/such/page"),
            client.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"}),
        ]
    assert [answer.headers.get(HSTS) for answer in answers] == [expected] * len(answers)

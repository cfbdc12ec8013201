"""Every answer carries the security headers, whoever answers it (a route, a static file, the
body limits, the sign-in gate); the pages load nothing the policy forbids."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.headers import HEADERS
from tests.support.auth import ADMIN_HEADERS
from tests.support.inprocess import settings_in

TEMPLATES = Path(__file__).resolve().parents[2] / "service" / "dashboard" / "templates"


@pytest.fixture(scope="module")
def anonymous(tmp_path_factory, data_dir):
    settings = settings_in(tmp_path_factory.mktemp("headers"), data_dir, max_request_bytes=2048)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/v1/jobs", 401),  # the gate's refusal
        ("GET", "/v2/models/x/ready", 401),  # the Open Inference Protocol's own error shape
        ("GET", "/no/such/page", 404),
        ("GET", "/openapi.json", 200),
        ("GET", "/docs", 200),
        ("GET", "/", 200),  # the dashboard's sign-in page
        ("GET", "/static/swagger-ui/swagger-ui.css", 200),
        ("GET", "/dashboard/static/dashboard.js", 200),
        ("POST", "/v1/jobs/" + "0" * 32 + "/predict", 413),  # the body limits' refusal
    ],
)
def test_every_answer_carries_the_security_headers(anonymous, method, path, status):
    body = b"x" * 4096 if method == "POST" else None
    headers = {"content-type": "image/png", **ADMIN_HEADERS} if body else {}
    response = anonymous.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    for name, value in HEADERS.items():
        if name != "content-security-policy" or path != "/docs":
            assert response.headers[name] == value, name
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "'unsafe-eval'" not in policy
    assert not re.search(r"script-src[^;]*'unsafe-inline'", policy)


def test_the_swagger_ui_may_run_its_own_inline_script_and_no_other(anonymous):
    page = anonymous.get("/docs")
    scripts = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert len(scripts) == 1  # the one that starts the UI
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    directives = dict(
        part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";")
    )
    assert directives["script-src"] == f"'self' 'sha256-{digest}'"
    assert directives["frame-ancestors"] == "'none'"


@pytest.mark.parametrize("template", sorted(TEMPLATES.glob("*.html")), ids=lambda p: p.name)
def test_no_dashboard_template_needs_an_inline_script_or_eval(template):
    html = template.read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline <script>"
    assert not re.search(r"\s(hx-on[:-]|on[a-z]+=)", html), "an inline event handler"
    assert "javascript:" not in html and "js:" not in html

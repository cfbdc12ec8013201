"""The API behind the TLS proxy, as compose runs them: Debian's caddy with deploy/Caddyfile in
front of a real `python -m service`, clients verifying the certificate against Caddy's local
CA. Through the proxy the API knows it is served over https (Secure session cookies, HSTS) and
whom it serves; the same forwarded headers from a peer that it does not trust change nothing."""

from __future__ import annotations

import http.cookies
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support.auth import ADMIN_HEADERS, ADMIN_TOKEN
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CADDYFILE = ROOT / "deploy" / "Caddyfile"
TRICKLAB = Path(sys.prefix) / "bin" / "tricklab"
HSTS = "strict-transport-security"
# Loopback addresses of their own, so that the API's log tells each client apart. The API
# trusts the proxy's (127.0.0.1) and one more, which uvicorn would not trust by default.
TRUSTED = "127.0.0.1,127.0.0.4"
VISITOR = "127.0.0.3"  # a client of the proxy
STRANGER = "127.0.0.2"  # a client that reaches the API directly
SECOND_PROXY = "127.0.0.4"
FORGED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
CA_PATH = "caddy-data/caddy/pki/authorities/local/root.crt"  # under XDG_DATA_HOME


@dataclass
class Stack:
    api: Cluster
    url: str  # the proxy's https address
    ca: Path  # the root certificate of Caddy's local CA

    def client(self, address: str = VISITOR) -> httpx.Client:
        """A client of the proxy from `address`, verifying its certificate."""
        transport = httpx.HTTPTransport(
            local_address=address, verify=ssl.create_default_context(cafile=self.ca)
        )
        return httpx.Client(base_url=self.url, transport=transport, timeout=30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Stack]:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("no caddy here: `apt-get install caddy` (.ci/run installs it)")
    root = tmp_path_factory.mktemp("tls")
    database = f"sqlite:///{root / 'tricklab.db'}"
    with Cluster(root, data_dir, database, FORWARDED_ALLOW_IPS=TRUSTED) as api:
        api.start_api()
        port = free_port()
        # What compose's proxy service gets, but the site's port and the API's address; its
        # certificates and CA under the test's folder, never the machine's trust store.
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(root),
            "XDG_DATA_HOME": str(root / "caddy-data"),
            "XDG_CONFIG_HOME": str(root / "caddy-config"),
            "SITE_ADDRESS": f"localhost:{port}",
            "TLS_ISSUER": "internal",
            "API_ADDRESS": api.url.removeprefix("http://"),
        }
        command = [caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
        with (root / "caddy.log").open("wb") as log:
            proxy = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            stack = Stack(api, f"https://localhost:{port}", root / CA_PATH)
            wait_for(lambda: _serves(stack), 60, "caddy to serve https")
            yield stack
        finally:
            proxy.terminate()
            try:
                proxy.wait(10)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()


def _serves(stack: Stack) -> bool:
    if not stack.ca.exists():
        return False
    try:
        with stack.client() as client:
            return client.get("/readyz").status_code == 200
    except (httpx.TransportError, ssl.SSLError):
        return False


def session_cookie(response: httpx.Response) -> http.cookies.Morsel[str]:
    cookies: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        cookies.load(header)
    (morsel,) = cookies.values()
    return morsel


def test_through_the_proxy_answers_carry_hsts_and_the_session_cookie_is_secure(stack):
    with stack.client() as client:
        for answer in (
            client.get("/healthz"),
            client.get("/v1/me", headers=ADMIN_HEADERS),
            client.get("/v1/me"),  # a refusal too
            # A client's own X-Forwarded-Proto never reaches the API: the proxy sets its own.
            client.get("/healthz", headers={"X-Forwarded-Proto": "http"}),
        ):
            assert answer.url.scheme == "https"
            assert answer.headers[HSTS] == "max-age=31536000", answer.headers
        assert client.get("/v1/me", headers=ADMIN_HEADERS).json()["name"] == "admin"
        signed_in = client.post("/signin", data={"token": ADMIN_TOKEN})
    assert signed_in.status_code == 303, signed_in.text
    cookie = session_cookie(signed_in)
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"].lower() == "strict"
    assert ADMIN_TOKEN not in signed_in.headers["set-cookie"]
    # The proxy's port speaks TLS alone: a plain request gets the proxy's refusal, not the API.
    plain = httpx.get(stack.url.replace("https:", "http:") + "/healthz", timeout=30)
    assert plain.status_code == 400 and "HTTPS server" in plain.text
    # The proxy told the API who the client was, whatever the client claimed.
    with stack.client() as client:
        client.get("/v1/tricks", headers={"X-Forwarded-For": "198.51.100.9", **ADMIN_HEADERS})
    log = stack.api.log("api")
    assert f'{VISITOR}:0 - "GET /v1/tricks HTTP/1.1" 200' in log
    assert "198.51.100.9" not in log


def test_forwarded_headers_are_believed_from_the_trusted_proxy_alone(stack):
    direct = httpx.Client(
        base_url=stack.api.url,
        transport=httpx.HTTPTransport(local_address=STRANGER),
        timeout=30,
    )
    with direct:
        answer = direct.get("/healthz", headers=FORGED)
        signed_in = direct.post("/signin", data={"token": ADMIN_TOKEN}, headers=FORGED)
    assert answer.status_code == 200 and HSTS not in answer.headers
    assert signed_in.status_code == 303 and not session_cookie(signed_in)["secure"]
    log = stack.api.log("api")
    assert f"{STRANGER}:" in log and "203.0.113.7" not in log
    # The same headers from an address in TRICKLAB_FORWARDED_ALLOW_IPS are believed: the peer
    # decides, as the setting says.
    trusted = httpx.Client(
        base_url=stack.api.url,
        transport=httpx.HTTPTransport(local_address=SECOND_PROXY),
        timeout=30,
    )
    with trusted:
        answer = trusted.get("/healthz", headers=FORGED)
    assert answer.headers[HSTS] == "max-age=31536000"
    assert '203.0.113.7:0 - "GET /healthz HTTP/1.1" 200' in stack.api.log("api")


def test_the_cli_reaches_the_api_through_the_proxy_given_the_local_ca(stack, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRICKLAB_", "SSL_CERT"))}
    env |= {"TRICKLAB_URL": stack.url, "TRICKLAB_TOKEN": ADMIN_TOKEN}
    env["XDG_CONFIG_HOME"] = str(tmp_path)

    def tricklab(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TRICKLAB), "jobs", "list", "-o", "json"],
            capture_output=True,
            text=True,
            env=env | extra,
            timeout=120,
        )

    untrusted = tricklab()  # the local CA is no CA this machine knows
    assert untrusted.returncode == 3, untrusted.stderr
    assert "certificate verify failed" in untrusted.stderr
    trusted = tricklab(SSL_CERT_FILE=str(stack.ca))
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["jobs"] == []

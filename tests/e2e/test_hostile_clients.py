"""A thousand hostile sockets against a real `python -m service`: without a token, with headers
that never end, with bodies that never come, and one user's event streams by the hundred. Another
user's work, and the health probe, keep answering in well under a second meanwhile."""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support.cluster import Cluster, wait_for
from tests.support.data import TINY, tiny_images
from tests.support.images import encode
from tests.support.raw_http import closed, connect, head, read_response

pytestmark = pytest.mark.e2e
PER_USER = 128  # TRICKLAB_MAX_REQUESTS_PER_USER's default
STREAMS = 16  # TRICKLAB_MAX_STREAMS_PER_USER's default


class Site:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.tokens: dict[str, str] = {}

    def user(self, name: str) -> httpx.Client:
        made = self.cluster.client.post("/v1/users", json={"name": name, "role": "user"})
        assert made.status_code == 201, made.text
        self.tokens[name] = made.json()["token"]
        return httpx.Client(
            base_url=self.cluster.url,
            timeout=30,
            headers={"Authorization": f"Bearer {self.tokens[name]}"},
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Site]:
    """An API whose deadlines outlast the tests, so that every hostile socket is held for as
    long as the attacker likes, and the default limits on what one caller may hold."""
    root = tmp_path_factory.mktemp("hostile")
    cluster = Cluster(
        root,
        data_dir,
        f"sqlite:///{root / 'tricklab.db'}",
        HEADER_TIMEOUT_SECONDS="300",
        BODY_TIMEOUT_SECONDS="600",
    )
    try:
        cluster.start_api()
        yield Site(cluster)
    finally:
        cluster.close()


def test_a_thousand_hostile_sockets_leave_another_users_work_answering(site: Site) -> None:
    cluster = site.cluster
    alice, mallory = site.user("alice"), site.user("mallory")
    trained = alice.post("/v1/jobs", json=TINY).json()["id"]
    assert cluster.start_worker("worker", "-m", "worker", "--once").wait(120) == 0
    image = encode(tiny_images(1, seed=3)[0][0])
    predict = f"/v1/jobs/{trained}/predict"
    assert alice.post(predict, content=image, headers={"content-type": "image/png"}).is_success
    queued = mallory.post("/v1/jobs", json=TINY).json()["id"]  # no worker: queued for good
    bearer = f"Bearer {site.tokens['mallory']}"

    hostile: dict[str, list[socket.socket]] = {
        "no token": [],
        "slow headers": [],
        "slow bodies": [],
        "streams": [],
    }
    try:
        for _ in range(300):  # bodies announced, never sent, and no token
            sock = connect(cluster.url)
            sock.sendall(head("POST", "/v1/jobs", 200_000, "application/json", authorization=None))
            hostile["no token"].append(sock)
        for _ in range(300):  # headers begun, never finished
            sock = connect(cluster.url)
            sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never: ends")
            hostile["slow headers"].append(sock)
        for _ in range(200):  # mallory's bodies, announced and never sent
            sock = connect(cluster.url)
            sock.sendall(head("POST", "/v1/jobs", 1000, "application/json", authorization=bearer))
            hostile["slow bodies"].append(sock)
        stream = f"GET /v1/jobs/{queued}/events HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}"
        for _ in range(200):  # mallory's event streams, on a job that never ends
            sock = connect(cluster.url)
            sock.sendall(f"{stream}\r\n\r\n".encode())
            hostile["streams"].append(sock)
        assert sum(map(len, hostile.values())) == 1000

        answers = answered(hostile)
        assert answers["no token"] == Counter({401: 300})
        assert answers["slow bodies"] == Counter({429: 200 - PER_USER})
        assert answers["streams"] == Counter({200: STREAMS, 429: 200 - STREAMS})

        for attempt in range(3):  # another user's work, while all of it is held
            started = time.monotonic()
            assert cluster.client.get("/healthz").status_code == 200
            healthz = time.monotonic() - started
            started = time.monotonic()
            submitted = alice.post("/v1/jobs", json={**TINY, "seed": attempt})
            submit = time.monotonic() - started
            assert submitted.status_code == 201, submitted.text
            started = time.monotonic()
            predicted = alice.post(predict, content=image, headers={"content-type": "image/png"})
            prediction = time.monotonic() - started
            assert predicted.status_code == 200, predicted.text
            assert max(healthz, submit, prediction) < 1.0, (healthz, submit, prediction)

        # Still held, not closed: what was measured above was measured under their load.
        for sock in hostile["slow headers"]:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
        assert mallory.get("/v1/me").status_code == 429  # her share is all in use
    finally:
        for socks in hostile.values():
            for sock in socks:
                sock.close()


def readable(sockets: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Those of the sockets that have something to read (or were closed), waiting up to
    `timeout`; by epoll, since select() refuses descriptors past 1024, which a thousand sockets
    in a process that has run other tests pass."""
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        ready = {key.fd for key, _ in selector.select(timeout)}
    return [sock for sock in sockets if sock.fileno() in ready]


def answered(hostile: dict[str, list[socket.socket]]) -> dict[str, Counter[int]]:
    """The statuses of the responses each kind of socket gets, once the last of them has come:
    a socket the server holds (its body awaited, its stream open with no news) answers
    nothing, or only its stream's first bytes."""
    owner = {sock: kind for kind, socks in hostile.items() for sock in socks}
    statuses: dict[str, Counter[int]] = {kind: Counter() for kind in hostile}
    waiting = [sock for sock in owner if owner[sock] != "slow headers"]
    while waiting:
        ready = readable(waiting, 5.0)
        if not ready:
            break  # five quiet seconds: the rest are held
        for sock in ready:
            status, headers, body = read_response(sock)
            kind = owner[sock]
            statuses[kind][status] += 1
            waiting.remove(sock)
            if status == 401:
                assert headers["connection"] == "close" and closed(sock)
                assert "needs an API token" in json.loads(body)["detail"]
            if status == 429:
                assert headers["retry-after"] == "1"
                assert "TRICKLAB_MAX_" in json.loads(body)["detail"]
    return statuses


@pytest.mark.parametrize("ending", [b"", b"\r\n\r\n"], ids=["unfinished", "complete"])
def test_headers_beyond_the_limit_get_431_and_the_connection_closes(site: Site, ending) -> None:
    with connect(site.cluster.url) as sock:
        # Past the 64 KiB default: never finished, or finished within one read of the server.
        large = b"X-Large: " + b"a" * 70 * 2**10 + ending
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + large)
        status, headers, body = read_response(sock)
        assert status == 431
        assert headers["connection"] == "close"
        assert "TRICKLAB_MAX_HEADER_BYTES" in json.loads(body)["detail"]
        assert closed(sock)
    assert site.cluster.client.get("/healthz").status_code == 200


@pytest.mark.parametrize("ending", ["disabled", "token revoked"])
def test_a_stream_ends_when_its_user_is_disabled_or_its_token_revoked(site: Site, ending) -> None:
    cluster = site.cluster
    name = "carol" if ending == "disabled" else "dave"
    client = site.user(name)
    job_id = client.post("/v1/jobs", json=TINY).json()["id"]  # queued: its stream never ends
    me = client.get("/v1/me").json()
    seen: list[str] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        while not seen:
            line = next(lines)
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: "))
        if ending == "disabled":
            changed = cluster.client.patch(f"/v1/users/{me['id']}", json={"disabled": True})
        else:
            (token,) = cluster.client.get(f"/v1/users/{me['id']}/tokens").json()["tokens"]
            changed = cluster.client.delete(f"/v1/users/{me['id']}/tokens/{token['id']}")
        assert changed.is_success, changed.text
        deadline = time.monotonic() + 60  # a comment comes every 15 s of an open stream
        for line in lines:
            assert time.monotonic() < deadline, f"the stream is still open after {ending}"
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: "))
    assert seen == ["status"], "the stream closed without an end: the job has not ended"
    assert client.get(f"/v1/jobs/{job_id}/events").status_code == 401


class Held:
    """Requests that announce a body and never send it: each holds a slot while it lasts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sockets: list[tuple[socket.socket, bytes]] = []

    def add(self, request: bytes, count: int) -> None:
        for _ in range(count):
            sock = connect(self.url)
            sock.sendall(request)
            self.sockets.append((sock, request))

    def settle(self) -> None:
        """Until every one is in progress: one refused while the API was busy goes again."""
        while True:
            time.sleep(1)  # nothing else is sent meanwhile: long enough to be taken in
            ready = readable([sock for sock, _ in self.sockets], 0)
            if not ready:
                return
            for index, (sock, request) in enumerate(self.sockets):
                if sock in ready:
                    sock.close()
                    self.sockets[index] = (connect(self.url), request)
                    self.sockets[index][0].sendall(request)

    def close(self) -> None:
        for sock, _ in self.sockets:
            sock.close()
        self.sockets.clear()


def test_the_last_slots_are_kept_for_callers_with_few_and_the_probes_always_answer(
    tmp_path: Path, data_dir: Path
) -> None:
    settings = {"MAX_CONCURRENT_REQUESTS": "16", "MAX_REQUESTS_PER_USER": "12"}
    with Cluster(tmp_path, data_dir, f"sqlite:///{tmp_path / 'tricklab.db'}", **settings) as small:
        small.start_api()
        site = Site(small)
        clients = {name: site.user(name) for name in ("erin", "frank", "grace", "heidi")}
        slow = {
            name: head("POST", "/v1/jobs", 100, "application/json", authorization=f"Bearer {token}")
            for name, token in site.tokens.items()
        }
        held = Held(small.url)
        try:
            held.add(slow["erin"], 8)
            held.add(slow["frank"], 4)
            held.settle()  # 12 in progress: the last quarter of 16 begins
            refused = clients["erin"].get("/v1/me")  # she holds 8, FEW
            assert refused.status_code == 429, refused.text
            assert "last slots" in refused.json()["detail"]
            assert refused.headers["retry-after"] == "1"
            assert clients["grace"].get("/v1/me").status_code == 200  # she holds none

            held.add(slow["frank"], 3)  # 7: still fewer than FEW
            held.add(slow["grace"], 1)
            held.settle()  # 16 in progress: the limit
            busy = clients["heidi"].get("/v1/me")
            assert busy.status_code == 503, busy.text
            assert "TRICKLAB_MAX_CONCURRENT_REQUESTS" in busy.json()["detail"]
            assert small.client.get("/healthz").status_code == 200
            assert small.client.get("/readyz").status_code == 200
        finally:
            held.close()
        wait_for(lambda: clients["heidi"].get("/v1/me").is_success, 30, "the slots to free")


def test_callers_without_a_token_share_an_eighth_and_get_five_seconds_for_a_body(
    tmp_path: Path, data_dir: Path
) -> None:
    settings = {"MAX_CONCURRENT_REQUESTS": "16"}  # an eighth: 2
    with Cluster(tmp_path, data_dir, f"sqlite:///{tmp_path / 'tricklab.db'}", **settings) as small:
        small.start_api()
        held = Held(small.url)
        form = "application/x-www-form-urlencoded"
        try:
            held.add(head("POST", "/signin", 100, form, authorization=None), 2)
            held.settle()
            page = httpx.get(f"{small.url}/", timeout=30)  # the sign-in page: no token
            assert page.status_code == 429, page.text
            assert "signed in as no one" in page.json()["detail"]
            assert small.client.get("/v1/me").status_code == 200  # a token: not theirs to fill
            for sock, _ in held.sockets:
                status, _, body = read_response(sock)  # within 5 s of its headers
                assert status == 408
                assert "the deadline for requests without a token" in json.loads(body)["detail"]
        finally:
            held.close()
        assert httpx.get(f"{small.url}/", timeout=30).status_code == 200

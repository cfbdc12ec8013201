"""BodyLimits in front of a small FastAPI app, driven through ASGI directly, so that a test can
hold a body half-sent (or not sent at all) for as long as it likes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request

from service.limits import BodyLimits

MAX_BYTES, MAX_JSON, IN_FLIGHT = 10_000, 1_000, 20_000
GENEROUS = 30  # seconds


def make_limits(**overrides: Any) -> BodyLimits:
    app = FastAPI()

    @app.post("/v1/jobs")
    def submit(spec: dict[str, Any]) -> dict[str, int]:  # FastAPI reads this JSON body
        return {"fields": len(spec)}

    @app.post("/v1/jobs/{job_id}/predict")
    async def predict(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/v1/listen")
    async def listen(request: Request) -> dict[str, str]:
        # Like a streaming response, which listens for the client leaving once it has the body.
        await request.body()
        return {"then": (await request.receive())["type"]}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    settings = {"max_bytes": MAX_BYTES, "max_in_flight": IN_FLIGHT, "max_json_bytes": MAX_JSON}
    return BodyLimits(app, **{**settings, **overrides})


class Client:
    """One request: the body arrives in `chunks`; then, if `hang`, nothing more comes until
    `then` is set, when the last of the body (`rest`) arrives, or, without one, the client
    leaves. Once the body is complete receive() waits the same way, for a disconnect."""

    def __init__(
        self,
        path: str,
        chunks: list[bytes],
        *,
        method: str = "POST",
        declared: int | None = None,
        content_type: str = "application/json",
        hang: bool = False,
        rest: bytes | None = None,
    ) -> None:
        headers = [(b"content-type", content_type.encode())]
        if declared is not None:
            headers.append((b"content-length", str(declared).encode()))
        self.scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "http_version": "1.1",
            "scheme": "http",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
        }
        self.chunks, self.hang, self.rest = list(chunks), hang, rest
        self.waiting = asyncio.Event()  # set once the app waits for bytes that do not come
        self.settled = asyncio.Event()  # set once it waits, or is answered
        self.then = asyncio.Event()  # set: the client has gone
        self.messages: list[dict] = []

    async def receive(self) -> dict:
        if self.chunks:
            body = self.chunks.pop(0)
            return {
                "type": "http.request",
                "body": body,
                "more_body": bool(self.chunks) or self.hang,
            }
        self.waiting.set()
        self.settled.set()
        await self.then.wait()
        if self.rest is not None:
            body, self.rest = self.rest, None
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.messages.append(message)
        self.settled.set()

    async def call(self, app: Callable[..., Awaitable[None]]) -> Client:
        async with asyncio.timeout(GENEROUS):  # a test that would hang fails instead
            await app(self.scope, self.receive, self.send)
        return self

    @property
    def status(self) -> int:
        return self.messages[0]["status"]

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.messages[0]["headers"]}

    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


def request(path: str, body: bytes, **options: Any) -> Client:
    return Client(path, [body], declared=len(body), **options)


def test_a_body_within_its_route_limit_is_received_and_leaves_nothing_charged():
    async def run() -> None:
        limits = make_limits()
        spec = await request("/v1/jobs", b'{"epochs": 1}').call(limits)
        assert (spec.status, spec.json()) == (200, {"fields": 1})
        image = await request(
            "/v1/jobs/j/predict", b"x" * MAX_BYTES, content_type="image/png"
        ).call(limits)
        assert (image.status, image.json()) == (200, {"bytes": MAX_BYTES})
        health = await Client("/healthz", [b""], method="GET").call(limits)
        assert health.status == 200
        assert limits.in_flight == 0

    asyncio.run(run())


def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_read():
    async def run() -> None:
        limits = make_limits()
        client = Client("/v1/jobs/j/predict", [], declared=MAX_BYTES + 1, content_type="image/png")
        await client.call(limits)
        assert client.status == 413
        assert client.json()["detail"] == (
            f"the request body is {MAX_BYTES + 1:,} bytes; the limit is {MAX_BYTES:,} bytes "
            "(TRICKLAB_MAX_REQUEST_BYTES)"
        )
        assert not client.waiting.is_set()  # the app never asked for the body

    asyncio.run(run())


def test_routes_that_take_no_images_take_small_json_bodies():
    async def run() -> None:
        limits = make_limits()
        big = b'{"name": "' + b"x" * MAX_JSON + b'"}'
        for path in ("/v1/jobs", "/v1/studies", "/v1/jobs/j/cancel"):
            declared = await Client(path, [], declared=len(big)).call(limits)
            assert declared.status == 413, path
            assert declared.json()["detail"] == (
                f"the request body is {len(big):,} bytes; the limit is {MAX_JSON:,} bytes "
                "(TRICKLAB_MAX_JSON_BYTES)"
            )
        # Chunked: no Content-Length, refused as soon as what arrived passes the limit.
        chunked = await Client("/v1/jobs", [big[:600], big[600:]]).call(limits)
        assert chunked.status == 413
        assert f"over {MAX_JSON:,} bytes" in chunked.json()["detail"]
        assert "TRICKLAB_MAX_JSON_BYTES" in chunked.json()["detail"]
        # The routes that take images keep the large limit, by path (/infer: no route here).
        predict = await request("/v1/jobs/j/predict", big, content_type="image/png").call(limits)
        assert (predict.status, predict.json()) == (200, {"bytes": len(big)})
        infer = await request("/v2/models/m/infer", big).call(limits)
        assert infer.status == 404
        assert limits.in_flight == 0

    asyncio.run(run())


def test_a_chunked_image_body_over_the_limit_gets_413_and_frees_its_bytes():
    async def run() -> None:
        limits = make_limits()
        chunks = [b"x" * 4_000] * 3  # 12,000 bytes, no Content-Length
        client = await Client("/v1/jobs/j/predict", chunks, content_type="image/png").call(limits)
        assert client.status == 413
        assert f"over {MAX_BYTES:,} bytes" in client.json()["detail"]
        assert "TRICKLAB_MAX_REQUEST_BYTES" in client.json()["detail"]
        assert limits.in_flight == 0

    asyncio.run(run())


def test_announced_bodies_that_never_arrive_hold_none_of_the_budget():
    # 60 uploads announcing the largest body and sending nothing announce 30 times the budget;
    # charged by what they announce, they would turn every other request away.
    async def run() -> None:
        limits = make_limits(max_bytes=IN_FLIGHT // 2)
        silent = [
            Client("/v1/jobs/j/predict", [], declared=IN_FLIGHT // 2, content_type="image/png")
            for _ in range(60)
        ]
        tasks = [asyncio.create_task(client.call(limits)) for client in silent]
        await asyncio.gather(*(client.settled.wait() for client in silent))
        assert [client.messages for client in silent] == [[]] * 60  # all waiting, none refused
        assert limits.in_flight == 0
        spec = await request("/v1/jobs", b'{"epochs": 1}').call(limits)
        assert spec.status == 200, spec.json()
        image = await request(
            "/v1/jobs/j/predict", b"x" * MAX_BYTES, content_type="image/png"
        ).call(limits)
        assert image.status == 200, image.json()
        assert not any(client.messages for client in silent)  # all still waiting
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert limits.in_flight == 0

    asyncio.run(run())


def test_the_budget_is_charged_as_bytes_arrive_and_freed_with_the_response():
    async def run() -> None:
        limits = make_limits(max_bytes=IN_FLIGHT)
        first = Client(
            "/v1/jobs/j/predict",
            [b"x" * 15_000],
            declared=15_001,
            content_type="image/png",
            hang=True,
            rest=b"x",
        )
        task = asyncio.create_task(first.call(limits))
        await first.waiting.wait()
        assert limits.in_flight == 15_000
        busy = await request("/v1/jobs/j/predict", b"x" * 6_000, content_type="image/png").call(
            limits
        )
        assert busy.status == 503
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["detail"] == (
            "the service is already receiving 15,000 bytes of requests (the limit is 20,000, "
            "TRICKLAB_MAX_IN_FLIGHT_BYTES); retry shortly"
        )
        fits = await request("/v1/jobs/j/predict", b"x" * 5_000, content_type="image/png").call(
            limits
        )
        assert (fits.status, fits.json()) == (200, {"bytes": 5_000})
        assert limits.in_flight == 15_000
        first.then.set()  # the last byte arrives: answered, its bytes are freed
        await task
        assert (first.status, first.json()) == (200, {"bytes": 15_001})
        assert limits.in_flight == 0

    asyncio.run(run())


def test_a_body_that_does_not_arrive_in_time_gets_408_and_frees_the_budget():
    async def run() -> None:
        limits = make_limits(body_timeout=0.05)
        half = Client("/v1/jobs/j/predict", [b"x" * 3_000], content_type="image/png", hang=True)
        silent = Client("/v1/jobs", [], declared=100, hang=True)
        await asyncio.gather(half.call(limits), silent.call(limits))
        for client in (half, silent):
            assert client.status == 408
            assert client.headers["connection"] == "close"
            assert client.json()["detail"] == (
                "the request body did not arrive within 0.05 seconds "
                "(TRICKLAB_BODY_TIMEOUT_SECONDS); send it faster, or in smaller requests"
            )
        assert limits.in_flight == 0

    asyncio.run(run())


def test_once_the_body_is_in_the_app_may_wait_for_a_disconnect_beyond_the_body_timeout():
    async def run() -> None:
        limits = make_limits(body_timeout=0.05)
        client = request("/v1/listen", b"{}")
        asyncio.get_running_loop().call_later(0.2, client.then.set)  # after the body timeout
        await client.call(limits)
        assert (client.status, client.json()) == (200, {"then": "http.disconnect"})

    asyncio.run(run())


def test_other_scopes_pass_through():
    async def run() -> None:
        seen: list[str] = []

        async def app(scope: dict, receive: Any, send: Any) -> None:
            seen.append(scope["type"])

        await BodyLimits(app, max_bytes=1, max_in_flight=1)({"type": "lifespan"}, None, None)
        assert seen == ["lifespan"]

    asyncio.run(run())

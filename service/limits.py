"""Hard limits on request bodies, so that neither one request, nor a flood of them, nor clients
that send slowly or not at all, can make the service hold more memory, or hold it for longer,
than configured."""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Routes that take images keep the large limit; every other route takes small JSON documents.
# Decided by path, because this middleware runs before routing.
IMAGE_ROUTE_ENDINGS = ("/predict", "/infer")
# A request's own body deadline, in seconds, set in its scope by an outer middleware (the
# admission gives callers signed in as no one a short one); otherwise `body_timeout`.
BODY_TIMEOUT = "tricklab.body_timeout"


class BodyLimits:
    """Limits on each request body, each answered before the bytes are held:

    - a body over its route's limit gets 413: at once when its Content-Length says so, and
      for a chunked body as soon as the bytes read pass it. Routes that take images (paths
      ending in /predict or /infer) may receive `max_bytes`; every other route takes JSON
      documents, `max_json_bytes` at most (None: `max_bytes` too);
    - all bodies being received at once may hold `max_in_flight` bytes together; a request
      whose next bytes would pass that gets 503 with Retry-After, so a flood of uploads is
      turned away instead of buffered. A body counts for the bytes that have arrived, not the
      length it announces, until its response is sent: a client that announces 32 MiB and
      sends nothing holds nothing, so a few of them cannot turn every other request away;
    - the whole body must arrive within `body_timeout` seconds of the request's headers
      (None: no limit); a client that is too slow gets 408 and the connection is closed, so
      it cannot keep its slot, and its bytes in the budget, for ever.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_in_flight: int,
        max_json_bytes: int | None = None,
        body_timeout: float | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_bytes = max_bytes if max_json_bytes is None else max_json_bytes
        self.max_in_flight = max_in_flight
        self.body_timeout = body_timeout
        self.in_flight = 0  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].rstrip("/").endswith(IMAGE_ROUTE_ENDINGS):
            limit, setting = self.max_bytes, "TRICKLAB_MAX_REQUEST_BYTES"
        else:
            limit, setting = self.max_json_bytes, "TRICKLAB_MAX_JSON_BYTES"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            refusal = _too_large(f"{int(declared):,} bytes", limit, setting)
            # Before any route runs, so in the error shape of the protocol the path speaks.
            key = "error" if scope["path"].startswith("/v2/") else "detail"
            await JSONResponse({key: refusal.detail}, refusal.status_code)(scope, receive, send)
            return
        deadline, timeout = None, scope.get(BODY_TIMEOUT, self.body_timeout)
        if timeout is not None:
            deadline = asyncio.get_running_loop().time() + timeout
        held = 0  # bytes of this body received so far, all charged to the budget
        complete = False

        # Errors are raised inside the app's own read, so the app's exception handling answers.
        async def limited_receive() -> Message:
            nonlocal held, complete
            if complete:  # the app now only listens for a disconnect: no deadline for that
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise self._too_slow(timeout) from None
            if message["type"] != "http.request":
                return message
            size = len(message.get("body", b""))
            if held + size > limit:
                raise _too_large(f"over {limit:,} bytes", limit, setting)
            if size:
                if self.in_flight + size > self.max_in_flight:
                    raise self._busy()
                self.in_flight += size
                held += size
            complete = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.in_flight -= held

    def _busy(self) -> HTTPException:
        return HTTPException(
            503,
            f"the service is already receiving {self.in_flight:,} bytes of requests (the limit "
            f"is {self.max_in_flight:,}, TRICKLAB_MAX_IN_FLIGHT_BYTES); retry shortly",
            headers={"Retry-After": "1"},
        )

    def _too_slow(self, timeout: float) -> HTTPException:
        # Left open, the connection would stay with this slow client (and count against
        # TRICKLAB_MAX_CONCURRENT_REQUESTS) while uvicorn drains the rest of its body.
        setting = "TRICKLAB_BODY_TIMEOUT_SECONDS"
        if timeout != self.body_timeout:
            setting = "the deadline for requests without a token"
        return HTTPException(
            408,
            f"the request body did not arrive within {timeout:g} seconds "
            f"({setting}); send it faster, or in smaller requests",
            headers={"Connection": "close"},
        )


def _too_large(size: str, limit: int, setting: str) -> HTTPException:
    return HTTPException(
        413, f"the request body is {size}; the limit is {limit:,} bytes ({setting})"
    )

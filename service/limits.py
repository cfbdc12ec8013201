"""Hard limits on request bodies, so that neither one request nor a flood of them can make the
service hold more memory than configured."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimits:
    """Two limits, each answered before the bytes are held:

    - one body over `max_bytes` gets 413: at once when its Content-Length says so, and for a
      chunked body as soon as the bytes read pass the limit;
    - all bodies being received at once may hold `max_in_flight` bytes together; a request
      that would pass that gets 503 with Retry-After, so a flood of uploads is turned away
      instead of buffered. A body counts from its declared length (or, when chunked, from
      what has arrived) until its response is sent.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_in_flight: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        held = int(declared) if declared.isdigit() else 0
        refusal = self._too_large(f"{held:,} bytes") if held > self.max_bytes else self._busy(held)
        if refusal is not None:
            await JSONResponse({"detail": refusal.detail}, refusal.status_code, refusal.headers)(
                scope, receive, send
            )
            return
        self.in_flight += held
        received = 0

        async def limited_receive() -> Message:
            nonlocal held, received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the app's own read, so the app's exception handling answers.
                raise self._too_large(f"over {self.max_bytes:,} bytes")
            if received > held:  # a chunked body: count what arrives
                if (refusal := self._busy(received - held)) is not None:
                    raise refusal
                self.in_flight += received - held
                held = received
            return message

        try:
            await self.app(scope, limited_receive, send)
        finally:
            self.in_flight -= held

    def _too_large(self, size: str) -> HTTPException:
        return HTTPException(
            413,
            f"the request body is {size}; the limit is {self.max_bytes:,} bytes "
            "(TRICKLAB_MAX_REQUEST_BYTES)",
        )

    def _busy(self, more: int) -> HTTPException | None:
        if self.in_flight + more <= self.max_in_flight or not more:
            return None
        return HTTPException(
            503,
            f"the service is already receiving {self.in_flight:,} bytes of requests (the limit "
            f"is {self.max_in_flight:,}, TRICKLAB_MAX_IN_FLIGHT_BYTES); retry shortly",
            headers={"Retry-After": "1"},
        )

"""A hard limit on request bodies, so no request can make the service buffer without end."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Answers 413 to a body over `max_bytes`: at once when its Content-Length says so, and
    for a chunked body as soon as the bytes read pass the limit, before reading the rest."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: str) -> str:
        return (
            f"the request body is {size}; the limit is {self.max_bytes:,} bytes "
            "(TRICKLAB_MAX_REQUEST_BYTES)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._message(f"{int(declared):,} bytes")}, 413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the app's own read, so the app's exception handling answers.
                raise HTTPException(413, self._message(f"over {self.max_bytes:,} bytes"))
            return message

        await self.app(scope, limited_receive, send)

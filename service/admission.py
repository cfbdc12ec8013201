"""Who may hold a slot: every request is identified before any of its body is read, and no one
caller can take the capacity that everyone else needs.

- A request to a route that needs a token (`/v1/…`, `/v2/…` but its health probes, `/metrics`,
  and every request with a body but the dashboard's sign-in) is answered 401 at once when its
  token is missing or wrong, with `Connection: close`: its body is never read, so a client
  without a token holds no slot while it sends it slowly, or never.
- The health probes are never counted or refused: a load balancer still sees the process
  answer while it is at its limits.
- Requests in progress at once: `TRICKLAB_MAX_CONCURRENT_REQUESTS` in all (beyond it, 503),
  `TRICKLAB_MAX_REQUESTS_PER_USER` for one user, or for one client address signed in as no one
  (beyond it, 429). So one caller holds at most a share, and the others keep theirs.
- Event streams last for as long as their job, so they are counted apart:
  `TRICKLAB_MAX_STREAMS_PER_USER` open at once per caller (beyond it, 429).

The caller found here is handed to the routes' dependencies in the request's scope, so a
token is looked up once per request.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import Caller
from service.state import app_state

CALLER = "tricklab.caller"  # the scope's key for the caller found here
PROBES = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
TOKEN_PREFIXES = ("/v1/", "/v2/", "/metrics")
SIGN_IN = "/signin"
SIGN_OUT = "/signout"  # reads no body; clears the cookie of a session already ended
BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})
STREAM_ENDING = "/events"
RETRY_AFTER = "1"


@dataclass(frozen=True)
class Limits:
    requests: int  # in progress at once, everyone's
    requests_per_caller: int
    streams_per_caller: int


class Admission:
    """The ASGI middleware that identifies each request and holds it to its caller's share."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.requests = 0  # one event loop: no lock needed
        self.by_caller: Counter[str] = Counter()
        self.streams: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in PROBES:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            caller: Caller | None = await app_state(scope["app"]).gate.caller(request)
        except HTTPException as refusal:
            if needs_token(scope):
                await answer(scope, receive, send, refusal)
                return
            caller = None  # a page that shows the sign-in form instead
        scope[CALLER] = caller
        key = caller.user_id if caller is not None else f"address {client(scope)}"
        if path.endswith(STREAM_ENDING):
            await self._stream(key, scope, receive, send)
        else:
            await self._request(key, scope, receive, send)

    async def _request(self, key: str, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.limits
        if self.requests >= limits.requests:
            refusal = HTTPException(
                503,
                f"the service has {self.requests} requests in progress, its limit "
                "(TRICKLAB_MAX_CONCURRENT_REQUESTS); retry shortly",
                headers={"Retry-After": RETRY_AFTER},
            )
            await answer(scope, receive, send, refusal)
            return
        if self.by_caller[key] >= limits.requests_per_caller:
            refusal = HTTPException(
                429,
                f"you have {self.by_caller[key]} requests in progress, the most one caller may "
                f"have at once (TRICKLAB_MAX_REQUESTS_PER_USER); wait for them to finish",
                headers={"Retry-After": RETRY_AFTER},
            )
            await answer(scope, receive, send, refusal)
            return
        self.requests += 1
        self.by_caller[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.requests -= 1
            _release(self.by_caller, key)

    async def _stream(self, key: str, scope: Scope, receive: Receive, send: Send) -> None:
        if self.streams[key] >= self.limits.streams_per_caller:
            refusal = HTTPException(
                429,
                f"you have {self.streams[key]} event streams open, the most one caller may have "
                "(TRICKLAB_MAX_STREAMS_PER_USER); close one, or poll GET /v1/jobs/{id}/metrics",
                headers={"Retry-After": RETRY_AFTER},
            )
            await answer(scope, receive, send, refusal)
            return
        self.streams[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            _release(self.streams, key)


def needs_token(scope: Scope) -> bool:
    """Whether a request without a valid caller is refused before it reaches its route: the
    API's routes, and any request with a body but the sign-in form's (and sign-out's)."""
    path: str = scope["path"]
    if path.startswith(TOKEN_PREFIXES):
        return True
    return scope["method"] not in BODILESS and path not in (SIGN_IN, SIGN_OUT)


def client(scope: Scope) -> str:
    address = scope.get("client")
    return address[0] if address else "unknown"


async def answer(scope: Scope, receive: Receive, send: Send, refusal: HTTPException) -> None:
    """The refusal, in the error shape of the protocol the path speaks. The connection closes
    after it when a body was announced: that body is never read, and a client could otherwise
    keep the connection by sending it slowly."""
    headers = dict(refusal.headers or {})
    request_headers = dict(scope["headers"])
    if request_headers.get(b"content-length", b"0") != b"0" or (
        b"transfer-encoding" in request_headers
    ):
        headers["Connection"] = "close"
    key = "error" if scope["path"].startswith("/v2/") else "detail"
    response = JSONResponse({key: refusal.detail}, refusal.status_code, headers=headers)
    await response(scope, receive, send)


def _release(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]  # a counter per caller ever seen would only grow

"""Who may hold a slot: every request is identified before any of its body is read, and no one
caller can take the capacity that everyone else needs.

- A request to a route that needs a token (`/v1/…`, `/v2/…` but its health probes, `/metrics`,
  and every request with a body but the dashboard's sign-in and sign-out) is answered 401 at
  once when its token is missing or wrong, with `Connection: close`: its body is never read, so
  a client without a token holds no slot while it sends it slowly, or never.
- The health probes are never counted or refused: a load balancer still sees the process
  answer while it is at its limits.
- Requests in progress at once: `TRICKLAB_MAX_CONCURRENT_REQUESTS` in all (beyond it, 503);
  `TRICKLAB_MAX_REQUESTS_PER_USER` for one user (beyond it, 429); the last quarter of all is
  kept for callers that hold fewer than FEW, so that a few busy users cannot fill it between
  them. Callers signed in as no one (the sign-in form, the pages that show it, /docs) share an
  eighth of all, and their bodies get ANONYMOUS_BODY_SECONDS to arrive.
- Event streams last for as long as their job, so they are counted apart:
  `TRICKLAB_MAX_STREAMS_PER_USER` open at once per caller (beyond it, 429).

The caller found here (or the 401 found instead) is handed to the routes' dependencies in the
request's scope, so a token is looked up once per request.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from fastapi import HTTPException, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import Caller
from service.limits import BODY_TIMEOUT
from service.state import app_state

log = logging.getLogger("tricklab.service")
CALLER = "tricklab.caller"  # the scope's key for the caller found here, or the 401 instead
PROBES = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
TOKEN_PREFIXES = ("/v1/", "/v2/", "/metrics")
SIGN_IN = "/signin"
SIGN_OUT = "/signout"  # reads no body; clears the cookie of a session already ended
BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})
STREAM_ENDING = "/events"
RETRY_AFTER = "1"
ANONYMOUS = "anonymous"  # the one key of every caller signed in as no one
ANONYMOUS_SHARE = 8  # they share 1/8 of all requests
ANONYMOUS_BODY_SECONDS = 5.0  # a sign-in form is a few hundred bytes
RESERVE = 4  # the last 1/4 of all requests is kept for callers that hold fewer than FEW
FEW = 8


@dataclass(frozen=True)
class Shares:
    requests: int  # in progress at once, everyone's
    requests_per_caller: int
    streams_per_caller: int


class Admission:
    """The ASGI middleware that identifies each request and holds it to its caller's share."""

    def __init__(self, app: ASGIApp, limits: Shares) -> None:
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
        try:
            found: Caller | HTTPException = await app_state(scope["app"]).gate.caller(
                Request(scope)
            )
        except HTTPException as unknown:
            found = unknown  # a page shows the sign-in form instead
        except SQLAlchemyError:
            log.exception("looking up a request's token failed")
            found = busy(503, "the database does not answer; retry shortly")
        if isinstance(found, HTTPException) and (needs_token(scope) or found.status_code >= 500):
            await answer(scope, receive, send, found)
            return
        scope[CALLER] = found
        if isinstance(found, Caller):
            key = found.user_id
        else:
            key = ANONYMOUS
            scope[BODY_TIMEOUT] = ANONYMOUS_BODY_SECONDS
        stream = path.endswith(STREAM_ENDING)
        refusal = self._stream_refusal(key) if stream else self._refusal(key)
        if refusal is not None:
            await answer(scope, receive, send, refusal)
            return
        counts = self.streams if stream else self.by_caller  # streams hold no request slot
        counts[key] += 1
        if not stream:
            self.requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            if not stream:
                self.requests -= 1
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]  # a counter per caller ever seen would only grow

    def _refusal(self, key: str) -> HTTPException | None:
        """Why a request of this caller may not start now, or None."""
        limits, held = self.limits, self.by_caller[key]
        if self.requests >= limits.requests:
            return busy(
                503,
                f"the service has {self.requests} requests in progress, its limit "
                "(TRICKLAB_MAX_CONCURRENT_REQUESTS); retry shortly",
            )
        if key == ANONYMOUS and held >= max(1, limits.requests // ANONYMOUS_SHARE):
            return busy(
                429,
                f"{held} requests signed in as no one are in progress, the most the service "
                "takes at once (an eighth of TRICKLAB_MAX_CONCURRENT_REQUESTS); retry shortly, "
                "or send an API token",
            )
        if held >= limits.requests_per_caller:
            return busy(
                429,
                f"you have {held} requests in progress, the most one caller may have at once "
                "(TRICKLAB_MAX_REQUESTS_PER_USER); wait for them to finish",
            )
        if self.requests >= limits.requests - limits.requests // RESERVE and held >= FEW:
            return busy(
                429,
                f"the service is busy ({self.requests} requests in progress) and keeps its "
                f"last slots for callers with fewer than {FEW}; you have {held}: wait for "
                "them to finish",
            )
        return None

    def _stream_refusal(self, key: str) -> HTTPException | None:
        if self.streams[key] >= self.limits.streams_per_caller:
            return busy(
                429,
                f"you have {self.streams[key]} event streams open, the most one caller may have "
                "(TRICKLAB_MAX_STREAMS_PER_USER); close one, or poll GET /v1/jobs/{id}/metrics",
            )
        return None


def busy(status: int, detail: str) -> HTTPException:
    return HTTPException(status, detail, headers={"Retry-After": RETRY_AFTER})


def needs_token(scope: Scope) -> bool:
    """Whether a request without a valid caller is refused before it reaches its route: the
    API's routes, and any request with a body but the sign-in form's (and sign-out's)."""
    path: str = scope["path"]
    if path.startswith(TOKEN_PREFIXES):
        return True
    return scope["method"] not in BODILESS and path not in (SIGN_IN, SIGN_OUT)


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

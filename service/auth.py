"""Who is asking: API tokens (`Authorization: Bearer <token>`), the admin's token at start-up,
and the mode without tokens, for one person on their own machine (TRICKLAB_AUTH=off)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from core.config import Settings, is_loopback
from jobqueue.accounts import Accounts, new_secret
from jobqueue.models import ADMIN, utcnow

log = logging.getLogger("tricklab.service")
# A token's answer is remembered this long, so that the hot predict path reads no database.
# A token revoked or a user disabled through another API process stops working within it
# (at once through this one).
CACHE_SECONDS = 5.0
CACHE_ENTRIES = 10_000
# The dashboard's session: the cookie holds the API token itself (HttpOnly, SameSite=Strict),
# so a browser needs no second kind of credential. A state-changing request that the cookie
# alone authenticates must also carry CSRF_HEADER, which a cross-site form cannot set, and an
# Origin (when sent) of this very host.
SESSION_COOKIE = "tricklab_session"
CSRF_HEADER = "X-Tricklab-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Caller:
    """The user a request acts for."""

    user_id: str
    name: str
    role: str
    quota_active_jobs: int | None  # None: TRICKLAB_QUOTA_ACTIVE_JOBS
    expires_at: datetime | None = None  # the token's

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def may_see(self, owner: str | None) -> bool:
        """Whether this caller may see and act on what `owner` owns."""
        return self.admin or owner == self.name


def unauthorized(message: str, error: str = "invalid_token") -> HTTPException:
    """401 with the challenge RFC 6750 asks for; without a token, no error code."""
    challenge = 'Bearer realm="tricklab"' + (f', error="{error}"' if error else "")
    return HTTPException(401, message, headers={"WWW-Authenticate": challenge})


class Gate:
    """Turns a request's bearer token into its Caller."""

    def __init__(self, accounts: Accounts, settings: Settings) -> None:
        self.accounts = accounts
        self.enabled = settings.auth == "on"
        self._known: dict[str, tuple[float, Caller]] = {}
        self._everyone: Caller | None = None
        if not self.enabled:
            admin = accounts.named(ADMIN)
            if admin is None:  # init_db creates it
                raise RuntimeError(f"the database has no user {ADMIN!r}")
            self._everyone = Caller(admin.id, admin.name, admin.role, admin.quota_active_jobs)

    async def caller(self, request: Request) -> Caller:
        if self._everyone is not None:
            return self._everyone
        header = request.headers.get("authorization")
        cookie = request.cookies.get(SESSION_COOKIE)
        if header is None and cookie:
            if refusal := cross_site(request):
                raise HTTPException(403, refusal)
            return await self.identify(cookie)
        return await self.identify(_bearer(header))

    async def identify(self, secret: str) -> Caller:
        """The Caller a token names; 401 if it is unknown, expired or revoked."""
        now = time.monotonic()
        known = self._known.get(secret)
        if known is None or known[0] < now:
            caller = await run_in_threadpool(self._identify, secret)
            if len(self._known) >= CACHE_ENTRIES:
                self._known.clear()
            self._known[secret] = (now + CACHE_SECONDS, caller)
        else:
            caller = known[1]
        if caller.expires_at is not None and caller.expires_at <= utcnow():
            raise unauthorized(f"the token expired at {caller.expires_at.isoformat()}")
        return caller

    def _identify(self, secret: str) -> Caller:
        found = self.accounts.identify(secret)
        if found is None:
            raise unauthorized("unknown token: check it, or ask an admin for a new one")
        user, token = found
        if token.revoked_at is not None:
            raise unauthorized(f"the token was revoked at {token.revoked_at.isoformat()}")
        if user.disabled_at is not None:
            raise unauthorized(f"the user {user.name} is disabled")
        return Caller(user.id, user.name, user.role, user.quota_active_jobs, token.expires_at)

    def forget(self) -> None:
        """Tokens or users changed: look every token up again."""
        self._known.clear()


def foreign_origin(request: Request) -> str | None:
    """Why a request that a web page of another site sent is refused, or None."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return f"requests from the web page at {origin!r} are refused: the session is this site's"
    return None


def cross_site(request: Request) -> str | None:
    """Why a cookie-authenticated request may have been forged by another site, or None."""
    if request.method in SAFE_METHODS:
        return None
    if refusal := foreign_origin(request):
        return refusal
    if request.headers.get(CSRF_HEADER) != "1":
        return (
            f"a {request.method} signed in by the session cookie must carry the header "
            f"'{CSRF_HEADER}: 1' (the dashboard sends it), or use 'Authorization: Bearer <token>'"
        )
    return None


def _bearer(header: str | None) -> str:
    if not header:
        raise unauthorized(
            "this route needs an API token: send the header 'Authorization: Bearer <token>' "
            "(the admin's token is in the file the API named when it started)",
            error="",
        )
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise unauthorized(
            f"the Authorization header must be 'Bearer <token>', not {scheme!r}",
            error="invalid_request",
        )
    return secret.strip()


def admin_token(settings: Settings, accounts: Accounts) -> str:
    """Register the admin's token (TRICKLAB_ADMIN_TOKEN, else the token file, made on the
    first start) and say, as Jupyter does, how to use it."""
    url = f"http://{_reachable(settings.host)}:{settings.port}/v1/me"
    if settings.admin_token is not None:
        accounts.register_admin_token(
            settings.admin_token.get_secret_value(), "TRICKLAB_ADMIN_TOKEN"
        )
        log.info(
            "the admin's token is TRICKLAB_ADMIN_TOKEN; try: "
            'curl -H "Authorization: Bearer $TRICKLAB_ADMIN_TOKEN" %s',
            url,
        )
        return "TRICKLAB_ADMIN_TOKEN"
    path = settings.token_file
    secret = _token_file(path)
    accounts.register_admin_token(secret, "admin-token file")
    log.info(
        'the admin\'s token is in %s; try: curl -H "Authorization: Bearer $(cat %s)" %s',
        path,
        path,
        url,
    )
    return str(path)


def _token_file(path: Path) -> str:
    """The token in `path`, written there (mode 0600) if the file does not exist; several
    API processes starting at once agree on one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("%s can be read by other users of this machine: chmod 600 it", path)
        for _ in range(50):  # another process may have just created it
            secret = path.read_text().strip()
            if secret:
                return secret
            time.sleep(0.1)
        raise RuntimeError(f"{path} is empty: delete it, and a new token is made") from None
    secret = new_secret()
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    return secret


def _reachable(host: str) -> str:
    """An address a client on this machine reaches `host` at."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class LoopbackOnly:
    """Without tokens the API trusts whoever reaches it, so only this machine may: a request
    whose Host is not a loopback name (DNS rebinding: a web page's own name pointed at
    127.0.0.1) or that comes from a web page of another origin (a cross-site POST) is 403."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            refusal = _foreign(headers)
            if refusal:
                await JSONResponse({"detail": refusal}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _foreign(headers: dict[str, Any]) -> str | None:
    host = urlsplit(f"//{headers.get('host', '')}").hostname or ""
    if not is_loopback(host):
        return (
            f"Host {headers.get('host', '')!r} is not this machine: with TRICKLAB_AUTH=off the "
            "API answers only requests to localhost or a loopback address"
        )
    origin = headers.get("origin")
    if origin is not None and not is_loopback(urlsplit(origin).hostname or ""):
        return (
            f"requests from the web page at {origin!r} are refused: with TRICKLAB_AUTH=off "
            "only pages of this machine may call the API"
        )
    return None

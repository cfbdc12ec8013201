"""Who is asking: API tokens (`Authorization: Bearer <token>`), the dashboard's sessions (a
cookie), the admin's token at start-up, and the mode without tokens, for one person on their
own machine (TRICKLAB_AUTH=off)."""

from __future__ import annotations

import fcntl
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from fastapi import HTTPException, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from core.config import Settings, is_loopback
from core.files import secret_file
from jobqueue.accounts import ADMIN_TOKEN_SOURCES, Accounts, NotTheAdmins, new_secret
from jobqueue.models import ADMIN, Token, User, utcnow
from service.freshness import CACHE_SECONDS
from service.metrics_token import MetricsToken

log = logging.getLogger("tricklab.service")
# A token's or session's answer, the caller or the 401, is remembered for CACHE_SECONDS, so
# that the hot predict path reads no database, and a client repeating a wrong token costs one
# query. A token or session revoked or a user disabled through another API process stops working
# within it (at once through this one). Each kind of answer keeps at most CACHE_ENTRIES, the
# oldest going first.
CACHE_ENTRIES = 10_000
# Threads that look up tokens and sessions at once: their own, so that a flood of unknown ones
# waits here and never takes the thread pool that every synchronous route runs in.
LOOKUP_THREADS = 8
# The dashboard's session: signing in with an API token opens a server-side session, and the
# cookie (HttpOnly, SameSite=Strict) holds only the random secret that names it, never the
# token. A state-changing request that the cookie alone authenticates must also carry
# CSRF_HEADER with the session's own CSRF token (the pages embed it; another site can neither
# read it nor set the header), and an Origin (when sent) of this very host.
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
    expires_at: datetime | None = None  # the token's, or the session's
    # Signed in by a session: its CSRF token (kept out of the repr, and so out of logs).
    csrf: str | None = field(default=None, repr=False)

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def may_see(self, owner: str | None) -> bool:
        """Whether this caller may see and act on what `owner` owns."""
        return self.admin or owner == self.name


# Who the scraper's token is, on the one route it reads: no user (no id a user could have).
SCRAPER = Caller("metrics-token", "metrics-token", "scraper", None)


def unauthorized(message: str, error: str = "invalid_token") -> HTTPException:
    """401 with the challenge RFC 6750 asks for; without a token, no error code."""
    challenge = 'Bearer realm="tricklab"' + (f', error="{error}"' if error else "")
    return HTTPException(401, message, headers={"WWW-Authenticate": challenge})


class Remembered:
    """One kind of lookup (a token's, a session's) and its answers, each remembered for
    CACHE_SECONDS: the callers found, and apart from them the 401s, so that a flood of
    unknown secrets cannot push the known ones out."""

    def __init__(self, look_up: Callable[[str], Caller], what: str, threads: Threads) -> None:
        self.look_up, self.what, self.threads = look_up, what, threads
        self.found: dict[str, tuple[float, Caller]] = {}
        self.refused: dict[str, tuple[float, HTTPException]] = {}

    async def __call__(self, secret: str) -> Caller:
        """The caller `secret` names; 401 if none, or once what it names has expired."""
        caller = _fresh(self.found, secret) or await self._look_up(secret)
        if caller.expires_at is not None and caller.expires_at <= utcnow():
            advice = ": sign in again" if self.what == "session" else ""
            raise unauthorized(
                f"the {self.what} expired at {caller.expires_at.isoformat()}{advice}"
            )
        return caller

    async def _look_up(self, secret: str) -> Caller:
        if refusal := _fresh(self.refused, secret):
            raise HTTPException(refusal.status_code, refusal.detail, refusal.headers)
        try:
            caller: Caller = await self.threads.run(self.look_up, secret)
        except HTTPException as error:
            if error.status_code == 401:
                _remember(self.refused, secret, error)
            raise
        _remember(self.found, secret, caller)
        return caller

    def forget_user(self, user_id: str) -> None:
        """Look every secret of the user's up again."""
        for secret in [s for s, (_, caller) in self.found.items() if caller.user_id == user_id]:
            del self.found[secret]

    def forget(self, secret: str | None = None) -> None:
        """Look `secret` (None: every one) up again."""
        for answers in (self.found, self.refused):
            if secret is None:
                answers.clear()
            else:
                answers.pop(secret, None)


class Threads:
    """The threads that read and write tokens and sessions, LOOKUP_THREADS at most at once."""

    def __init__(self) -> None:
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        if self._limiter is None:  # made in the event loop that uses it
            self._limiter = anyio.CapacityLimiter(LOOKUP_THREADS)
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)


class Gate:
    """Turns a request's bearer token, or its dashboard session's cookie, into its Caller."""

    def __init__(self, accounts: Accounts, settings: Settings) -> None:
        self.accounts = accounts
        self.enabled = settings.auth == "on"
        self.session_lifetime = timedelta(hours=settings.session_hours)
        self._threads = Threads()
        self._tokens = Remembered(self._identify, "token", self._threads)
        self._sessions = Remembered(self._session, "session", self._threads)
        self._everyone: Caller | None = None
        # The scraper's token (service.metrics_token): made at start, for Prometheus to read.
        path = settings.metrics_token_file
        self.scraper = MetricsToken.from_file(path) if path and self.enabled else None
        if not self.enabled:
            admin = accounts.named(ADMIN)
            if admin is None:  # init_db creates it
                raise RuntimeError(f"the database has no user {ADMIN!r}")
            self._everyone = Caller(admin.id, admin.name, admin.role, admin.quota_active_jobs)

    async def caller(self, request: Request) -> Caller:
        if self._everyone is not None:
            return self._everyone
        if self.scraper is not None and self.scraper.admits(request):
            return SCRAPER
        header = request.headers.get("authorization")
        cookie = request.cookies.get(SESSION_COOKIE)
        if header is None and cookie:
            # A state-changing request that only the cookie signs in may have been sent by
            # another site's page: its Origin is checked before the session is looked up, and
            # the session's own CSRF token after.
            forged = request.method not in SAFE_METHODS
            if forged and (refusal := foreign_origin(request)):
                raise HTTPException(403, refusal)
            caller = await self.session(cookie)
            if forged and (refusal := missing_csrf(request, caller.csrf)):
                raise HTTPException(403, refusal)
            return caller
        return await self.identify(_bearer(header))

    async def identify(self, secret: str) -> Caller:
        """The Caller a token names; 401 if it is unknown, expired or revoked."""
        return await self._tokens(secret)

    async def session(self, secret: str) -> Caller:
        """The Caller a session's secret names; 401 if it is unknown, expired or revoked, or
        the token it was opened with is."""
        return await self._sessions(secret)

    async def sign_in(self, token: str, replacing: str | None = None) -> tuple[str, Caller]:
        """Open a dashboard session with an API token (401 if the token is not valid): the
        session's secret, for the cookie, and its Caller. The session named `replacing` (the
        browser's cookie before) is revoked: it stops working at once in this process."""
        cookie, caller, ended = await self._threads.run(self._sign_in, token, replacing)
        if ended:  # the browser's own, or the user's oldest: whichever they are, they stop now
            self._sessions.forget_user(caller.user_id)
            if replacing:
                self._sessions.forget(replacing)  # it may have been another user's
        return cookie, caller

    async def sign_out(self, secret: str) -> None:
        """Revoke the session the secret names: it stops working at once in this process."""
        await self._threads.run(self.accounts.end_session, secret)
        self._sessions.forget(secret)

    def _identify(self, secret: str) -> Caller:
        user, token = self._valid(secret)
        return Caller(user.id, user.name, user.role, user.quota_active_jobs, token.expires_at)

    def _valid(self, secret: str) -> tuple[User, Token]:
        """The token this secret is, and its user; 401 unless both may be used."""
        found = self.accounts.identify(secret)
        if found is None:
            raise unauthorized("unknown token: check it, or ask an admin for a new one")
        _check(*found)
        return found

    def _session(self, secret: str) -> Caller:
        found = self.accounts.session(secret)
        if found is None:
            raise unauthorized("unknown session: sign in again")
        user, token, session = found
        if session.revoked_at is not None:
            raise unauthorized(f"the session ended at {session.revoked_at.isoformat()}")
        _check(user, token)
        quota = user.quota_active_jobs
        return Caller(user.id, user.name, user.role, quota, session.expires_at, session.csrf)

    def _sign_in(self, secret: str, replacing: str | None) -> tuple[str, Caller, int]:
        user, token = self._valid(secret)
        session, cookie, ended = self.accounts.open_session(
            user.id, token, self.session_lifetime, replacing
        )
        quota = user.quota_active_jobs
        caller = Caller(user.id, user.name, user.role, quota, session.expires_at, session.csrf)
        return cookie, caller, ended

    def forget(self) -> None:
        """Tokens, sessions or users changed: look every one up again."""
        self._tokens.forget()
        self._sessions.forget()


Answer = TypeVar("Answer")


def _fresh(answers: dict[str, tuple[float, Answer]], secret: str) -> Answer | None:
    """The answer remembered for `secret`, unless there is none or it is too old."""
    known = answers.get(secret)
    return known[1] if known is not None and known[0] >= time.monotonic() else None


def _remember(answers: dict[str, tuple[float, Answer]], secret: str, answer: Answer) -> None:
    answers.pop(secret, None)  # to the end: the oldest go first
    while len(answers) >= CACHE_ENTRIES:
        del answers[next(iter(answers))]
    answers[secret] = (time.monotonic() + CACHE_SECONDS, answer)


def _check(user: User, token: Token) -> None:
    """401 if the token is revoked or expired, or its user disabled."""
    if token.revoked_at is not None:
        raise unauthorized(f"the token was revoked at {token.revoked_at.isoformat()}")
    if token.expires_at is not None and token.expires_at <= utcnow():
        raise unauthorized(f"the token expired at {token.expires_at.isoformat()}")
    if user.disabled_at is not None:
        raise unauthorized(f"the user {user.name} is disabled")


def foreign_origin(request: Request) -> str | None:
    """Why a request that a web page of another site sent is refused, or None."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return f"requests from the web page at {origin!r} are refused: the session is this site's"
    return None


def missing_csrf(request: Request, csrf: str | None) -> str | None:
    """Why a state-changing request signed in by a session whose CSRF token is `csrf` may have
    been forged by another site, or None."""
    sent = request.headers.get(CSRF_HEADER, "")
    if not csrf or not hmac.compare_digest(sent.encode(), csrf.encode()):
        return (
            f"a {request.method} signed in by the session cookie must carry the header "
            f"{CSRF_HEADER} with that session's CSRF token (the dashboard's pages send it), "
            "or use 'Authorization: Bearer <token>'"
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
    first start) and say, as Jupyter does, how to use it. Registering it revokes the admin's
    token from the other source or an earlier value (accounts.register_admin_token)."""
    url = f"http://{_reachable(settings.host)}:{settings.port}/v1/me"
    try:
        return _admin_token(settings, accounts, url)
    except NotTheAdmins as error:  # the start stops, saying which source, never the token
        raise RuntimeError(str(error)) from None


def _admin_token(settings: Settings, accounts: Accounts, url: str) -> str:
    variable, file = ADMIN_TOKEN_SOURCES
    if settings.admin_token is not None:
        token = accounts.register_admin_token(settings.admin_token.get_secret_value(), variable)
        if token.revoked_at is not None:
            log.error(
                "TRICKLAB_ADMIN_TOKEN holds a token that was revoked at %s: set a new value",
                token.revoked_at.isoformat(),
            )
        log.info(
            "the admin's token is TRICKLAB_ADMIN_TOKEN; try: "
            'curl -H "Authorization: Bearer $TRICKLAB_ADMIN_TOKEN" %s',
            url,
        )
        return variable
    path = settings.token_file
    # Made (mode 0600) on the first start; as short a token as the variable may hold is refused.
    secret, _ = secret_file(path, new_secret, min_length=32, setting="TRICKLAB_ADMIN_TOKEN_FILE")
    if accounts.register_admin_token(secret, file).revoked_at is not None:
        # Revoked (by TRICKLAB_ADMIN_TOKEN, or by hand): the file gets a new token, as on the
        # first start.
        accounts.register_admin_token(_renew_token_file(path, secret), file)
    log.info(
        'the admin\'s token is in %s; try: curl -H "Authorization: Bearer $(cat %s)" %s',
        path,
        path,
        url,
    )
    return str(path)


def _renew_token_file(path: Path, revoked: str) -> str:
    """Replace the revoked token in `path` with a new one (mode 0600) and return it; several
    API processes doing so at once agree on one: the first replaces it, the others read it."""
    with os.fdopen(os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        current = path.read_text().strip()
        if current != revoked:
            return current
        secret = new_secret()
        fresh = path.with_name(f".{path.name}.new")
        descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secret + "\n")
        os.replace(fresh, path)
    log.warning("the admin's token in %s was revoked: a new one replaces it there", path)
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

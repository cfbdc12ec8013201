"""Users, their API tokens, their dashboard sessions and their quotas, as verbs. A token's
secret is random (32 bytes) and shown once, and so is a session's (to the browser, in its
cookie): only their SHA-256 is stored, so the database never holds a usable credential."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobqueue import counts
from jobqueue.db import Verbs
from jobqueue.models import ADMIN, BrowserSession, Token, User, utcnow

ROLES = ("user", "admin")
# Secret scanners (and people) recognise a tricklab token by its prefix.
TOKEN_PREFIX = "tl_"
# Where the API finds the admin's token at start-up, each the name (and the startup_source) of
# the token registered from it. Whichever it finds is the admin's only such token: the others
# registered from these sources are revoked; a token merely named so through the API is not.
ADMIN_TOKEN_SOURCES = ("TRICKLAB_ADMIN_TOKEN", "admin-token file")
# A user's live dashboard sessions: opening one more revokes the oldest beyond this. A user's
# ended (revoked or expired) ones are kept as many, to say why a cookie no longer works, and
# every one ended more than SESSION_GRACE ago is deleted.
SESSIONS_PER_USER = 20
SESSION_GRACE = timedelta(days=1)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class NameTaken(Exception):
    """A user with that name exists (names are never reused: they own jobs)."""


class NotTheAdmins(Exception):
    """A start-up source holds the token of a user other than the admin."""


class LastAdmin(Exception):
    """The change would leave no enabled admin."""


class QuotaExceeded(Exception):
    """The owner's queued and running jobs would pass their quota."""

    def __init__(self, owner: str, quota: int, active: int, adding: int) -> None:
        jobs = "a job" if adding == 1 else f"{adding} jobs"
        super().__init__(
            f"{owner} has {active} active (queued or running) jobs and a quota of {quota}: "
            f"{jobs} more would pass it; wait for some to end or cancel some (the quota is "
            "the user's quota_active_jobs, else TRICKLAB_QUOTA_ACTIVE_JOBS)"
        )
        self.quota, self.active = quota, active


@dataclass(frozen=True)
class Quota:
    """At most `limit` active (queued or running) jobs an owner."""

    limit: int

    def admit(self, session: Session, owner: str, adding: int) -> None:
        """In the transaction that adds `adding` jobs of the owner's: QuotaExceeded if they
        would pass the limit. PostgreSQL: one owner's submissions take turns, so that two
        cannot both fit; each one's jobs and their job_counts rows are committed before the
        next counts."""
        session.execute(select(User.id).where(User.name == owner).with_for_update())
        now = counts.active(session, owner)
        if now + adding > self.limit:
            raise QuotaExceeded(owner, self.limit, now, adding)


class Accounts(Verbs):
    def create_user(
        self, name: str, role: str, quota_active_jobs: int | None
    ) -> tuple[User, Token, str]:
        """A new user with a first token: (user, token, the token's secret)."""
        user = User(
            id=uuid.uuid4().hex,
            name=name,
            role=role,
            quota_active_jobs=quota_active_jobs,
            created_at=utcnow(),
        )
        secret = new_secret()
        token = _token(user.id, "first token", secret, None)
        try:
            with self._write.begin() as session:
                if session.scalar(select(User.id).where(User.name == name)):
                    raise NameTaken(name)
                session.add(user)
                session.flush()  # the user before its token (PostgreSQL checks the key)
                session.add(token)
        except IntegrityError:  # a concurrent creation of the same name won
            raise NameTaken(name) from None
        return user, token, secret

    def users(self) -> Sequence[User]:
        with self._read() as session:
            return session.scalars(select(User).order_by(User.created_at, User.id)).all()

    def user(self, user_id: str) -> User | None:
        with self._read() as session:
            return session.get(User, user_id)

    def named(self, name: str) -> User | None:
        with self._read() as session:
            return session.scalars(select(User).where(User.name == name)).one_or_none()

    def update_user(self, user_id: str, **changes: Any) -> User | None:
        """Change role, quota or whether the user is disabled (`disabled`: bool). Refuses
        (LastAdmin) to disable or demote the last enabled admin. None: no such user."""
        with self._write.begin() as session:
            user = session.get(User, user_id)
            if user is None:
                return None
            if "disabled" in changes:
                disabled = changes.pop("disabled")
                if disabled:
                    user.disabled_at = user.disabled_at or utcnow()
                    _end_sessions(session, BrowserSession.user_id == user.id)
                else:
                    user.disabled_at = None
            for field, value in changes.items():
                setattr(user, field, value)
            session.flush()
            admins = session.scalar(
                select(func.count())
                .select_from(User)
                .where(User.role == "admin", User.disabled_at.is_(None))
            )
            if not admins:
                raise LastAdmin(
                    f"{user.name} is the last enabled admin: make another user admin first"
                )
            return user

    def issue(self, user_id: str, name: str, expires_at: datetime | None) -> tuple[Token, str]:
        """A new token for the user: (token, its secret)."""
        secret = new_secret()
        token = _token(user_id, name, secret, expires_at)
        with self._write.begin() as session:
            session.add(token)
        return token, secret

    def tokens(self, user_id: str) -> Sequence[Token]:
        with self._read() as session:
            return session.scalars(
                select(Token).where(Token.user_id == user_id).order_by(Token.created_at, Token.id)
            ).all()

    def revoke(self, user_id: str, token_id: str) -> Token | None:
        """Revoke one of the user's tokens (again: harmless). None: the user has no such token."""
        with self._write.begin() as session:
            token = session.get(Token, token_id)
            if token is None or token.user_id != user_id:
                return None
            if token.revoked_at is None:
                token.revoked_at = utcnow()
            return token

    def identify(self, secret: str) -> tuple[User, Token] | None:
        """The user and token this secret is, whether or not the token is still valid."""
        with self._read() as session:
            found = session.execute(
                select(User, Token)
                .join(Token, Token.user_id == User.id)
                .where(Token.sha256 == digest(secret))
            ).first()
        return (found[0], found[1]) if found else None

    def register_admin_token(self, secret: str, source: str) -> Token:
        """Make `secret` a token of the admin user named `ADMIN`, registered from `source` (one
        of ADMIN_TOKEN_SOURCES), and revoke every other token registered from those sources,
        with the sessions opened by them: a new value, or a switch between the variable and the
        file, ends the old token. A secret already registered stays as it is; a revoked one
        stays revoked, and then nothing else changes (the caller makes a new one). NotTheAdmins
        if the secret is another user's token: nothing changes."""
        try:
            with self._write.begin() as session:
                admin = session.scalars(select(User).where(User.name == ADMIN)).one()
                token = _by_secret(session, secret)
                if token is not None and token.user_id != admin.id:
                    raise NotTheAdmins(
                        f"{source} holds the token of another user, not {ADMIN!r}'s: give the "
                        f"admin a token of its own there (e.g. openssl rand -hex 32)"
                    )
                if token is not None and token.revoked_at is not None:
                    return token
                if token is None:
                    token = _token(admin.id, source, secret, None)
                    session.add(token)
                token.startup_source = source
                session.flush()
                old = select(Token.id).where(
                    Token.user_id == admin.id,
                    Token.startup_source.is_not(None),
                    Token.id != token.id,
                    Token.revoked_at.is_(None),
                )
                _end_sessions(session, BrowserSession.token_id.in_(old))
                session.execute(
                    update(Token).where(Token.id.in_(old)).values(revoked_at=utcnow()),
                    execution_options={"synchronize_session": False},
                )
                return token
        except IntegrityError:  # another API process registered it at the same moment
            with self._read() as session:
                registered = _by_secret(session, secret)
            if registered is None:
                raise
            return registered

    # -- dashboard sessions -------------------------------------------------------------------

    def open_session(
        self, user_id: str, token: Token, lifetime: timedelta, replacing: str | None = None
    ) -> tuple[BrowserSession, str, int]:
        """A new session of the user, signed in with `token`, lasting `lifetime` (at most until
        the token expires): (session, the secret that names it, how many of the user's other
        sessions ended for it). The session whose secret is `replacing` (the one the browser
        signed in with before) is revoked, and so are the user's oldest live ones beyond
        SESSIONS_PER_USER (see _prune)."""
        now = utcnow()
        expires = now + lifetime
        if token.expires_at is not None:
            expires = min(expires, token.expires_at)
        secret = secrets.token_urlsafe(32)
        row = BrowserSession(
            id=uuid.uuid4().hex,
            user_id=user_id,
            token_id=token.id,
            sha256=digest(secret),
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=expires,
        )
        with self._write.begin() as session:
            ended = 0
            if replacing:
                ended = _end_sessions(session, BrowserSession.sha256 == digest(replacing))
            ended += _prune(session, user_id, now)
            session.add(row)
        return row, secret, ended

    def session(self, secret: str) -> tuple[User, Token, BrowserSession] | None:
        """The user, token and session this secret names, whether or not all are still valid."""
        with self._read() as session:
            found = session.execute(
                select(User, Token, BrowserSession)
                .join(Token, Token.id == BrowserSession.token_id)
                .join(User, User.id == BrowserSession.user_id)
                .where(BrowserSession.sha256 == digest(secret))
            ).first()
        return (found[0], found[1], found[2]) if found else None

    def end_session(self, secret: str) -> bool:
        """Revoke the session this secret names (signing out); False: no session is live."""
        with self._write.begin() as session:
            return _end_sessions(session, BrowserSession.sha256 == digest(secret)) > 0


def _end_sessions(session: Session, which: Any) -> int:
    """Revoke the live sessions that `which` selects; how many."""
    ended = session.execute(
        update(BrowserSession)
        .where(which, BrowserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(ended, "rowcount", 0))


def _prune(session: Session, user_id: str, now: datetime) -> int:
    """Before the user opens a session: revoke their oldest live ones beyond
    SESSIONS_PER_USER - 1, delete their ended ones beyond SESSIONS_PER_USER, and everyone's
    ended more than SESSION_GRACE ago. So a token's holder, signing in without end, keeps a
    bounded number of rows; each query goes through an index (user, expiry, revocation). How
    many of the user's live sessions it revoked."""
    mine = select(BrowserSession.id).where(BrowserSession.user_id == user_id)
    newest_first = (BrowserSession.created_at.desc(), BrowserSession.id.desc())
    live = mine.where(BrowserSession.revoked_at.is_(None), BrowserSession.expires_at > now)
    surplus = session.scalars(live.order_by(*newest_first).offset(SESSIONS_PER_USER - 1)).all()
    revoked = _end_sessions(session, BrowserSession.id.in_(surplus)) if surplus else 0
    ended = mine.where(
        or_(BrowserSession.revoked_at.is_not(None), BrowserSession.expires_at <= now)
    )
    stale = session.scalars(ended.order_by(*newest_first).offset(SESSIONS_PER_USER)).all()
    if stale:
        session.execute(delete(BrowserSession).where(BrowserSession.id.in_(stale)))
    cutoff = now - SESSION_GRACE
    session.execute(delete(BrowserSession).where(BrowserSession.expires_at < cutoff))
    session.execute(delete(BrowserSession).where(BrowserSession.revoked_at < cutoff))
    return revoked


def _by_secret(session: Session, secret: str) -> Token | None:
    return session.scalars(select(Token).where(Token.sha256 == digest(secret))).one_or_none()


def _token(user_id: str, name: str, secret: str, expires_at: datetime | None) -> Token:
    return Token(
        id=uuid.uuid4().hex,
        user_id=user_id,
        name=name,
        sha256=digest(secret),
        created_at=utcnow(),
        expires_at=expires_at,
    )

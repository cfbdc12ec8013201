"""Users and their API tokens: admins manage everyone's; every user, their own (`/v1/me`)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Response

from jobqueue.accounts import Accounts, LastAdmin, NameTaken
from jobqueue.models import User, utcnow
from service.auth import Gate
from service.deps import (
    ID_PATTERN,
    AccountsDep,
    AdminDep,
    CallerDep,
    CountsDep,
    GateDep,
    SettingsDep,
    get_caller,
    no_unknown_query,
)
from service.errors import BODY, errors
from service.schemas import (
    Me,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenRead,
    UserCreate,
    UserCreated,
    UserList,
    UserRead,
    UserUpdate,
)

log = logging.getLogger("tricklab.service")
router = APIRouter(tags=["users"], dependencies=[Depends(get_caller), Depends(no_unknown_query)])
UserId = Annotated[str, Path(pattern=ID_PATTERN, description="A user's id, 32 hex digits.")]
TokenId = Annotated[str, Path(pattern=ID_PATTERN, description="A token's id, 32 hex digits.")]
ADMIN_ONLY = errors(403, 404, 422)


@router.post(
    "/v1/users",
    name="users-create",
    status_code=201,
    response_model=UserCreated,
    responses=errors(403, *BODY, conflict="A user with that name exists."),
)
def create_user(
    user: UserCreate, accounts: AccountsDep, admin: AdminDep, response: Response
) -> UserCreated:
    """Add a user, with a first token (shown in the answer, and never again)."""
    try:
        row, token, secret = accounts.create_user(user.name, user.role, user.quota_active_jobs)
    except NameTaken:
        raise HTTPException(
            409, f"a user named {user.name!r} exists (names are never reused); choose another"
        ) from None
    log.info("user=%s created role=%s by=%s", row.name, row.role, admin.name)
    response.headers["Location"] = f"/v1/users/{row.id}"
    return UserCreated(**UserRead.model_validate(row).model_dump(), token=secret, token_id=token.id)


@router.get("/v1/users", name="users-list", response_model=UserList, responses=ADMIN_ONLY)
def list_users(accounts: AccountsDep, _: AdminDep) -> UserList:
    """Every user, oldest first, disabled ones included."""
    return UserList(users=[UserRead.model_validate(user) for user in accounts.users()])


@router.get("/v1/users/{user_id}", name="users-get", response_model=UserRead, responses=ADMIN_ONLY)
def get_user(user_id: UserId, accounts: AccountsDep, _: AdminDep) -> UserRead:
    return UserRead.model_validate(_user(accounts, user_id))


@router.patch(
    "/v1/users/{user_id}",
    name="users-update",
    response_model=UserRead,
    responses=errors(403, 404, *BODY, conflict="It would leave no enabled admin."),
)
def update_user(
    user_id: UserId, update: UserUpdate, accounts: AccountsDep, admin: AdminDep, gate: GateDep
) -> UserRead:
    """Change a user's role or quota, or disable them (their tokens stop working, and their
    dashboard sessions are revoked) or enable them again (their tokens work again; a revoked
    session stays revoked)."""
    changes = update.model_dump(exclude_unset=True)
    for field in ("role", "disabled"):
        if field in changes and changes[field] is None:
            del changes[field]  # null: unchanged
    try:
        row = accounts.update_user(user_id, **changes)
    except LastAdmin as error:
        raise HTTPException(409, str(error)) from None
    if row is None:
        raise HTTPException(404, _no_user(user_id))
    gate.forget()
    log.info("user=%s changed %s by=%s", row.name, changes, admin.name)
    return UserRead.model_validate(row)


@router.get(
    "/v1/users/{user_id}/tokens",
    name="users-tokens-list",
    response_model=TokenList,
    responses=ADMIN_ONLY,
)
def list_user_tokens(user_id: UserId, accounts: AccountsDep, _: AdminDep) -> TokenList:
    """The user's tokens, without their secrets."""
    return _tokens(accounts, _user(accounts, user_id))


@router.post(
    "/v1/users/{user_id}/tokens",
    name="users-tokens-create",
    status_code=201,
    response_model=TokenCreated,
    responses=errors(403, 404, *BODY),
)
def create_user_token(
    user_id: UserId, token: TokenCreate, accounts: AccountsDep, _: AdminDep
) -> TokenCreated:
    """Issue the user a new token (shown in the answer, and never again)."""
    return _issue(accounts, _user(accounts, user_id), token)


@router.delete(
    "/v1/users/{user_id}/tokens/{token_id}",
    name="users-tokens-revoke",
    response_model=TokenRead,
    responses=ADMIN_ONLY,
)
def revoke_user_token(
    user_id: UserId, token_id: TokenId, accounts: AccountsDep, _: AdminDep, gate: GateDep
) -> TokenRead:
    """Revoke one of the user's tokens: it stops working at once (within 5 seconds on other
    API processes). Revoking again is harmless."""
    return _revoke(accounts, _user(accounts, user_id), token_id, gate)


@router.get("/v1/me", name="me", response_model=Me, responses=errors(422))
def me(caller: CallerDep, accounts: AccountsDep, counts: CountsDep, settings: SettingsDep) -> Me:
    """Who your token says you are, and your jobs against your quota."""
    user = _user(accounts, caller.user_id)
    return Me(
        **UserRead.model_validate(user).model_dump(),
        active_jobs=counts.active(user.name),
        quota=user.quota_active_jobs or settings.quota_active_jobs,
    )


@router.get("/v1/me/tokens", name="me-tokens-list", response_model=TokenList, responses=errors(422))
def list_my_tokens(caller: CallerDep, accounts: AccountsDep) -> TokenList:
    """Your tokens, without their secrets."""
    return _tokens(accounts, _user(accounts, caller.user_id))


@router.post(
    "/v1/me/tokens",
    name="me-tokens-create",
    status_code=201,
    response_model=TokenCreated,
    responses=errors(*BODY),
)
def create_my_token(caller: CallerDep, token: TokenCreate, accounts: AccountsDep) -> TokenCreated:
    """A new token of yours, e.g. one per machine (shown in the answer, and never again)."""
    return _issue(accounts, _user(accounts, caller.user_id), token)


@router.delete(
    "/v1/me/tokens/{token_id}",
    name="me-tokens-revoke",
    response_model=TokenRead,
    responses=errors(404, 422),
)
def revoke_my_token(
    token_id: TokenId, caller: CallerDep, accounts: AccountsDep, gate: GateDep
) -> TokenRead:
    """Revoke one of your tokens, the one you are using included."""
    return _revoke(accounts, _user(accounts, caller.user_id), token_id, gate)


def _user(accounts: Accounts, user_id: str) -> User:
    user = accounts.user(user_id)
    if user is None:
        raise HTTPException(404, _no_user(user_id))
    return user


def _no_user(user_id: str) -> str:
    return f"no user with id {user_id!r}"


def _tokens(accounts: Accounts, user: User) -> TokenList:
    return TokenList(tokens=[TokenRead.model_validate(t) for t in accounts.tokens(user.id)])


def _issue(accounts: Accounts, user: User, request: TokenCreate) -> TokenCreated:
    expires = (
        utcnow() + timedelta(days=request.expires_in_days) if request.expires_in_days else None
    )
    token, secret = accounts.issue(user.id, request.name, expires)
    log.info("user=%s token=%s issued", user.name, token.id)
    return TokenCreated(**TokenRead.model_validate(token).model_dump(), token=secret)


def _revoke(accounts: Accounts, user: User, token_id: str, gate: Gate) -> TokenRead:
    token = accounts.revoke(user.id, token_id)
    if token is None:
        raise HTTPException(404, f"{user.name} has no token with id {token_id!r}")
    gate.forget()
    log.info("user=%s token=%s revoked", user.name, token.id)
    return TokenRead.model_validate(token)

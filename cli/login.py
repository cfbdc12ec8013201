"""`tricklab login`: check a token with a server and save both for later commands."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cli import show
from cli.client import USAGE, Api, Failure
from cli.common import Session
from cli.config import Connection, resolve, save_login


def login(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="The tricklab API.", show_default=False)] = None,
    token: Annotated[
        str | None,
        typer.Option(help="Your API token (asked for if not given).", show_default=False),
    ] = None,
) -> None:
    """Check a token with the server and save both, for you alone (mode 0600), so that later
    commands need neither."""
    session: Session = ctx.obj
    target = resolve(url or session.url, None).url
    secret = token or session.token
    if not secret:
        if not sys.stdin.isatty():
            raise Failure("no token: give --token or TRICKLAB_TOKEN", USAGE)
        secret = typer.prompt("API token", hide_input=True).strip()
    client = Api(Connection(target, secret, "--token"))
    me = client.get("/v1/me")
    path = save_login(target, secret)
    print(f"logged in to {target} as {show.me(me)}; saved in {path}")

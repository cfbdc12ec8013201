"""`tricklab`: train, follow, compare and use tricklab models from a shell.

Output is for people on a terminal (Rich tables, live progress) and for scripts everywhere
else: `-o json` prints the API's own objects, unchanged; a command that creates something
prints just its id when its output is not a terminal; the exit status says how it went."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cli import show
from cli.client import USAGE, Api, Failure
from cli.common import (
    EXIT_CODES,
    JobId,
    OutputOption,
    Session,
    api,
    emit,
)
from cli.config import Connection, resolve, save_login
from cli.jobs import jobs
from cli.studies import studies

CONNECTING = (
    "The server: --url, TRICKLAB_URL, the URL saved by `tricklab login`, or "
    "http://127.0.0.1:8000. The token: --token, TRICKLAB_TOKEN, the one saved by `tricklab "
    "login` for that URL, or, for a service on this machine, the admin's (TRICKLAB_ADMIN_TOKEN "
    "or the file the service wrote, var/admin-token by default)."
)


app = typer.Typer(
    name="tricklab",
    help="Train small image classifiers with the tricks you choose, follow them, compare them "
    "and use them, through a tricklab service. " + CONNECTING,
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(jobs, name="jobs")
app.add_typer(studies, name="studies")


@app.callback()
def connect(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="TRICKLAB_URL",
            help="The tricklab API, e.g. http://127.0.0.1:8000 (the default).",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="TRICKLAB_TOKEN", help="An API token.", show_default=False),
    ] = None,
) -> None:
    ctx.obj = Session(url, token)


@app.command("predict")
def predict(
    ctx: typer.Context,
    job: JobId,
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Images: PNG, JPEG, WebP or GIF, any size.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    output: OutputOption = None,
) -> None:
    """Classify images with a succeeded job's model: the class and its probability per file."""
    uploads = [
        ("file", (path.name, path.read_bytes(), "application/octet-stream")) for path in files
    ]
    answer = api(ctx).post(f"/v1/jobs/{job}/predict", files=uploads)
    emit(answer, output, lambda a: show.predictions([str(f) for f in files], a))


@app.command("tricks")
def tricks(ctx: typer.Context, output: OutputOption = None) -> None:
    """The trick catalogue: each trick's parameters, defaults, limits and what it does."""
    emit(api(ctx).get("/v1/tricks"), output, show.tricks)


@app.command("login")
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


def main() -> None:
    """The console script: expected failures end with a message and their exit status,
    never a traceback."""
    if hasattr(signal, "SIGPIPE"):
        # `tricklab jobs list | head -3`: end quietly when the reader stops, as Unix tools do.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        app()
    except Failure as failure:
        console = Console(stderr=True, highlight=False)
        console.print(f"[bold red]tricklab:[/] {escape(failure.message)}", soft_wrap=True)
        sys.exit(failure.code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

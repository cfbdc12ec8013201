"""`tricklab`: train, follow, compare and use tricklab models from a shell.

Output is for people on a terminal (Rich tables, live progress) and for scripts everywhere
else: `-o json` prints the API's own objects, unchanged; a command that creates something
prints just its id when its output is not a terminal; the exit status says how it went.

This module only assembles the app: each noun's commands live in their own module (jobs,
studies, searches, predict, tricks, login), and what they share in cli/common.py."""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cli.client import Failure
from cli.common import EXIT_CODES, Session
from cli.jobs import jobs
from cli.login import login
from cli.predict import predict
from cli.searches import searches
from cli.studies import studies
from cli.tricks import tricks

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
app.add_typer(searches, name="search")
app.command("predict")(predict)
app.command("tricks")(tricks)
app.command("login")(login)


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

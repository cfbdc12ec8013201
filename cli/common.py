"""What every command module shares: the sub-app factory and its exit-status epilog, the
connection, `-o` and printing, following a job or study, and the job spec's flags (which
`jobs submit` and `studies create` both take)."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from cli.client import JOB_FAILED, NOT_FOUND, OK, UNREACHABLE, USAGE, Api, Failure
from cli.config import resolve
from cli.spec import FlagError, parse_hidden_units, parse_trick, read_json_file

EXIT_CODES = f"""**Exit status**

* {OK}: done; the job, study or search succeeded
* {JOB_FAILED}: the job, study or search waited for (--wait, watch) failed or was cancelled
* {USAGE}: a usage error, or a request the API refused (it says which field and why)
* {UNREACHABLE}: the server is unreachable, or it does not accept the token
* {NOT_FOUND}: no such job, study or search (or not yours), or a short id naming none or
  several
"""


def sub_app(help: str) -> typer.Typer:
    return typer.Typer(
        help=help,
        epilog=EXIT_CODES,
        no_args_is_help=True,
        rich_markup_mode="markdown",
        context_settings={"help_option_names": ["-h", "--help"]},
    )


class Output(StrEnum):
    table = "table"
    json = "json"


OutputOption = Annotated[
    Output | None,
    typer.Option(
        "-o",
        "--output",
        help="table: for people; json: the API's own object, for scripts. Default: a table, "
        "or only the id of what was created when the output is not a terminal.",
        show_default=False,
    ),
]
JobId = Annotated[
    str,
    typer.Argument(
        metavar="JOB",
        help="A job's id, or its first 4 or more hex digits (the 8 that tables show) when no "
        "other job you can see starts with them.",
        show_default=False,
    ),
]
SaveOption = Annotated[
    Path | None,
    typer.Option(
        "-O", "--save-to", metavar="FILE", help="Where to save it; - for standard output."
    ),
]


class Session:
    """The connection options; the client is made when a command first needs it."""

    def __init__(self, url: str | None, token: str | None) -> None:
        self.url, self.token = url, token
        self._api: Api | None = None

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(resolve(self.url, self.token))
        return self._api


def api(ctx: typer.Context) -> Api:
    session: Session = ctx.obj
    return session.api


# ---- printing ------------------------------------------------------------------------------


def stdout_console() -> Console:
    # Off a terminal Rich would wrap at 80 columns; a file or pipe has room for whole ids.
    width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
    return Console(width=width, highlight=False)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def emit(document: Any, output: Output | None, render: Any) -> None:
    """The API's object as JSON, or drawn by `render` for people."""
    if output == Output.json:
        print_json(document)
    else:
        stdout_console().print(render(document))


def emit_created(document: dict[str, Any], output: Output | None, render: Any) -> None:
    """A new job or study: its id alone when a script reads the output (`id=$(...)`)."""
    if output is None and not sys.stdout.isatty():
        print(document["id"], flush=True)
    else:
        emit(document, output, render)


# ---- following -----------------------------------------------------------------------------


def following(watch: Any, *args: Any) -> dict[str, Any]:
    """Follow a job or study; Ctrl-C ends only the following (status 130, as shells report an
    interrupted command), not the job, and is not taken for a failed job (1)."""
    try:
        return dict(watch(*args))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise typer.Exit(130) from None


def following_created(
    watch: Any, client: Api, ident: str, output: Output | None, announce: str
) -> dict[str, Any]:
    """`--wait`: follow what was just created, after its id (alone when a script reads it, else
    after `announce`) unless `-o` asks for the final document instead."""
    if output is None:
        print(f"{announce} {ident}" if sys.stdout.isatty() else ident, flush=True)
    # The progress goes beside the output, so that stdout holds only the id or the document.
    return following(watch, client, ident, sys.stderr)


def watch_to_end(watch: Any, client: Api, ident: str, output: Output | None) -> NoReturn:
    """`jobs watch` and `studies watch`: the progress on stdout, unless stdout is for the
    final JSON; the exit status says how it ended."""
    final = following(watch, client, ident, sys.stderr if output == Output.json else sys.stdout)
    if output == Output.json:
        print_json(final)
    raise exit_for(final["status"])


def exit_for(status: str) -> typer.Exit:
    return typer.Exit(OK if status == "succeeded" else JOB_FAILED)


# ---- the job spec's flags ------------------------------------------------------------------


def check_tricks(values: list[str] | None) -> list[str] | None:
    for value in values or []:
        try:
            parse_trick(value)
        except FlagError as error:
            raise typer.BadParameter(str(error)) from None
    return values


def check_hidden_units(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_hidden_units(value)
        except FlagError as error:
            raise typer.BadParameter(str(error)) from None
    return value


def read_file_option(path: Path | None) -> dict[str, Any]:
    try:
        return read_json_file(path) if path is not None else {}
    except FlagError as error:
        raise Failure(str(error), USAGE) from None


TrickOption = Annotated[
    list[str] | None,
    typer.Option(
        "--trick",
        metavar="NAME[:k=v,…]",
        help="A trick, repeatable: dropout, weight_decay:l2=0.001, "
        "momentum:momentum=0.8,nesterov=false. `tricklab tricks` lists them.",
        callback=check_tricks,
        show_default=False,
    ),
]
EpochsOption = Annotated[int | None, typer.Option(help="Epochs to train.", show_default=False)]
BatchSizeOption = Annotated[
    int | None, typer.Option(help="Images per training step.", show_default=False)
]
LearningRateOption = Annotated[
    float | None, typer.Option(help="The optimizer's learning rate.", show_default=False)
]
HiddenUnitsOption = Annotated[
    str | None,
    typer.Option(
        metavar="A,B",
        help="Widths of the hidden layers, e.g. 128,32.",
        callback=check_hidden_units,
        show_default=False,
    ),
]
DatasetOption = Annotated[
    str | None, typer.Option(help="fashion_mnist or mnist.", show_default=False)
]
ArchitectureOption = Annotated[
    str | None,
    typer.Option(
        help="mlp (the default) or cnn; the CNN's shape fields (conv_filters, kernel_size, "
        "dense_units) go in -f.",
        show_default=False,
    ),
]

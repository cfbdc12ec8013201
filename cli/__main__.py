"""`tricklab`: train, follow, compare and use tricklab models from a shell.

Output is for people on a terminal (Rich tables, live progress) and for scripts everywhere
else: `-o json` prints the API's own objects, unchanged; a command that creates something
prints just its id when its output is not a terminal; the exit status says how it went."""

from __future__ import annotations

import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cli import show
from cli.client import USAGE, Api, Failure
from cli.common import (
    EXIT_CODES,
    ArchitectureOption,
    BatchSizeOption,
    DatasetOption,
    EpochsOption,
    HiddenUnitsOption,
    JobId,
    LearningRateOption,
    OutputOption,
    SaveOption,
    Session,
    TrickOption,
    api,
    emit,
    emit_created,
    exit_for,
    following_created,
    read_file_option,
    sub_app,
    watch_to_end,
)
from cli.config import Connection, resolve, save_login
from cli.jobs import jobs
from cli.spec import job_spec, parse_trick
from cli.watch import watch_study

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
studies = sub_app("Compare tricks across seeds: create studies, follow them, read their reports.")
app.add_typer(jobs, name="jobs")
app.add_typer(studies, name="studies")


class Table(StrEnum):
    variants = "variants"
    effects = "effects"


class ImageFormat(StrEnum):
    png = "png"
    svg = "svg"


StudyId = Annotated[str, typer.Argument(metavar="STUDY", help="A study's id.", show_default=False)]


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


# ---- studies -------------------------------------------------------------------------------


@studies.command("create")
def studies_create(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Option(
            "-f",
            "--file",
            metavar="STUDY.json",
            help="A study as JSON (- for standard input); the flags given replace its fields.",
            show_default=False,
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="notebook: the study notebook's progression; notebook-cnn: the same on the CNN.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="A label for people.", show_default=False)
    ] = None,
    trick: TrickOption = None,
    design: Annotated[
        str | None,
        typer.Option(
            help="one_at_a_time, leave_one_out, cumulative or full_factorial.", show_default=False
        ),
    ] = None,
    repeats: Annotated[
        int | None, typer.Option(help="Seeds per variant.", show_default=False)
    ] = None,
    epochs: EpochsOption = None,
    batch_size: BatchSizeOption = None,
    seed: Annotated[
        int | None, typer.Option(help="The first seed (the base's).", show_default=False)
    ] = None,
    learning_rate: LearningRateOption = None,
    hidden_units: HiddenUnitsOption = None,
    dataset: DatasetOption = None,
    architecture: ArchitectureOption = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow it until its jobs end; exit 1 unless all succeeded."),
    ] = False,
    output: OutputOption = None,
) -> None:
    """Queue a study: the base spec with and without each of the tricks (--trick), on the same
    seeds. Prints its id alone when the output is not a terminal."""
    study = read_file_option(file)
    for field, value in (
        ("preset", preset),
        ("name", name),
        ("design", design),
        ("repeats", repeats),
    ):
        if value is not None:
            study[field] = value
    if trick:
        study["tricks"] = [parse_trick(t) for t in trick]
    base = study.get("base", {})
    base_flags = {
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "learning_rate": learning_rate,
        "hidden_units": hidden_units,
        "dataset": dataset,
        "architecture": architecture,
    }
    if any(value is not None for value in base_flags.values()):
        study["base"] = job_spec(base if isinstance(base, dict) else {}, [], **base_flags)
    if not study:
        raise Failure("nothing to create: give -f STUDY.json, --preset notebook or --trick", USAGE)
    client = api(ctx)
    created = client.post("/v1/studies", json=study)
    if not wait:
        emit_created(created, output, show.study)
        return
    final = following_created(watch_study, client, created["id"], output, "created study")
    if output is not None:
        emit(client.get(f"/v1/studies/{created['id']}"), output, show.study)
    raise exit_for(final["status"])


@studies.command("list")
def studies_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="At most this many (1–500).")] = 50,
    offset: Annotated[int, typer.Option(help="Skip this many, newest first.")] = 0,
    owner: Annotated[
        str | None, typer.Option(help="An admin: only this user's studies.", show_default=False)
    ] = None,
    output: OutputOption = None,
) -> None:
    """Your studies, newest first, with their progress."""
    emit(api(ctx).get("/v1/studies", limit=limit, offset=offset, owner=owner), output, show.studies)


@studies.command("show")
def studies_show(ctx: typer.Context, study: StudyId, output: OutputOption = None) -> None:
    """A study: status, progress, and its report so far."""
    emit(api(ctx).get(f"/v1/studies/{study}"), output, show.study)


@studies.command("watch")
def studies_watch(ctx: typer.Context, study: StudyId, output: OutputOption = None) -> None:
    """Follow a study until all its jobs have ended. Exits 0 if they all succeeded, else 1."""
    watch_to_end(watch_study, api(ctx), study, output)


@studies.command("report")
def studies_report(
    ctx: typer.Context,
    study: StudyId,
    csv: Annotated[
        Table | None,
        typer.Option(help="The report as CSV instead: one row per variant, or per trick."),
    ] = None,
    output: OutputOption = None,
) -> None:
    """The study's report: per variant, means and 95% intervals over seeds; per trick, its
    paired effect on test accuracy and a verdict. Finished runs only."""
    client = api(ctx)
    if csv is not None:
        text = client.request(
            "GET", f"/v1/studies/{study}/report.csv", params={"table": csv.value}
        ).text
        sys.stdout.write(text)
        return
    emit(client.get(f"/v1/studies/{study}/report"), output, show.report)


@studies.command("plot")
def studies_plot(
    ctx: typer.Context,
    study: StudyId,
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME", help="curves, accuracy, gap or effects.", show_default=False
        ),
    ],
    save_to: SaveOption = None,
    format: Annotated[
        ImageFormat, typer.Option("--format", help="The image format.")
    ] = ImageFormat.png,
) -> None:
    """Save a plot of the study's report: its learning curves, final accuracies,
    generalisation gaps or trick effects."""
    target = save_to or Path(f"study-{study}-{name}.{format.value}")
    api(ctx).download(f"/v1/studies/{study}/plots/{name}", target, format=format.value)


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

"""`tricklab studies`: compare tricks across seeds: create studies, follow them, read their
reports and plots."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import show
from cli.client import USAGE, Failure
from cli.common import (
    ArchitectureOption,
    BatchSizeOption,
    DatasetOption,
    EpochsOption,
    HiddenUnitsOption,
    LearningRateOption,
    OutputOption,
    SaveOption,
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
from cli.ids import resolve_id
from cli.spec import job_spec, parse_trick
from cli.watch import watch_study

studies = sub_app("Compare tricks across seeds: create studies, follow them, read their reports.")


class Table(StrEnum):
    variants = "variants"
    effects = "effects"


class ImageFormat(StrEnum):
    png = "png"
    svg = "svg"


StudyId = Annotated[
    str,
    typer.Argument(
        metavar="STUDY",
        help="A study's id, or its first 4 or more hex digits (the 8 that tables show) when "
        "no other study you can see starts with them.",
        show_default=False,
    ),
]


StudyFileOption = Annotated[
    Path | None,
    typer.Option(
        "-f",
        "--file",
        metavar="STUDY.json",
        help="A study as JSON (- for standard input); the flags given replace its fields.",
        show_default=False,
    ),
]
PresetOption = Annotated[
    str | None,
    typer.Option(
        help="notebook: the study notebook's progression; notebook-cnn: the same on the CNN.",
        show_default=False,
    ),
]
NameOption = Annotated[str | None, typer.Option(help="A label for people.", show_default=False)]
DesignOption = Annotated[
    str | None,
    typer.Option(
        help="one_at_a_time, leave_one_out, cumulative or full_factorial.", show_default=False
    ),
]
RepeatsOption = Annotated[int | None, typer.Option(help="Seeds per variant.", show_default=False)]
FirstSeedOption = Annotated[
    int | None, typer.Option(help="The first seed (the base's).", show_default=False)
]
WaitOption = Annotated[
    bool,
    typer.Option("--wait", help="Follow it until its jobs end; exit 1 unless all succeeded."),
]


def study_document(
    file: Path | None,
    fields: dict[str, Any],
    tricks: list[str] | None,
    base_flags: dict[str, Any],
) -> dict[str, Any]:
    """The study in -f with the flags given over it: its own fields, its tricks, and the base
    spec's fields."""
    study = read_file_option(file)
    for field, value in fields.items():
        if value is not None:
            study[field] = value
    if tricks:
        study["tricks"] = [parse_trick(t) for t in tricks]
    base = study.get("base", {})
    if any(value is not None for value in base_flags.values()):
        study["base"] = job_spec(base if isinstance(base, dict) else {}, [], **base_flags)
    return study


@studies.command("create")
def studies_create(
    ctx: typer.Context,
    file: StudyFileOption = None,
    preset: PresetOption = None,
    name: NameOption = None,
    trick: TrickOption = None,
    design: DesignOption = None,
    repeats: RepeatsOption = None,
    epochs: EpochsOption = None,
    batch_size: BatchSizeOption = None,
    seed: FirstSeedOption = None,
    learning_rate: LearningRateOption = None,
    hidden_units: HiddenUnitsOption = None,
    dataset: DatasetOption = None,
    architecture: ArchitectureOption = None,
    wait: WaitOption = False,
    output: OutputOption = None,
) -> None:
    """Queue a study: the base spec with and without each of the tricks (--trick), on the same
    seeds. Prints its id alone when the output is not a terminal."""
    study = study_document(
        file,
        {"preset": preset, "name": name, "design": design, "repeats": repeats},
        trick,
        {
            "epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
            "learning_rate": learning_rate,
            "hidden_units": hidden_units,
            "dataset": dataset,
            "architecture": architecture,
        },
    )
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
    client = api(ctx)
    emit(client.get(f"/v1/studies/{resolve_id(client, 'study', study)}"), output, show.study)


@studies.command("watch")
def studies_watch(ctx: typer.Context, study: StudyId, output: OutputOption = None) -> None:
    """Follow a study until all its jobs have ended. Exits 0 if they all succeeded, else 1."""
    client = api(ctx)
    watch_to_end(watch_study, client, resolve_id(client, "study", study), output)


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
    study = resolve_id(client, "study", study)
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
    client = api(ctx)
    study = resolve_id(client, "study", study)
    target = save_to or Path(f"study-{study}-{name}.{format.value}")
    client.download(f"/v1/studies/{study}/plots/{name}", target, format=format.value)

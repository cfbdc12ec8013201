"""`tricklab jobs`: submit training jobs, follow them, read their metrics, download their
models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import show
from cli.common import (
    ArchitectureOption,
    BatchSizeOption,
    DatasetOption,
    EpochsOption,
    HiddenUnitsOption,
    JobId,
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
from cli.spec import job_spec
from cli.watch import watch_job

jobs = sub_app("Submit training jobs, follow them, read their metrics, download their models.")

SeedOption = Annotated[int | None, typer.Option(help="The random seed.", show_default=False)]


@jobs.command("submit")
def jobs_submit(
    ctx: typer.Context,
    trick: TrickOption = None,
    epochs: EpochsOption = None,
    batch_size: BatchSizeOption = None,
    seed: SeedOption = None,
    learning_rate: LearningRateOption = None,
    hidden_units: HiddenUnitsOption = None,
    dataset: DatasetOption = None,
    architecture: ArchitectureOption = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "-f",
            "--file",
            metavar="SPEC.json",
            help="A job spec as JSON (- for standard input); the flags given replace its "
            "fields (--trick replaces its tricks).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow the job until it ends; exit 1 unless it succeeded."),
    ] = False,
    output: OutputOption = None,
) -> None:
    """Queue a training job. Prints its id alone when the output is not a terminal:
    `id=$(tricklab jobs submit --trick dropout --epochs 3)`."""
    spec = job_spec(
        read_file_option(file),
        trick or [],
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        learning_rate=learning_rate,
        hidden_units=hidden_units,
        dataset=dataset,
        architecture=architecture,
    )
    client = api(ctx)
    job = client.post("/v1/jobs", json=spec)
    if not wait:
        emit_created(job, output, show.job)
        return
    final = following_created(watch_job, client, job["id"], output, "submitted job")
    if output is not None:
        emit(final, output, show.job)
    raise exit_for(final["status"])


@jobs.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(
            help="Only jobs with this status: queued, running, paused, succeeded, failed, "
            "cancelled."
        ),
    ] = None,
    trick: Annotated[
        str | None, typer.Option(help="Only jobs using this trick.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many (1–500).")] = 50,
    offset: Annotated[int, typer.Option(help="Skip this many, newest first.")] = 0,
    owner: Annotated[
        str | None, typer.Option(help="An admin: only this user's jobs.", show_default=False)
    ] = None,
    output: OutputOption = None,
) -> None:
    """Your jobs, newest first (an admin's: everyone's)."""
    listing = api(ctx).get(
        "/v1/jobs", status=status, trick=trick, limit=limit, offset=offset, owner=owner
    )
    emit(listing, output, show.jobs)


@jobs.command("show")
def jobs_show(ctx: typer.Context, job: JobId, output: OutputOption = None) -> None:
    """A job: its status, spec, progress, result or error."""
    client = api(ctx)
    emit(client.get(f"/v1/jobs/{resolve_id(client, 'job', job)}"), output, show.job)


@jobs.command("metrics")
def jobs_metrics(
    ctx: typer.Context,
    job: JobId,
    since_epoch: Annotated[int, typer.Option(help="Only the epochs after this one.")] = 0,
    output: OutputOption = None,
) -> None:
    """A job's metrics, one row per finished epoch."""
    client = api(ctx)
    answer = client.get(
        f"/v1/jobs/{resolve_id(client, 'job', job)}/metrics", since_epoch=since_epoch
    )
    emit(answer, output, show.metrics)


@jobs.command("watch")
def jobs_watch(ctx: typer.Context, job: JobId, output: OutputOption = None) -> None:
    """Follow a job until it ends: a progress bar on a terminal, else one line per epoch.
    Exits 0 if it succeeded, 1 if it failed or was cancelled."""
    client = api(ctx)
    watch_to_end(watch_job, client, resolve_id(client, "job", job), output)


@jobs.command("cancel")
def jobs_cancel(ctx: typer.Context, job: JobId, output: OutputOption = None) -> None:
    """Cancel a queued or running job (a running one stops within an epoch)."""
    client = api(ctx)
    emit(client.post(f"/v1/jobs/{resolve_id(client, 'job', job)}/cancel"), output, show.job)


@jobs.command("download")
def jobs_download(ctx: typer.Context, job: JobId, save_to: SaveOption = None) -> None:
    """Download a succeeded job's model, a Keras 3 `.keras` file that plain Keras loads."""
    client = api(ctx)
    job = resolve_id(client, "job", job)
    client.download(f"/v1/jobs/{job}/model", save_to or Path(f"tricklab-{job}.keras"))

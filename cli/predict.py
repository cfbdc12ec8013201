"""`tricklab predict`: classify images with a succeeded job's model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import show
from cli.common import JobId, OutputOption, api, emit
from cli.ids import resolve_id


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
    client = api(ctx)
    answer = client.post(f"/v1/jobs/{resolve_id(client, 'job', job)}/predict", files=uploads)
    emit(answer, output, lambda a: show.predictions([str(f) for f in files], a))

"""`tricklab tricks`: the trick catalogue, as the service knows it."""

from __future__ import annotations

import typer

from cli import show
from cli.common import OutputOption, api, emit


def tricks(ctx: typer.Context, output: OutputOption = None) -> None:
    """The trick catalogue: each trick's parameters, defaults, limits and what it does."""
    emit(api(ctx).get("/v1/tricks"), output, show.tricks)

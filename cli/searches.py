"""`tricklab search`: find the best recipe on validation, then prove it on fresh seeds: create
searches, follow them, read their trials, reports and plots."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from cli import show
from cli.client import Api
from cli.common import (
    Output,
    OutputOption,
    SaveOption,
    api,
    emit,
    emit_created,
    exit_for,
    following_created,
    print_json,
    read_file_option,
    stdout_console,
    sub_app,
    watch_to_end,
)
from cli.ids import resolve_id
from cli.watch import Followed, watch_progress

searches = sub_app(
    "Find the best recipe on validation, then confirm it on fresh seeds: create searches, "
    "follow them, read their trials and reports."
)


class Plot(StrEnum):
    parallel = "parallel"
    best = "best"
    rungs = "rungs"


class ImageFormat(StrEnum):
    png = "png"
    svg = "svg"


SearchId = Annotated[
    str,
    typer.Argument(
        metavar="SEARCH",
        help="A search's id, or its first 4 or more hex digits (the 8 that tables show) when "
        "no other search you can see starts with them.",
        show_default=False,
    ),
]
SearchFileOption = Annotated[
    Path,
    typer.Option(
        "-f",
        "--file",
        metavar="SEARCH.json",
        help="The search as JSON (- for standard input): base, space, sampler, objective, "
        "max_trials, scheduler, confirm, seed.",
        show_default=False,
    ),
]
WaitOption = Annotated[
    bool,
    typer.Option("--wait", help="Follow it until it ends; exit 1 unless it succeeded (confirmed)."),
]


@searches.command("create")
def search_create(
    ctx: typer.Context,
    file: SearchFileOption,
    wait: WaitOption = False,
    output: OutputOption = None,
) -> None:
    """Queue a search: its first trials start at once, the rest as trials pause and end; then
    the best configurations and the base run on fresh seeds. Prints its id alone when the
    output is not a terminal."""
    client = api(ctx)
    created = client.post("/v1/searches", json=read_file_option(file))
    if not wait:
        emit_created(created, output, summary)
        return
    final = following_created(watch_search, client, created["id"], output, "created search")
    if output is not None:
        emit(client.get(f"/v1/searches/{created['id']}"), output, summary)
    raise exit_for(final["status"])


@searches.command("list")
def search_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="At most this many (1–500).")] = 50,
    offset: Annotated[int, typer.Option(help="Skip this many, newest first.")] = 0,
    owner: Annotated[
        str | None, typer.Option(help="An admin: only this user's searches.", show_default=False)
    ] = None,
    output: OutputOption = None,
) -> None:
    """Your searches, newest first."""
    listing = api(ctx).get("/v1/searches", limit=limit, offset=offset, owner=owner)
    emit(listing, output, listed)


@searches.command("show")
def search_show(ctx: typer.Context, search: SearchId, output: OutputOption = None) -> None:
    """A search: status, the best trial so far on validation, and a table of its trials
    (`-o json`: the search as the API gives it; its trials are at /v1/searches/ID/trials)."""
    client = api(ctx)
    search = resolve_id(client, "search", search)
    found = client.get(f"/v1/searches/{search}")
    if output == Output.json:
        print_json(found)
        return
    trials = client.get(f"/v1/searches/{search}/trials")
    stdout_console().print(Group(summary(found), "", trial_table(trials)))


@searches.command("watch")
def search_watch(ctx: typer.Context, search: SearchId, output: OutputOption = None) -> None:
    """Follow a search until it ends. Exits 0 if it succeeded, else 1."""
    client = api(ctx)
    watch_to_end(watch_search, client, resolve_id(client, "search", search), output)


@searches.command("report")
def search_report(ctx: typer.Context, search: SearchId, output: OutputOption = None) -> None:
    """What the search selected on validation, and the confirmation on fresh seeds: each
    chosen configuration's and the base's test accuracy, its effect against the base, and by
    how much the best trial's own score flattered it. Fills in as the confirmation ends."""
    client = api(ctx)
    search = resolve_id(client, "search", search)
    emit(client.get(f"/v1/searches/{search}/report"), output, report)


@searches.command("plot")
def search_plot(
    ctx: typer.Context,
    search: SearchId,
    name: Annotated[
        Plot,
        typer.Argument(
            metavar="NAME",
            help="parallel (the space, coloured by the objective), best (best so far) or "
            "rungs (each trial's objective by epoch).",
            show_default=False,
        ),
    ],
    save_to: SaveOption = None,
    format: Annotated[
        ImageFormat, typer.Option("--format", help="The image format.")
    ] = ImageFormat.png,
) -> None:
    """Save a plot of the search's trials."""
    client = api(ctx)
    search = resolve_id(client, "search", search)
    target = save_to or Path(f"search-{search}-{name.value}.{format.value}")
    client.download(f"/v1/searches/{search}/plots/{name.value}", target, format=format.value)


# ---- following -----------------------------------------------------------------------------


def watch_search(client: Api, search_id: str, stream: TextIO) -> dict[str, Any]:
    """Follow the search until it ends: trials asked of max_trials on the bar, a line at each
    change; the final search."""
    return watch_progress(
        client,
        Followed("search", search_id, "trials", f"/v1/searches/{search_id}/events"),
        lambda search: (search["trials"].get("total", 0), search["request"].get("max_trials")),
        search_line,
        stream,
    )


# ---- drawing -------------------------------------------------------------------------------


def params_text(params: dict[str, Any]) -> str:
    """{"learning_rate": 0.01234, "tricks.dropout": true} → `learning_rate=0.01234
    tricks.dropout=true`, as Rich markup."""
    return escape(" ".join(f"{key}={_value(value)}" for key, value in params.items())) or "–"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(map(_value, value))
    return str(value)


def trial_counts(trials: dict[str, int]) -> str:
    """{"total": 4, "completed": 1, "paused": 3} → "4 trials (1 completed, 3 paused)"."""
    counts = ", ".join(f"{c} {n}" for n, c in trials.items() if n != "total" and c)
    return f"{trials.get('total', 0)} trials ({counts or 'none yet'})"


def best_text(search: dict[str, Any]) -> str | None:
    best = search.get("best")
    if not best:
        return None
    objective = search["request"].get("objective", "objective")
    return f"trial {best['trial']}: {objective}={show.number(best['value'])}"


def search_line(search: dict[str, Any]) -> str:
    """The line `watch` prints at each change: `search ID searching: 3 trials (1 completed,
    2 running); best trial 0: val_accuracy=0.6400`."""
    line = f"search {search['id']} {search['status']}: {trial_counts(search['trials'])}"
    best = best_text(search)
    if best:
        line += f"; best {best}"
    if search.get("error"):
        line += f"; {search['error']}"
    return line


def summary(search: dict[str, Any]) -> RenderableType:
    request = search.get("request") or {}
    scheduler = request.get("scheduler") or {}
    best = search.get("best")
    return show.fields(
        [
            ("id", search["id"]),
            ("name", search["name"]),
            ("status", show.status(search["status"])),
            ("owner", search.get("owner")),
            ("sampler", request.get("sampler")),
            ("objective", f"{request.get('objective')} (on validation)"),
            ("scheduler", " ".join(f"{k}={v}" for k, v in scheduler.items())),
            ("trials", f"{trial_counts(search['trials'])} of {request.get('max_trials')}"),
            ("best", best_text(search)),
            ("best params", params_text(best["params"]) if best else None),
            ("error", f"[red]{search['error']}[/]" if search.get("error") else None),
            ("created", search.get("created_at")),
            ("finished", search.get("finished_at")),
        ]
    )


def listed(listing: dict[str, Any]) -> RenderableType:
    table = Table(caption=show.counted(listing, "searches"))
    for column in ("id", "name", "status", "owner", "created"):
        table.add_column(column)
    for item in listing["searches"]:
        table.add_row(
            item["id"],
            item["name"],
            show.status(item["status"]),
            item.get("owner") or "",
            (item.get("created_at") or "")[:19].replace("T", " "),
        )
    return table


def trial_table(listing: dict[str, Any]) -> RenderableType:
    """One row per trial: its state, the rung it trains towards or stopped at, its epochs of
    that rung's, its parameters, and its objective on validation at its latest epoch."""
    rungs = ", ".join(map(str, listing["rungs"]))
    table = Table(caption=f"rungs at epochs {rungs}")
    for column in ("trial", "state", "rung", "epochs", "params", listing["objective"]):
        table.add_column(column, justify="left" if column in ("state", "params") else "right")
    for trial in listing["trials"]:
        values = {int(epoch): value for epoch, value in trial["values"].items()}
        latest = max(values, default=0)
        table.add_row(
            str(trial["number"]),
            show.status(trial["state"]),
            str(trial["rung"]),
            f"{latest}/{trial['rung_epochs']}",
            params_text(trial["params"]),
            show.number(values.get(latest)),
        )
    return table


def plus_minus(interval: dict[str, Any] | None) -> str:
    """A mean and half its 95% interval: `0.8120 ± 0.0110`."""
    if not interval:
        return "–"
    mean, low, high = interval["mean"], interval.get("low"), interval.get("high")
    if low is None or high is None:
        return show.number(mean)
    return f"{show.number(mean)} ± {show.number((high - low) / 2)}"


def report(report: dict[str, Any]) -> RenderableType:
    objective = report["objective"]
    best = report.get("best")
    selected = (
        f"selected on {report['selected_on']}: trial {best['trial']}, {objective}="
        f"{show.number(best['value'])} ({params_text(best['params'])})"
        if best
        else f"selected on {report['selected_on']}: no trial has completed yet"
    )
    seeds = ", ".join(map(str, report["seeds"])) or "none yet"
    table = Table(title=f"confirmed on fresh seeds ({seeds}): test accuracy, 95% intervals")
    for column in ("name", "params", "test_accuracy", "n", "effect vs base", "verdict"):
        table.add_column(column, justify="right" if column in ("test_accuracy", "n") else "left")
    for confirmed in report["confirmed"]:
        effect = next((e for e in confirmed["effects"] if e["against"] == "base"), None)
        accuracy = confirmed.get("test_accuracy")
        table.add_row(
            confirmed["name"],
            params_text(confirmed["params"]),
            plus_minus(accuracy),
            str(accuracy["n"]) if accuracy else "0",
            plus_minus(effect["difference"]) if effect else "–",
            effect["verdict"] if effect else "",
        )
    optimism = report.get("optimism")
    flattery = (
        f"optimism: {optimism:+.4f} in {objective}: how much the best trial's own score "
        "overstated its configuration's on the fresh seeds"
        if optimism is not None
        else "optimism: – (once the best configuration is confirmed)"
    )
    return Group(selected, "", table, flattery, report["note"])

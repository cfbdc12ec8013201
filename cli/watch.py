"""Following a job or a study to its end: on a terminal a live progress bar (and, for a job,
its latest epochs); elsewhere one plain line per epoch or change, written as it happens so that
logs and pipes see it at once, then a last line saying how it ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cli import show
from cli.client import Api
from cli.events import follow

LATEST_EPOCHS = 5  # rows of the live metrics table


def bar(unit: str) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


class Screen:
    """Where the progress goes: a live Rich display on a terminal, plain lines elsewhere."""

    def __init__(self, stream: TextIO, render: Callable[[], RenderableType]) -> None:
        self.stream = stream
        self.live: Live | None = None
        if stream.isatty():
            self.live = Live(console=Console(file=stream), get_renderable=render)
            self.live.start()

    def line(self, text: str) -> None:
        if self.live is None:
            print(text, file=self.stream, flush=True)

    def refresh(self) -> None:
        if self.live is not None:
            self.live.refresh()

    def end(self, text: str) -> None:
        """Leave the last frame on the terminal, and say how it ended."""
        if self.live is not None:
            self.live.stop()
            self.live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def watch_job(api: Api, job_id: str, stream: TextIO) -> dict[str, Any]:
    """Follow the job's events until it ends; the final job."""
    progress = bar("epochs")
    rows: list[dict[str, Any]] = []
    task: Any = None
    # Epochs finished before we started watching arrive at once: they fill the table but not
    # the bar's speed, or the ETA would believe they took no time.
    done_before = 0
    shown = 0
    last_status = ""

    def render() -> RenderableType:
        latest = show.metrics({"epochs": rows}, last=LATEST_EPOCHS) if rows else ""
        return Group(progress, latest)

    screen = Screen(stream, render)
    try:
        for event in follow(api, f"/v1/jobs/{job_id}/events"):
            if event.name in ("status", "end"):
                job = event.json()
                description = f"job {job_id[:8]} {job['status']}"
                if task is None:
                    done_before = job.get("epochs_done") or 0
                    task = progress.add_task(
                        description, total=job.get("epochs_total"), completed=done_before
                    )
                progress.update(task, description=description, total=job.get("epochs_total"))
                if event.name == "end":
                    screen.refresh()
                    screen.end(show.job_line(job))
                    return job
                if job["status"] != last_status and job["status"] not in show.ENDED:
                    screen.line(f"job {job_id} {job['status']}")
                last_status = job["status"]
            elif event.name == "epoch":
                row = event.json()
                if row["epoch"] <= shown:
                    continue  # already shown: never twice, whatever the server resends
                shown = row["epoch"]
                rows.append(row)
                if task is not None and row["epoch"] > done_before:
                    progress.update(task, completed=row["epoch"])
                total = progress.tasks[0].total if progress.tasks else None
                screen.line(show.epoch_line(row, int(total) if total else None))
        raise AssertionError("unreachable: follow() returns only after the end event")
    finally:
        screen.close()


def watch_study(api: Api, study_id: str, stream: TextIO) -> dict[str, Any]:
    """Follow the study's progress until all its jobs have ended; the final summary."""
    return watch_progress(
        api,
        Followed("study", study_id, "jobs", f"/v1/studies/{study_id}/events"),
        lambda study: (show.finished(study["progress"]), study["progress"].get("total")),
        show.study_line,
        stream,
    )


@dataclass(frozen=True)
class Followed:
    """What a progress stream follows: its kind and id, what its bar counts, its path."""

    kind: str
    item_id: str
    unit: str
    path: str


def watch_progress(
    api: Api,
    followed: Followed,
    counted: Callable[[dict[str, Any]], tuple[int, int | None]],
    line_of: Callable[[dict[str, Any]], str],
    stream: TextIO,
) -> dict[str, Any]:
    """Follow a stream of `progress` events until its `end`: the bar shows `counted` (done,
    total), a line is printed at each change; the final object."""
    progress = bar(followed.unit)
    task = progress.add_task(f"{followed.kind} {followed.item_id[:8]}", total=None)
    last_line = ""
    screen = Screen(stream, lambda: progress)
    try:
        for event in follow(api, followed.path):
            item = event.json()
            done, total = counted(item)
            progress.update(
                task,
                description=f"{followed.kind} {followed.item_id[:8]} {item['status']}",
                completed=done,
                total=total,
            )
            line = line_of(item)
            if event.name == "end":
                screen.refresh()
                screen.end(line)
                return dict(item)
            # The last line says how it ended: an ended status waits for `end` to say it once.
            if line != last_line and item["status"] not in show.ENDED:
                screen.line(line)
                last_line = line
        raise AssertionError("unreachable: follow() returns only after the end event")
    finally:
        screen.close()

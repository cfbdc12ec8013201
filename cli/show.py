"""What the API answers, drawn for people: Rich tables, and the one-line summaries that
`watch` prints when no one is looking at a terminal. `-o json` never comes here: scripts get
the API's objects unchanged."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

ENDED = ("succeeded", "failed", "cancelled")
STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "paused": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}
# The columns of an epoch, in the order a reader compares them.
EPOCH_COLUMNS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
)


def number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def status(name: str) -> str:
    return f"[{STATUS_STYLE.get(name, 'white')}]{name}[/]"


def trick_label(trick: Any) -> str:
    """{"name": "weight_decay", "l2": 0.001} → weight_decay(l2=0.001)."""
    if isinstance(trick, str):
        return trick
    parameters = ", ".join(f"{k}={v}" for k, v in trick.items() if k != "name")
    return f"{trick.get('name')}({parameters})" if parameters else str(trick.get("name"))


def tricks_of(spec: Any) -> str:
    tricks = spec.get("tricks", []) if isinstance(spec, dict) else []
    return ", ".join(trick_label(t) for t in tricks) or "none"


def progress_text(job: dict[str, Any]) -> str:
    return f"{job.get('epochs_done', 0)}/{job.get('epochs_total') or '?'}"


def fields(rows: list[tuple[str, Any]]) -> Table:
    """A two-column table of names and values, leaving out what is not there."""
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        if value not in (None, "", [], {}):
            table.add_row(name, value if isinstance(value, str) else number(value))
    return table


# ---- jobs ----------------------------------------------------------------------------------


def job(job: dict[str, Any]) -> RenderableType:
    spec = job.get("spec") or {}
    result = job.get("result") or {}
    error = job.get("error") or {}
    rows: list[tuple[str, Any]] = [
        ("id", job["id"]),
        ("status", status(job["status"])),
        ("owner", job.get("owner")),
        ("tricks", tricks_of(spec)),
        ("epochs", progress_text(job)),
    ]
    rows += [(name, spec.get(name)) for name in ("dataset", "batch_size", "seed")]
    rows.append(
        ("learning_rate", f"{spec['learning_rate']:g}" if spec.get("learning_rate") else None)
    )
    rows.append(("architecture", spec.get("architecture", "mlp")))
    # Each architecture's shape fields; the other's are null.
    for name in ("hidden_units", "conv_filters", "kernel_size", "dense_units"):
        value = spec.get(name)
        if value is not None:
            rows.append((name, ",".join(map(str, value)) if isinstance(value, list) else value))
    rows += [
        ("created", job.get("created_at")),
        ("started", job.get("started_at")),
        ("finished", job.get("finished_at")),
        ("device", job.get("device")),
        ("attempts", f"{job.get('attempts')} of {job.get('max_attempts')}"),
        ("best epoch", job.get("best_epoch")),
        ("stopped epoch", job.get("stopped_epoch")),
    ]
    rows += [(name, result.get(name)) for name in ("test_accuracy", "test_loss", "seconds")]
    if error:
        rows.append(("error", f"[red]{error.get('type')}: {error.get('message')}[/]"))
    return fields(rows)


def jobs(listing: dict[str, Any]) -> RenderableType:
    table = Table(caption=counted(listing, "jobs"))
    for column in ("id", "status", "owner", "tricks", "epochs", "test_accuracy", "created"):
        table.add_column(column, justify="right" if column == "test_accuracy" else "left")
    for item in listing["jobs"]:
        table.add_row(
            item["id"],
            status(item["status"]),
            item.get("owner") or "",
            tricks_of(item.get("spec")),
            progress_text(item),
            number((item.get("result") or {}).get("test_accuracy")),
            (item.get("created_at") or "")[:19].replace("T", " "),
        )
    return table


def counted(listing: dict[str, Any], what: str) -> str:
    shown = len(listing[what])
    first = listing["offset"] + 1 if shown else listing["offset"]
    of = f" of {listing['total']}" if listing.get("total") is not None else ""
    return f"{first}–{listing['offset'] + shown}{of} {what}"


def metrics(answer: dict[str, Any], last: int | None = None) -> RenderableType:
    """One row per epoch (the `last` ones only, when given)."""
    table = Table(caption=f"job {answer['job_id']}: {answer['status']}" if last is None else None)
    table.add_column("epoch", justify="right")
    for column in (*EPOCH_COLUMNS, "learning_rate", "seconds"):
        table.add_column(column.replace("accuracy", "acc"), justify="right")
    rows = answer["epochs"] if last is None else answer["epochs"][-last:]
    for row in rows:
        table.add_row(
            str(row["epoch"]),
            *(number(row.get(c)) for c in EPOCH_COLUMNS),
            f"{row['learning_rate']:g}" if row.get("learning_rate") is not None else "–",
            number(row.get("seconds"), 2),
        )
    return table


def epoch_line(row: dict[str, Any], total: int | None) -> str:
    """`epoch 3/10 train_loss=0.4638 … test_accuracy=0.8260`: one line per epoch."""
    values = " ".join(f"{c}={number(row[c])}" for c in EPOCH_COLUMNS if row.get(c) is not None)
    return f"epoch {row['epoch']}/{total or '?'} {values}"


def job_line(job: dict[str, Any]) -> str:
    """The last line `watch` prints: how the job ended, and its score or its error."""
    line = f"job {job['id']} {job['status']}"
    result, error = job.get("result"), job.get("error")
    if result:
        line += (
            f": test_accuracy={number(result.get('test_accuracy'))} "
            f"test_loss={number(result.get('test_loss'))} after "
            f"{result.get('epochs_trained')} epochs in {number(result.get('seconds'), 1)} s"
        )
    elif error:
        line += f": {error.get('type')}: {error.get('message')}"
    return line


def predictions(files: list[str], answer: dict[str, Any]) -> RenderableType:
    table = Table(caption=f"job {answer['job_id']}")
    for column in ("file", "label", "class", "probability"):
        table.add_column(column, justify="right" if column in ("label", "probability") else "left")
    for file, prediction in zip(files, answer["predictions"], strict=True):
        probability = max(prediction["probabilities"])
        table.add_row(
            file, str(prediction["label"]), prediction["class_name"], f"{probability:.1%}"
        )
    return table


# ---- studies -------------------------------------------------------------------------------


def finished(progress: dict[str, int]) -> int:
    return sum(progress.get(name, 0) for name in ENDED)


def progress_counts(progress: dict[str, int]) -> str:
    """{"total": 4, "succeeded": 1, "running": 1, …} → "1/4 jobs ended (1 succeeded, 1 running)"."""
    counts = ", ".join(f"{c} {n}" for n, c in progress.items() if n != "total" and c)
    return f"{finished(progress)}/{progress.get('total', 0)} jobs ended ({counts or 'none'})"


def study_line(study: dict[str, Any]) -> str:
    return f"study {study['id']} {study['status']}: {progress_counts(study['progress'])}"


def studies(listing: dict[str, Any]) -> RenderableType:
    table = Table(caption=counted(listing, "studies"))
    for column in ("id", "name", "status", "owner", "design", "variants", "jobs ended"):
        table.add_column(column)
    for item in listing["studies"]:
        progress = item["progress"]
        table.add_row(
            item["id"],
            item["name"],
            status(item["status"]),
            item.get("owner") or "",
            item["design"],
            str(len(item["variants"])),
            f"{finished(progress)}/{progress.get('total', 0)}",
        )
    return table


def study(study: dict[str, Any]) -> RenderableType:
    summary = fields(
        [
            ("id", study["id"]),
            ("name", study["name"]),
            ("status", status(study["status"])),
            ("owner", study.get("owner")),
            ("design", study["design"]),
            ("repeats", study["repeats"]),
            ("seeds", ", ".join(map(str, study["seeds"]))),
            ("progress", progress_counts(study["progress"])),
            ("created", study.get("created_at")),
        ]
    )
    if "report" not in study:  # a summary, as `create` and the events give
        return summary
    return Group(summary, "", report(study["report"]))


def estimate(value: dict[str, Any] | None, digits: int = 4) -> str:
    """A mean and its 95% interval: `0.8120 [0.8010, 0.8230]`."""
    if not value:
        return "–"
    mean = number(value["mean"], digits)
    if value.get("low") is None:
        return mean
    return f"{mean} [{number(value['low'], digits)}, {number(value['high'], digits)}]"


def report(report: dict[str, Any]) -> RenderableType:
    variants = Table(title="variants (means, 95% intervals over seeds)")
    for column in ("variant", "runs", "final test_accuracy", "best epoch", "s/epoch"):
        variants.add_column(column, justify="left" if column == "variant" else "right")
    for variant in report["variants"]:
        variants.add_row(
            variant["name"],
            f"{len(variant['runs'])}/{len(variant['jobs'])}",
            estimate(variant.get("final_test_accuracy")),
            estimate(variant.get("best_epoch"), 1),
            estimate(variant.get("seconds_per_epoch"), 2),
        )
    if not report["effects"]:
        return variants
    effects = Table(title="effects of each trick on test accuracy (paired by seed)")
    for column in ("trick", "difference", "p", "verdict"):
        effects.add_column(column, justify="right" if column in ("difference", "p") else "left")
    for effect in report["effects"]:
        effects.add_row(
            effect["trick"],
            estimate(effect.get("difference")),
            number(effect.get("p_value"), 3),
            effect["verdict"],
        )
    summaries = [f"• {effect['summary']}" for effect in report["effects"]]
    return Group(variants, "", effects, *summaries)


# ---- the catalogue and the caller ----------------------------------------------------------


def parameter(name: str, schema: dict[str, Any]) -> str:
    """rate=0.5 (0 < rate < 1)."""
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    left = "≤" if "minimum" in schema else "<"
    right = "≤" if "maximum" in schema else "<"
    limits = ""
    if low is not None and high is not None:
        limits = f" ({low} {left} {name} {right} {high})"
    default = (
        str(schema.get("default")).lower()
        if isinstance(schema.get("default"), bool)
        else schema.get("default")
    )
    return f"{name}={default}{limits}"


def tricks(catalogue: dict[str, Any]) -> RenderableType:
    table = Table(caption="--trick NAME or NAME:key=value,…", show_lines=True)
    table.add_column("trick", style="bold")
    table.add_column("parameters (defaults)")
    table.add_column("what it does")
    for trick in catalogue["tricks"]:
        parameters = "\n".join(parameter(n, s) for n, s in trick["parameters"].items())
        table.add_row(trick["name"], parameters, trick["description"])
    return table


def me(user: dict[str, Any]) -> str:
    return f"{user['name']} ({user['role']}), {user['active_jobs']} of {user['quota']} active jobs"

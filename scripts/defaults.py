"""How the trick defaults that depend on the architecture were chosen: on validation accuracy,
never on test. For each architecture, each candidate value of each such parameter trains as the
trick alone on that architecture's default spec, on the same seeds, through a real service and
worker (an explicit study); the value with the best mean final validation accuracy becomes the
default. `make defaults` writes docs/defaults/results.md: the validation accuracies and the
choice, stamped with the date, the command and the commit. Test accuracy is neither shown nor
used.

`--architecture mlp` runs one architecture; `--base '{"epochs": 1}'` overrides the base spec for
a quick look (its figures then choose nothing worth keeping).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

from notebook_study import ROOT, commit_of, follow, stack, stamp

OUT = ROOT / "docs" / "defaults"
# The parameters whose best value depends on the layers they act on, and the candidates.
CANDIDATES: dict[str, list[dict[str, Any]]] = {
    "dropout": [{"rate": rate} for rate in (0.1, 0.25, 0.5)],
    "weight_decay": [{"l2": l2} for l2 in (0.001, 0.01)],
}
SEEDS = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", choices=["mlp", "cnn"], action="append")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("TRICKLAB_DATA_DIR"))
    parser.add_argument("--base", type=json.loads, default={}, help="fields over the base spec")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("the genuine data: --data-dir or TRICKLAB_DATA_DIR (make sets it)")
    architectures = args.architecture or ["mlp", "cnn"]

    started, commit = time.monotonic(), commit_of(args.out.name)
    tables = []
    with (
        tempfile.TemporaryDirectory(prefix="defaults-") as state,
        stack(Path(state), args.data_dir, 1) as (api, alive),
    ):
        for architecture in architectures:
            base = {"architecture": architecture, **args.base}
            variants = [
                [{"name": trick, **value}]
                for trick, values in CANDIDATES.items()
                for value in values
            ]
            study = api.post(
                "/v1/studies",
                json={
                    "name": f"defaults-{architecture}",
                    "design": "explicit",
                    "tricks": [],
                    "variants": variants,
                    "base": base,
                    "repeats": SEEDS,
                },
            )
            if study.status_code != 201:
                print(f"the study was refused: {study.status_code} {study.text}", file=sys.stderr)
                return 2
            summary = follow(api, study.json()["id"], alive)
            if summary["status"] != "succeeded":
                print(f"the {architecture} study {summary['status']}", file=sys.stderr)
                return 1
            report = api.get(f"/v1/studies/{summary['id']}/report").json()
            tables.append((architecture, validation_accuracies(api, report)))
    minutes = (time.monotonic() - started) / 60
    command = "make defaults" + (f" BASE='{json.dumps(args.base)}'" if args.base else "")
    args.out.mkdir(parents=True, exist_ok=True)
    page = results_page(tables, stamp(command, 1, minutes, commit), args.base)
    (args.out / "results.md").write_text(page)
    print(f"wrote {args.out / 'results.md'} ({minutes:.1f} minutes)")
    return 0


def validation_accuracies(api: Any, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant: its trick, parameters and each seed's validation accuracy at the last
    epoch (what the saved model is, with no early stopping)."""
    rows = []
    for variant in report["variants"]:
        (trick,) = variant["spec"]["tricks"]
        accuracies = []
        for job_id in variant["jobs"]:
            epochs = api.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
            accuracies.append(epochs[-1]["val_accuracy"])
        rows.append({"trick": trick, "val_accuracy": accuracies})
    return rows


def choices(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per trick, the parameters with the best mean validation accuracy."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row["trick"]["name"]
        if name not in best or mean(row["val_accuracy"]) > mean(best[name]["val_accuracy"]):
            best[name] = row
    return {name: row["trick"] for name, row in best.items()}


def results_page(
    tables: list[tuple[str, list[dict[str, Any]]]], stamped: str, base: dict[str, Any]
) -> str:
    lines = [
        "# Trick defaults per architecture, chosen on validation",
        "",
        stamped,
        "",
        "Each candidate trained as the only trick on the architecture's default spec "
        f"({'with ' + json.dumps(base) if base else 'every other field at its default'}), "
        f"seeds 0 to {SEEDS - 1}, on the genuine Fashion-MNIST's 60,000 training images, of "
        f"which the first {base.get('validation_size', 10_000):,} are held out for "
        "validation. The figure is the validation accuracy at "
        "the last epoch, mean over the seeds, then each seed's. The best mean becomes the "
        "default (**bold**). Test accuracy was neither looked at nor used.",
    ]
    for architecture, rows in tables:
        chosen = choices(rows)
        lines += [
            "",
            f"## {architecture}",
            "",
            "| trick | parameters | validation accuracy | single seeds |",
            "|---|---|---|---|",
        ]
        for row in rows:
            trick = dict(row["trick"])
            name = trick.pop("name")
            parameters = ", ".join(f"{k} {v}" for k, v in trick.items() if k in _studied(name))
            figure = f"{mean(row['val_accuracy']) * 100:.2f}%"
            if chosen[name] == row["trick"]:
                parameters, figure = f"**{parameters}**", f"**{figure}**"
            seeds = ", ".join(f"{value * 100:.2f}" for value in row["val_accuracy"])
            lines.append(f"| {name} | {parameters} | {figure} | {seeds} |")
    return "\n".join(lines) + "\n"


def _studied(trick: str) -> set[str]:
    return {key for value in CANDIDATES[trick] for key in value}


if __name__ == "__main__":
    sys.exit(main())

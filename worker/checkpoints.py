"""Checkpoints: everything needed to continue a training after an epoch as if it had never
stopped. Plain .npz files (arrays only, no pickles), written atomically by the artifact store.

A checkpoint holds every model variable (weights, batch-norm statistics and the random
generators' states, so dropout masks continue their sequence), every optimizer variable (step
count, moments) and the best-epoch watch (best loss, patience count, best weights). The data
order needs no state: each epoch's order derives from the seed and the epoch number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from worker.tricks import BestEpoch

FORMAT = 1


@dataclass
class Snapshot:
    epoch: int  # the last epoch it contains
    model: list[np.ndarray]
    optimizer: list[np.ndarray]
    watch: BestEpoch

    @classmethod
    def capture(
        cls, epoch: int, model: keras.Model, optimizer: keras.optimizers.Optimizer, watch: BestEpoch
    ) -> Snapshot:
        return cls(
            epoch=epoch,
            model=[keras.ops.convert_to_numpy(v) for v in model.variables],
            optimizer=[keras.ops.convert_to_numpy(v) for v in optimizer.variables],
            # A copy: the training goes on updating its watch after the snapshot is taken.
            watch=replace(watch, best_weights=list(watch.best_weights)),
        )

    def restore(self, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> BestEpoch:
        """Load into a freshly built model of the same spec and its optimizer; returns the
        best-epoch watch to continue with."""
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        _assign(model.variables, self.model, "model")
        _assign(optimizer.variables, self.optimizer, "optimizer")
        return self.watch

    def save(self, path: Path) -> None:
        meta = {
            "format": FORMAT,
            "epoch": self.epoch,
            "patience": self.watch.patience,
            "min_delta": self.watch.min_delta,
            "best_loss": self.watch.best_loss,
            "best_epoch": self.watch.best_epoch,
            "wait": self.watch.wait,
        }
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        for group in ("model", "optimizer"):
            arrays |= {f"{group}/{i}": a for i, a in enumerate(getattr(self, group))}
        arrays |= {f"best/{i}": a for i, a in enumerate(self.watch.best_weights)}
        with path.open("wb") as file:  # a file object: np.savez would append ".npz" to a name
            np.savez(file, **arrays)  # type: ignore[arg-type]  # numpy's stub: allow_pickle

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes())
            if meta["format"] != FORMAT:
                raise ValueError(f"{path}: checkpoint format {meta['format']}, expected {FORMAT}")
            groups = {g: _group(data, g) for g in ("model", "optimizer", "best")}
        watch = BestEpoch(
            patience=meta["patience"],
            min_delta=meta["min_delta"],
            best_loss=meta["best_loss"],
            best_epoch=meta["best_epoch"],
            wait=meta["wait"],
            best_weights=groups["best"],
        )
        return cls(meta["epoch"], groups["model"], groups["optimizer"], watch)


def _group(data: Any, group: str) -> list[np.ndarray]:
    count = sum(1 for key in data.files if key.startswith(f"{group}/"))
    return [data[f"{group}/{i}"] for i in range(count)]


def _assign(variables: list[Any], values: list[np.ndarray], what: str) -> None:
    if len(variables) != len(values):
        raise ValueError(
            f"checkpoint holds {len(values)} {what} variables, the model has "
            f"{len(variables)}: it belongs to another spec"
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)

"""A job trained alone: its model behind an index lookup of the training images on the device
(`steps.Trainer`), fed one epoch's order of indices at a time; the rest of the run (scoring,
recording, checkpoints, early stopping, the worker's steering) is `worker.run`'s."""

from __future__ import annotations

import time

import keras

from core.datasets import Splits
from core.spec import JobSpec
from worker import steps, tricks
from worker.checkpoints import Snapshot
from worker.run import Control, Data, Gather, Report, Run, Trained, epoch_order


def train(
    spec: JobSpec,
    splits: Splits,
    report: Report,
    control: Control | None = None,
    resume: Snapshot | None = None,
) -> Trained:
    """Train from scratch, or from `resume` on. After each epoch, `report(metrics, snapshot)`
    must return True to go on (False: the lease is gone, so LeaseLost). Raises what `Run`
    raises to stop."""
    started = time.perf_counter()
    keras.backend.clear_session()  # fresh layer names and graph state for every job
    keras.utils.set_random_seed(spec.seed)
    run = Run.start(spec, Data.of(splits), report, control or Control(), resume, started)
    trainer = _on_device(run.model, run.data.device_images)
    loss, metrics = tricks.loss_and_metrics(spec)
    trainer.compile(
        optimizer=run.optimizer, loss=loss, metrics=metrics, jit_compile=run.jit_compile
    )
    y_train = run.data.targets(spec)
    for epoch in run.epochs():
        began = time.perf_counter()
        order = epoch_order(spec.seed, epoch, len(y_train))
        logs = steps.train_epoch(
            trainer, order, y_train[order], spec.batch_size, run.control.halted
        )
        if logs is None:
            raise run.halt()
        epoch_logs = {
            "objective": logs["loss"],
            "accuracy": logs["accuracy"],
            "crossentropy": logs[tricks.CROSSENTROPY],
        }
        if run.end_epoch(epoch, epoch_logs, time.perf_counter() - began):
            break
    return run.finish()


def _on_device(model: keras.Model, images: keras.Variable) -> steps.Trainer:
    """The model behind an index → image lookup: trained, never saved."""
    indices = keras.Input(shape=(), dtype="int32", name="index")
    return steps.Trainer(indices, model(Gather(images)(indices)), name="trainer")

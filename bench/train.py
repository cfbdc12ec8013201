"""Training benchmark on the genuine Fashion-MNIST: accuracy, and speed against the notebook's loop.

Each round (3 by default) trains the base model (JobSpec(epochs=E, seed=r): Flatten → Dense 128
ReLU → Dense 32 ReLU → Dense 10 softmax, Adam 0.001, batch 32, the first 10,000 training images
held out for validation; E = 10 by default) three ways, one after another in an order that
moves on by one each round, so that drifting machine load hits all three alike:

- the job: the spec is submitted to a job store (SQLite and an artifact store in a temporary
  folder) and trained by the worker's own loop in this process (`worker.loop.Worker.run_one`,
  what `python -m worker` runs): claim, compile, train, score the validation and test splits
  and write a checkpoint and the epoch's metrics to the database after every epoch, save the
  servable model, record the result. Timed from submit to succeeded.
- the notebook's loop: the notebook's own TensorFlow code (tf.data `.shuffle(1000).batch(32)`,
  a `@tf.function` train step with `tf.GradientTape`, Adam 0.001, sparse cross-entropy, a
  train-accuracy metric) on the same 50,000 scaled images, then the test accuracy once. Timed
  from scaling the images to the test accuracy. Skipped unless Keras runs on TensorFlow.
- plain `model.fit`: what a Keras user writes first: the base model compiled with Keras'
  defaults, one `fit` of E epochs on the arrays (shuffled, batch 32), then one `evaluate` of
  the test split. Timed likewise.

The baselines score the test split once and write nothing; the job scores two splits every
epoch and writes to disk, so the ratios leave the job no advantage it has not earned. Before
the rounds, each side trains once for one epoch, not counted: the worker's first job puts the
data on the device (once in a worker's life: it is printed), and each side's first run in a
process pays one-off set-up.

It prints each round, then the speed ratios (the baseline's seconds / the job's) as the median
with their min and max over the rounds, for the whole job and per epoch (the median epoch
after epoch 1, which traces or compiles; the job's epochs include its validation pass, the
baselines' do not), and the job's test accuracy at the last epoch per seed, as mean ± sd (the
notebook printed 0.8824 for one run).

`--architecture cnn` does the same for the default CNN (two 3×3 conv blocks of 32 and 64
filters with 2×2 max pooling, a dense 128 head): the job against plain `model.fit` of the same
net (`tricks.build_model`), without the notebook's loop, which is the MLP's. `make bench` runs it
for 2 epochs a run: a CNN epoch costs about 100 times an MLP's.

Nothing is asserted: it prints. `make bench` runs it (pointing TRICKLAB_DATA_DIR at
../shared/data/fashion-mnist when that exists); `python -m bench.train --help` lists its options.
"""

from __future__ import annotations

import os

# Fewer TensorFlow start-up lines: TensorFlow reads it when first imported, so it is set before
# the imports below (Keras and the worker import TensorFlow).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from bench.common import Took, data_dir, hush_retracing, order, spread
from core.datasets import Splits, load
from core.images import scale
from core.spec import JobSpec
from jobqueue.artifacts import ArtifactStore
from jobqueue.db import init_db, make_engine
from jobqueue.models import ADMIN
from jobqueue.reads import Reads
from jobqueue.states import JobStatus
from jobqueue.store import JobStore
from worker import tricks
from worker.devices import freeze_imports
from worker.loop import Worker

NOTEBOOK_ACCURACY = 0.8824
MODELS = {"mlp": "base model", "cnn": "default CNN"}
JOB, NOTEBOOK, FIT = "tricklab job", "notebook loop", "plain model.fit"


@dataclass(frozen=True)
class Timed:
    """One side's run in one round."""

    seconds: float  # the whole run
    epochs: list[float]  # each epoch's seconds
    test_accuracy: float  # at the end
    last: dict[str, Any] | None = None  # the job's last metrics row

    @property
    def epoch(self) -> float:
        """The median epoch after the first, which includes tracing (unless it is the only
        one)."""
        return statistics.median(self.epochs[1:] or self.epochs)


class Queue:
    """A job store and a worker in this process, as `python -m worker` runs one."""

    def __init__(self, root: Path, data: Path) -> None:
        engine = make_engine(f"sqlite:///{root / 'tricklab.db'}")
        init_db(engine)
        self.store, self.reads = JobStore(engine), Reads(engine)
        self.worker = Worker(self.store, ArtifactStore(root / "artifacts"), data)

    def job(self, spec: JobSpec) -> Timed:
        started = time.perf_counter()
        job, _ = self.store.enqueue(spec, ADMIN)
        self.worker.run_one()
        done = self.store.get(job.id)
        seconds = time.perf_counter() - started
        if done is None or done.status != JobStatus.SUCCEEDED or done.result is None:
            sys.exit(f"bench: the job ended {done and done.status}: {done and done.error_message}")
        rows = self.reads.metrics(job.id)
        last = {key: getattr(rows[-1], key) for key in ("train_accuracy", "val_accuracy")}
        return Timed(seconds, [row.seconds for row in rows], done.result.test_accuracy, last)


def notebook_loop(splits: Splits, epochs: int, seed: int) -> Timed:
    """The notebook's custom TensorFlow loop, then its test accuracy."""
    import tensorflow as tf  # raw TF only here: this IS the notebook's loop

    started = time.perf_counter()
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    optimizer = keras.optimizers.Adam(0.001)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    train_accuracy = keras.metrics.SparseCategoricalAccuracy()
    x, y = scale(splits.x_train), splits.y_train.astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(1000).batch(32)

    @tf.function
    def train_step(images: Any, labels: Any) -> Any:
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            loss = loss_fn(labels, probabilities)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        train_accuracy.update_state(labels, probabilities)
        return loss

    seconds = []
    for _ in range(epochs):
        began = time.perf_counter()
        for images, labels in dataset:
            train_step(images, labels)
        seconds.append(time.perf_counter() - began)
    predicted = np.argmax(model.predict(scale(splits.x_test), batch_size=1024, verbose=0), axis=1)
    accuracy = float(np.mean(predicted == splits.y_test))
    return Timed(time.perf_counter() - started, seconds, accuracy)


class EpochClock(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._began = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._began = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._began)


def plain_fit(splits: Splits, spec: JobSpec) -> Timed:
    """`model.fit` of the spec's model (its seed, epochs) on the arrays, shuffled, batch 32,
    Keras' default compile settings; then `evaluate` on the test split."""
    started = time.perf_counter()
    keras.backend.clear_session()
    keras.utils.set_random_seed(spec.seed)
    model = tricks.build_model(spec)
    epochs = spec.epochs
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = scale(splits.x_train), splits.y_train.astype(np.int32)
    clock = EpochClock()
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=0, callbacks=[clock])
    _, accuracy = model.evaluate(
        scale(splits.x_test), splits.y_test.astype(np.int32), batch_size=1024, verbose=0
    )
    return Timed(time.perf_counter() - started, clock.seconds, float(accuracy))


def main() -> None:
    took = Took("bench/train.py")
    hush_retracing()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="round r trains seed r (default 3)")
    parser.add_argument("--epochs", type=int, default=10, help="of every run (default 10)")
    parser.add_argument(
        "--architecture", choices=["mlp", "cnn"], default="mlp", help="the default model of each"
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.epochs < 1:
        parser.error("--rounds and --epochs must be at least 1")

    folder = data_dir()
    splits = load("fashion_mnist", folder, JobSpec().validation_size)  # the worker's own copy
    n_train = len(splits.x_train)
    print(f"data: {folder}  ({n_train} train, {len(splits.x_val)} val, {len(splits.x_test)} test)")
    with tempfile.TemporaryDirectory(prefix="tricklab-bench-") as tmp:
        queue = Queue(Path(tmp), folder)
        freeze_imports()  # after Worker() loaded the backend, as `python -m worker` does

        def spec(epochs: int, seed: int) -> JobSpec:
            return JobSpec(architecture=args.architecture, epochs=epochs, seed=seed)

        sides: dict[str, Callable[[int, int], Timed]] = {
            JOB: lambda epochs, seed: queue.job(spec(epochs, seed)),
            FIT: lambda epochs, seed: plain_fit(splits, spec(epochs, seed)),
        }
        if args.architecture != "mlp":
            print("notebook loop skipped: it trains the notebook's MLP only")
        elif keras.backend.backend() == "tensorflow":
            sides[NOTEBOOK] = lambda epochs, seed: notebook_loop(splits, epochs, seed)
        else:
            print("notebook loop skipped: it is TensorFlow code and the Keras backend is not")

        print("warm-up, one epoch each (not counted):", flush=True)
        for name, run in sides.items():
            print(f"  {name:<16} {run(1, 0).seconds:6.1f} s", flush=True)
        print("  (the job's includes putting the data on the device, which a worker does once)\n")

        runs: dict[str, list[Timed]] = {name: [] for name in sides}
        model = MODELS[args.architecture]
        print(f"{args.rounds} rounds, {model}, {args.epochs} epochs:")
        print(f"{'round':>5}  {'side':<16}  {'whole s':>7}  {'epoch s':>7}  {'test acc':>8}")
        for number in range(args.rounds):
            for name in order(list(sides), number):
                timed = sides[name](args.epochs, number)
                runs[name].append(timed)
                print(
                    f"{number + 1:>5}  {name:<16}  {timed.seconds:7.2f}  {timed.epoch:7.3f}  "
                    f"{timed.test_accuracy:8.4f}",
                    flush=True,
                )
        device = queue.worker.device
    summary(runs, model, args.epochs, n_train, device)
    took.report()


def summary(
    runs: dict[str, list[Timed]], model: str, epochs: int, n_train: int, device: str
) -> None:
    jobs = runs[JOB]
    print(f"\n=== summary: {model}, {epochs} epochs, {n_train} training images ===")
    print(f"{'seed':>4}  {'test acc':>8}  {'val acc':>8}  {'train acc':>9}  {'median epoch s':>14}")
    for seed, job in enumerate(jobs):
        last = job.last or {}
        print(
            f"{seed:>4}  {job.test_accuracy:8.4f}  {last['val_accuracy']:8.4f}  "
            f"{last['train_accuracy']:9.4f}  {job.epoch:14.3f}"
        )
    final = [job.test_accuracy for job in jobs]
    sd = statistics.stdev(final) if len(final) > 1 else 0.0
    notebook = f"; notebook: {NOTEBOOK_ACCURACY} for one run" if model == MODELS["mlp"] else ""
    print(
        f"test accuracy at epoch {epochs}: {statistics.mean(final):.4f} ± {sd:.4f} "
        f"(mean ± sample sd over {len(final)} seeds{notebook})"
    )
    print("\ntraining samples/s at batch 32 (median epoch after the first; median over rounds):")
    labels = {
        JOB: "tricklab's job (validation pass included)",
        FIT: FIT,
        NOTEBOOK: "the notebook's loop",
    }
    for name, label in labels.items():
        if name in runs:
            speeds = [n_train / timed.epoch for timed in runs[name]]
            print(f"  {label:<42} {statistics.median(speeds):8.0f}")
    print(
        "\nspeed ratios tricklab / baseline: the baseline's seconds over the job's in each "
        f"round; median (min–max) over {len(jobs)} rounds"
    )
    for name in (NOTEBOOK, FIT):
        if name not in runs:
            continue
        pairs = list(zip(runs[name], jobs, strict=True))
        whole = [base.seconds / job.seconds for base, job in pairs]
        epoch = [base.epoch / job.epoch for base, job in pairs]
        print(f"ratio tricklab / {name}, whole job: {spread(whole, unit='×')}")
        print(f"ratio tricklab / {name}, per epoch: {spread(epoch, unit='×')}")
    seconds = [job.seconds for job in jobs]
    print(f"tricklab job, submit to succeeded: {spread(seconds, unit=' s')}")
    print(
        f"environment: backend {keras.backend.backend()}, device {device}, "
        f"{os.cpu_count()} CPUs, TensorFlow {_tf_version()}, Keras {keras.__version__}"
    )


def _tf_version() -> str:
    try:
        import tensorflow as tf

        return str(tf.__version__)
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    main()

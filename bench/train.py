"""Training benchmark on the genuine Fashion-MNIST: accuracy and speed of the product's trainer.

What it measures, in one process:

1. Accuracy: the base model (JobSpec(epochs=10, seed=s): Flatten → Dense 128 ReLU → Dense 32
   ReLU → Dense 10 softmax, Adam 0.001, batch 32, the first 10,000 training images held out
   for validation) trained for seeds 0, 1, 2 through the product's own
   `worker.training.train`, collecting the per-epoch rows its `report` callable receives.
   It prints the test accuracy at the last epoch per seed and as mean ± sd over the seeds
   (the notebook printed 0.8824 for one run).
2. Baseline speed: the notebook's own TensorFlow loop (tf.data `.shuffle(1000).batch(32)`, a
   `@tf.function` train step with `tf.GradientTape`, Adam 0.001, sparse cross-entropy, a
   train-accuracy metric) on the same 50,000 scaled training images: one warm-up epoch
   (tracing), then TIMED_EPOCHS timed epochs → training samples per second.
3. Plain `model.fit` speed: the base model compiled with Keras' defaults and fit on the
   arrays with shuffle=True, batch 32: what a Keras user writes first. Same timing rule.
4. Product speed: 50,000 / the median epoch `seconds` of the recorded rows (first epochs
   excluded: they include tracing). Those seconds also include the validation pass over
   10,000 images, which the other two do not do, so the ratios are conservative.

Nothing is asserted: it prints. Run it from the repository root with `make bench` (which
points TRICKLAB_DATA_DIR at ../shared/data/fashion-mnist when that exists), or
`python bench/train.py [--seeds N] [--epochs N]` for a quicker run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script whether or not the package is installed
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # fewer TensorFlow start-up lines

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import data_dir  # noqa: E402
from core.datasets import Splits, load  # noqa: E402
from core.images import scale  # noqa: E402
from core.spec import JobSpec  # noqa: E402
from worker import tricks  # noqa: E402
from worker.devices import freeze_imports, setup_device  # noqa: E402
from worker.training import train  # noqa: E402

WARMUP_EPOCHS = 1  # the baseline's first epoch traces its train step (twice: last batch is 16)
TIMED_EPOCHS = 5  # epoch times on a shared 2-core VM vary by ±30 %: take a median
NOTEBOOK_ACCURACY = 0.8824


def notebook_loop(splits: Splits, seed: int = 0) -> tuple[list[float], float]:
    """The notebook's custom TensorFlow loop. Returns the timed epochs' seconds and the test
    accuracy after all its epochs (a sanity check that it learns)."""
    import tensorflow as tf  # raw TF only here: this IS the notebook's loop

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
    for epoch in range(WARMUP_EPOCHS + TIMED_EPOCHS):
        started = time.perf_counter()
        for images, labels in dataset:
            train_step(images, labels)
        elapsed = time.perf_counter() - started
        if epoch >= WARMUP_EPOCHS:
            seconds.append(elapsed)
        print(f"  notebook loop epoch {epoch + 1}: {elapsed:5.1f} s", flush=True)
    predicted = np.argmax(model.predict(scale(splits.x_test), batch_size=1024, verbose=0), axis=1)
    return seconds, float(np.mean(predicted == splits.y_test))


def plain_fit(splits: Splits, seed: int = 0) -> list[float]:
    """What a Keras user writes first: `model.fit` on the arrays, shuffled, batch 32, Keras'
    default compile settings. Returns the timed epochs' seconds."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = tricks.build_model(JobSpec(seed=seed))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = scale(splits.x_train), splits.y_train.astype(np.int32)
    seconds = []
    for epoch in range(WARMUP_EPOCHS + TIMED_EPOCHS):
        started = time.perf_counter()
        model.fit(x, y, batch_size=32, epochs=1, shuffle=True, verbose=0)
        elapsed = time.perf_counter() - started
        if epoch >= WARMUP_EPOCHS:
            seconds.append(elapsed)
        print(f"  plain model.fit epoch {epoch + 1}: {elapsed:5.1f} s", flush=True)
    return seconds


def product_run(spec: JobSpec, splits: Splits) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def report(row: dict[str, Any], _snapshot: object) -> bool:
        rows.append(row)
        print(
            f"  seed {spec.seed} epoch {row['epoch']:2d}: test {row['test_accuracy']:.4f}  "
            f"val {row['val_accuracy']:.4f}  {row['seconds']:5.1f} s",
            flush=True,
        )
        return True

    train(spec, splits, report)
    return rows


def warm_seconds(rows: list[dict[str, Any]]) -> list[float]:
    """Epoch seconds without epoch 1, which includes tracing (unless it is the only one)."""
    return [row["seconds"] for row in rows if row["epoch"] > 1] or [row["seconds"] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per seed (default 10)")
    args = parser.parse_args()
    if args.seeds < 1 or args.epochs < 1:
        parser.error("--seeds and --epochs must be at least 1")

    folder = data_dir()
    device = setup_device()
    freeze_imports()  # as the worker does
    splits = load("fashion_mnist", folder, JobSpec().validation_size)
    n_train = len(splits.x_train)
    print(f"data: {folder}  ({n_train} train, {len(splits.x_val)} val, {len(splits.x_test)} test)")

    baseline = None
    if keras.backend.backend() == "tensorflow":
        print(f"notebook loop: {WARMUP_EPOCHS} warm-up + {TIMED_EPOCHS} timed epochs", flush=True)
        seconds, baseline_accuracy = notebook_loop(splits)
        baseline = n_train / statistics.median(seconds)
    else:
        print("notebook loop skipped: it is TensorFlow code and the Keras backend is not")
    print(f"plain model.fit: {WARMUP_EPOCHS} warm-up + {TIMED_EPOCHS} timed epochs", flush=True)
    plain = n_train / statistics.median(plain_fit(splits))

    runs = {}
    for seed in range(args.seeds):
        print(f"product: JobSpec(epochs={args.epochs}, seed={seed})", flush=True)
        runs[seed] = product_run(JobSpec(epochs=args.epochs, seed=seed), splits)

    product = n_train / statistics.median(s for rows in runs.values() for s in warm_seconds(rows))
    final = [rows[-1]["test_accuracy"] for rows in runs.values()]

    print(f"\n=== summary: base model, {args.epochs} epochs, genuine Fashion-MNIST ===")
    print(f"{'seed':>4}  {'test acc':>8}  {'val acc':>8}  {'train acc':>9}  {'median epoch s':>14}")
    for seed, rows in runs.items():
        last = rows[-1]
        median = statistics.median(warm_seconds(rows))
        print(
            f"{seed:>4}  {last['test_accuracy']:8.4f}  {last['val_accuracy']:8.4f}  "
            f"{last['train_accuracy']:9.4f}  {median:14.2f}"
        )
    sd = statistics.stdev(final) if len(final) > 1 else 0.0
    print(
        f"test accuracy at epoch {args.epochs}: {statistics.mean(final):.4f} ± {sd:.4f} "
        f"(mean ± sample sd over {len(final)} seeds; notebook: {NOTEBOOK_ACCURACY} for one run)"
    )
    print("\ntraining samples/s at batch 32 (median epoch after warm-up):")
    print(f"  tricklab's trainer  {product:8.0f}  (its epoch seconds: validation pass included)")
    print(f"  plain model.fit     {plain:8.0f}")
    if baseline is not None:
        print(
            f"  the notebook's loop {baseline:8.0f}  (test acc {baseline_accuracy:.4f} after "
            f"{WARMUP_EPOCHS + TIMED_EPOCHS} epochs)"
        )
        print(
            f"ratio tricklab / notebook loop: {product / baseline:5.2f}×   "
            f"plain model.fit / notebook loop: {plain / baseline:5.2f}×"
        )
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

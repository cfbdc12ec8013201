"""Classifies pixel arrays with a job's stored model. Knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

import keras
import numpy as np

import core.layers  # noqa: F401  # registers tricklab's layers, which saved models name
from core.images import PixelBudget, convert, decode_plain_png, open_image, scale
from core.spec import DATASET_CLASSES
from jobqueue.artifacts import ArtifactStore, sha256_of
from jobqueue.models import Job
from service.batching import Batcher
from service.inference import Forward, numpy_forward
from service.metrics import ApiMetrics

log = logging.getLogger("tricklab.service")
# Up to this size (a 256×256 picture) decoding takes well under a millisecond.
INLINE_PIXELS = 256 * 256
# A numpy forward pass of up to this many images takes about 50 µs: less than a thread hop.
INLINE_BATCH = 32
# Random images on which a fast forward pass must agree with Keras before it is used.
PROBE_IMAGES = 64


class ModelUnavailable(RuntimeError):
    """The stored model file is missing or does not match the checksum recorded when the
    worker wrote it; it is never loaded then."""


@dataclass(frozen=True)
class Prediction:
    label: int
    class_name: str
    probabilities: np.ndarray  # float32, the model's own output


@dataclass(frozen=True)
class Predictions:
    predictions: list[Prediction]
    batch_size: int  # images in the forward pass these shared with other requests


@dataclass(frozen=True)
class BatchPolicy:  # see TRICKLAB_PREDICT_* in core.config
    window_seconds: float
    max_batch: int
    max_queued: int


@dataclass(frozen=True)
class LoadedModel:
    batcher: Batcher
    class_names: tuple[str, ...]
    runtime: str  # "numpy" (the fast chain of service.inference) or "keras"
    owner: str | None  # who may use it (and admins): checked on every request, from memory

    async def classify(self, pixels: np.ndarray) -> Predictions:
        """pixels: (n, 28, 28), 0–255 → one prediction per image, in order. Raises
        batching.Overloaded when too many images already wait for this model."""
        batched = await self.batcher.run(scale(pixels))
        probabilities = np.asarray(batched.probabilities, dtype=np.float32)
        labels = probabilities.argmax(axis=1).tolist()
        return Predictions(
            [
                Prediction(label, self.class_names[label], row)
                for label, row in zip(labels, probabilities, strict=True)
            ],
            batched.batch_size,
        )


class Predictor:
    """Loads each job's model once, keeps the most recently used ones in memory, and batches
    concurrent requests to the same model. Its coroutines run on one event loop."""

    def __init__(
        self,
        artifacts: ArtifactStore,
        cache_size: int,
        batching: BatchPolicy,
        metrics: ApiMetrics | None = None,
    ) -> None:
        self.artifacts = artifacts
        self.cache_size = cache_size
        self.batching = batching
        self.metrics = metrics
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        # Decoding is CPU-bound: more at once than cores only holds more big images in memory.
        self._decoding = asyncio.Semaphore(os.cpu_count() or 1)

    def loaded(self, job_id: str) -> LoadedModel | None:
        """The job's model if it is in memory. Only a succeeded job's model is ever loaded,
        and a succeeded job never changes, so a hit needs no database read."""
        model = self._models.get(job_id)
        if model is not None:
            self._models.move_to_end(job_id)
        if self.metrics:
            self.metrics.model_cache.labels("miss" if model is None else "hit").inc()
        return model

    def forget(self, job_id: str) -> None:
        """Drop the job's model from memory (its files were deleted)."""
        self._models.pop(job_id, None)

    async def load(self, job: Job) -> LoadedModel:
        """A succeeded job's model, loaded (checksum checked) unless it is in memory already.
        Raises ModelUnavailable."""
        model = self._models.get(job.id)  # not `loaded`: the lookup was counted there
        if model is not None:
            return model
        loading = self._loading.get(job.id)
        if loading is None:  # one load per model, however many requests arrive meanwhile
            loading = asyncio.create_task(self._load(job))
            self._loading[job.id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(job.id, None))
        # A client that goes away must not cancel the load the others wait for.
        return await asyncio.shield(loading)

    async def decode(self, data: bytes, budget: PixelBudget) -> np.ndarray:
        """Image file bytes → 28×28 pixels, charged to the request's `budget`; raises
        core.images.ImageError. A small image is decoded at once (a thread hop would cost
        more); a large one in a thread."""
        pixels = decode_plain_png(data, budget)
        if pixels is not None:
            return pixels
        image = open_image(data, budget)
        if image.width * image.height <= INLINE_PIXELS:
            return convert(image)
        async with self._decoding:
            return await asyncio.to_thread(convert, image)

    async def _load(self, job: Job) -> LoadedModel:
        started = time.perf_counter()
        forward, runtime = await asyncio.to_thread(self._read_model, job)
        if self.metrics:
            self.metrics.model_loads.observe(time.perf_counter() - started)
        loaded = LoadedModel(
            Batcher(
                forward,
                window_seconds=self.batching.window_seconds,
                max_batch=self.batching.max_batch,
                max_queued=self.batching.max_queued,
                inline_max=INLINE_BATCH if runtime == "numpy" else 0,
                on_batch=self.metrics.batch_sizes.observe if self.metrics else lambda size: None,
            ),
            DATASET_CLASSES[job.spec["dataset"]],
            runtime,
            job.owner,
        )
        self._models[job.id] = loaded
        if len(self._models) > self.cache_size:
            self._models.popitem(last=False)
        return loaded

    def _read_model(self, job: Job) -> tuple[Forward, str]:
        if not job.model_path or not job.model_sha256:
            raise ModelUnavailable(f"job {job.id} has no stored model")
        path = self.artifacts.path(job.model_path)
        if not path.is_file():
            raise ModelUnavailable(f"the model file of job {job.id} is missing from the store")
        if sha256_of(path) != job.model_sha256:
            raise ModelUnavailable(
                f"the model file of job {job.id} does not match the checksum recorded at save "
                "time; it will not be loaded"
            )
        # compile=False: inference needs no optimizer; safe_mode refuses arbitrary code.
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
        probe = np.random.default_rng(0).random((PROBE_IMAGES, 28, 28), np.float32)
        expected = model.predict_on_batch(probe)
        fast = numpy_forward(model)
        if fast is not None and np.allclose(fast(probe), expected, rtol=1e-4, atol=1e-6):
            forward, runtime = fast, "numpy"
        else:
            # Warm up: after two batch sizes the traced graph accepts any, so no request
            # pays for tracing (about 0.1 s each).
            model.predict_on_batch(probe[:1])
            forward, runtime = model.predict_on_batch, "keras"
        log.info("job=%s model loaded path=%s runtime=%s", job.id, path, runtime)
        return forward, runtime

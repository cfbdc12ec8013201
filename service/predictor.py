"""Classifies pixel arrays with a job's stored model. Knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import keras
import numpy as np

from core.artifacts import ArtifactStore, sha256_of
from core.images import decode_image, scale
from core.models import Job
from core.spec import DATASET_CLASSES
from service.batching import Batcher

log = logging.getLogger("tricklab.service")


class ModelUnavailable(RuntimeError):
    """The stored model file is missing or does not match the checksum recorded when the
    worker wrote it; it is never loaded then."""


@dataclass(frozen=True)
class Prediction:
    label: int
    class_name: str
    probabilities: list[float]


@dataclass(frozen=True)
class Predictions:
    predictions: list[Prediction]
    batch_size: int  # images in the forward pass these shared with other requests


@dataclass(frozen=True)
class BatchPolicy:
    window_seconds: float = 0.0
    max_batch: int = 256
    max_queued: int = 4096


@dataclass(frozen=True)
class _Served:
    model: keras.Model
    batcher: Batcher
    class_names: tuple[str, ...]


class Predictor:
    """Loads each job's model once, keeps the most recently used ones in memory, and batches
    concurrent requests to the same model. Its coroutines run on one event loop."""

    def __init__(
        self, artifacts: ArtifactStore, cache_size: int = 8, batching: BatchPolicy = BatchPolicy()
    ) -> None:
        self.artifacts = artifacts
        self.cache_size = cache_size
        self.batching = batching
        self._served: OrderedDict[str, _Served] = OrderedDict()
        self._loading: dict[str, asyncio.Task[_Served]] = {}
        # Decoding is CPU-bound: more at once than cores only holds more big images in memory.
        self._decoding = asyncio.Semaphore(os.cpu_count() or 1)

    def is_loaded(self, job_id: str) -> bool:
        """Whether the job's model is in memory (only a succeeded job's model ever is)."""
        return job_id in self._served

    async def decode(self, data: bytes) -> np.ndarray:
        """Image file bytes → 28×28 pixels, in a thread; raises core.images.ImageError."""
        async with self._decoding:
            return await asyncio.to_thread(decode_image, data)

    async def predict(self, job: Job, pixels: np.ndarray) -> Predictions:
        """pixels: (n, 28, 28), 0–255 → one prediction per image, in order. Raises
        ModelUnavailable, or batching.Overloaded when too many images wait for the model."""
        served = await self._model(job)
        batched = await served.batcher.run(scale(pixels))
        probabilities = np.asarray(batched.probabilities, dtype=np.float64)
        labels = probabilities.argmax(axis=1).tolist()
        return Predictions(
            [
                Prediction(label, served.class_names[label], row)
                for label, row in zip(labels, probabilities.tolist(), strict=True)
            ],
            batched.batch_size,
        )

    async def _model(self, job: Job) -> _Served:
        served = self._served.get(job.id)
        if served is not None:
            self._served.move_to_end(job.id)
            return served
        loading = self._loading.get(job.id)
        if loading is None:  # one load per model, however many requests arrive meanwhile
            loading = asyncio.create_task(self._load(job))
            self._loading[job.id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(job.id, None))
        # A client that goes away must not cancel the load the others wait for.
        return await asyncio.shield(loading)

    async def _load(self, job: Job) -> _Served:
        model = await asyncio.to_thread(self._read_model, job)
        served = _Served(
            model,
            Batcher(
                model.predict_on_batch,
                window_seconds=self.batching.window_seconds,
                max_batch=self.batching.max_batch,
                max_queued=self.batching.max_queued,
            ),
            DATASET_CLASSES[job.spec["dataset"]],
        )
        self._served[job.id] = served
        if len(self._served) > self.cache_size:
            self._served.popitem(last=False)
        return served

    def _read_model(self, job: Job) -> keras.Model:
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
        # Warm up: after two batch sizes the traced graph accepts any, so no request pays
        # for tracing (about 0.1 s each).
        for size in (1, 2):
            model.predict_on_batch(np.zeros((size, 28, 28), np.float32))
        log.info("job=%s model loaded path=%s", job.id, path)
        return model

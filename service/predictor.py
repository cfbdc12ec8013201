"""Classifies pixel arrays with a job's stored model. Knows nothing of HTTP."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import keras
import numpy as np

from core.artifacts import ArtifactStore, sha256_of
from core.images import scale
from core.models import Job
from core.spec import DATASET_CLASSES

log = logging.getLogger("tricklab.service")


class ModelUnavailable(RuntimeError):
    """The stored model file is missing or does not match the checksum recorded when the
    worker wrote it; it is never loaded then."""


@dataclass(frozen=True)
class Prediction:
    label: int
    class_name: str
    probabilities: list[float]


class Predictor:
    """Loads each job's model once and keeps the most recently used ones in memory."""

    def __init__(self, artifacts: ArtifactStore, cache_size: int = 8) -> None:
        self.artifacts = artifacts
        self.cache_size = cache_size
        self._models: OrderedDict[str, keras.Model] = OrderedDict()
        self._lock = threading.Lock()

    def predict(self, job: Job, pixels: np.ndarray) -> list[Prediction]:
        """pixels: (n, 28, 28), 0–255 → one prediction per image, in order."""
        model = self.model(job)
        probabilities = np.asarray(model.predict_on_batch(scale(pixels)), dtype=np.float64)
        names = DATASET_CLASSES[job.spec["dataset"]]
        return [
            Prediction(int(np.argmax(p)), names[int(np.argmax(p))], p.tolist())
            for p in probabilities
        ]

    def model(self, job: Job) -> keras.Model:
        with self._lock:  # one load per model, however many requests arrive at once
            if job.id in self._models:
                self._models.move_to_end(job.id)
                return self._models[job.id]
            model = self._load(job)
            self._models[job.id] = model
            if len(self._models) > self.cache_size:
                self._models.popitem(last=False)
            return model

    def _load(self, job: Job) -> keras.Model:
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
        model.predict_on_batch(np.zeros((1, 28, 28), np.float32))  # warm up the graph
        log.info("job=%s model loaded path=%s", job.id, path)
        return model

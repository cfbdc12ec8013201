"""The serving layer: one data plane behind every door that answers predictions (POST
/v1/jobs/{id}/predict, the Open Inference Protocol's infer, the dashboard's upload).

It holds the models in memory, the rule of who may use which, the decoding of image files into
pixels, the batching of concurrent requests and the answer to overload. A door reads its
protocol's request, asks this layer, and translates the ServingError it may raise into its
protocol's answer; it never looks a job or a model up itself, so no door can forget the owner
check. Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio.to_thread
import keras
import numpy as np
from sqlalchemy.exc import SQLAlchemyError

import core.layers  # noqa: F401  # registers tricklab's layers, which saved models name
from core.images import ImageError, PixelBudget, convert, decode_plain_png, open_image, scale
from core.spec import JobSpec
from jobqueue.artifacts import ArtifactStore, sha256_of
from jobqueue.models import Job
from jobqueue.states import JobStatus
from jobqueue.store import JobStore
from service import batching
from service.batching import Batcher
from service.freshness import CACHE_SECONDS
from service.inference import Forward, numpy_forward
from service.schemas import ID_PATTERN

if TYPE_CHECKING:  # a type only: importing it would bring the HTTP stack (its middleware)
    from service.metrics import ApiMetrics

log = logging.getLogger("tricklab.service")
# Up to this size (a 256×256 picture) decoding takes well under a millisecond.
INLINE_PIXELS = 256 * 256
# A numpy forward pass of up to this many images takes about 50 µs: less than a thread hop.
INLINE_BATCH = 32
# Random images on which a fast forward pass must agree with Keras before it is used.
PROBE_IMAGES = 64
# A full queue drains within a few forward passes: a second is long enough to wait.
RETRY_AFTER_SECONDS = 1
# How long a model in memory is served without a look at its job's row: another API process,
# or the retention command, may have deleted its files meanwhile. One read of one row per model
# this often, as the gate re-reads a token.
RECHECK_SECONDS = CACHE_SECONDS
_ID = re.compile(ID_PATTERN)


# -- why a prediction is not served: each door answers these in its own protocol -------------


class ServingError(Exception):
    """A prediction that cannot be served, with the message to give the caller."""


class NotFound(ServingError):
    """No job of that id that the caller may use. Another owner's job is not found either, so
    that the answer does not reveal that it exists."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class MalformedId(NotFound):
    """The name is not a job id at all (32 hex digits): no job can have it."""


class NotReady(ServingError):
    """The job has not succeeded: its model does not exist, yet or ever."""


class Gone(ServingError):
    """The job's files were deleted: its model can no longer be served."""


class Unavailable(ServingError):
    """The stored model file is missing or does not match the checksum recorded when the
    worker wrote it; it is never loaded then."""


class Overloaded(ServingError):
    """Too many images already wait for this model; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadInput(ServingError):
    """An input that cannot be made into pixels: `what` it is, and the `reason`."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what, self.reason = what, reason


# -- the rules --------------------------------------------------------------------------------


class Viewer(Protocol):
    """Whoever asks (service.auth.Caller): what they may see."""

    def may_see(self, owner: str | None) -> bool: ...


def visible_job(store: JobStore, job_id: str, viewer: Viewer) -> Job:
    """The job, if the viewer may see it (an admin, or its owner); NotFound otherwise. Reads
    the database: call it in a thread."""
    job = store.get(job_id)
    if job is None or not viewer.may_see(job.owner):
        raise NotFound(job_id)
    return job


def servable(job: Job) -> None:
    """NotReady unless the job succeeded; Gone once its files were deleted."""
    if job.status != JobStatus.SUCCEEDED:
        raise NotReady(f"job {job.id} is {job.status}: its model exists only once it has succeeded")
    if job.artifacts_deleted_at is not None:
        raise Gone(
            f"the files of job {job.id} were deleted at {job.artifacts_deleted_at.isoformat()}: "
            "its model can no longer be downloaded or served"
        )


def class_names(job: Job) -> tuple[str, ...]:
    """The classes the job's model answers, in the order of its outputs, as its spec names
    them. The stored spec was validated when the job was submitted: it is read as it is, so
    that a model trained under older rules stays servable."""
    return JobSpec.model_construct(**job.spec).class_names


# -- the models -------------------------------------------------------------------------------


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
class ServedModel:
    batcher: Batcher
    class_names: tuple[str, ...]
    runtime: str  # "numpy" (the fast chain of service.inference) or "keras"
    owner: str | None  # who may use it (and admins): checked on every request, from memory

    async def classify(self, pixels: np.ndarray) -> Predictions:
        """pixels: (n, 28, 28), 0–255 → one prediction per image, in order. Raises
        Overloaded when too many images already wait for this model."""
        try:
            batched = await self.batcher.run(scale(pixels))
        except batching.Overloaded as error:
            raise Overloaded(str(error)) from None
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
    """The model cache: loads each job's model once, keeps the most recently used ones in
    memory, and batches concurrent requests to the same model. Its coroutines run on one
    event loop."""

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
        self._models: OrderedDict[str, ServedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Task[ServedModel]] = {}
        self._checked_until: dict[str, float] = {}  # monotonic time, by job id

    def loaded(self, job_id: str) -> ServedModel | None:
        """The job's model if it is in memory. Only a succeeded job's model is ever loaded,
        and a succeeded job changes only when its files are deleted (see `due`)."""
        model = self._models.get(job_id)
        if model is not None:
            self._models.move_to_end(job_id)
        if self.metrics:
            (self.metrics.cache_misses if model is None else self.metrics.cache_hits).inc()
        return model

    def forget(self, job_id: str) -> None:
        """Drop the job's model from memory (its files were deleted)."""
        self._models.pop(job_id, None)
        self._checked_until.pop(job_id, None)

    def due(self, job_id: str) -> bool:
        """Whether the job's row is due for another look (RECHECK_SECONDS since the last);
        if so, the next look is due RECHECK_SECONDS from now, so that one request looks while
        the others are served."""
        now = time.monotonic()
        if now < self._checked_until.get(job_id, 0.0):
            return False
        self._checked_until[job_id] = now + RECHECK_SECONDS
        return True

    async def load(self, job: Job) -> ServedModel:
        """A succeeded job's model, loaded (checksum checked) unless it is in memory already.
        Raises Unavailable."""
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

    async def _load(self, job: Job) -> ServedModel:
        started = time.perf_counter()
        forward, runtime = await asyncio.to_thread(self._read_model, job)
        if self.metrics:
            self.metrics.model_loads.observe(time.perf_counter() - started)
        loaded = ServedModel(
            Batcher(
                forward,
                window_seconds=self.batching.window_seconds,
                max_batch=self.batching.max_batch,
                max_queued=self.batching.max_queued,
                inline_max=INLINE_BATCH if runtime == "numpy" else 0,
                on_batch=self.metrics.batch_sizes.observe if self.metrics else lambda size: None,
            ),
            class_names(job),
            runtime,
            job.owner,
        )
        self._models[job.id] = loaded
        self._checked_until[job.id] = time.monotonic() + RECHECK_SECONDS
        if len(self._models) > self.cache_size:
            self.forget(next(iter(self._models)))
        return loaded

    def _read_model(self, job: Job) -> tuple[Forward, str]:
        if not job.model_path or not job.model_sha256:
            raise Unavailable(f"job {job.id} has no stored model")
        path = self.artifacts.path(job.model_path)
        if not path.is_file():
            raise Unavailable(f"the model file of job {job.id} is missing from the store")
        if sha256_of(path) != job.model_sha256:
            raise Unavailable(
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


# -- the data plane ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelLimits:  # TRICKLAB_MAX_IMAGE_PIXELS and TRICKLAB_MAX_REQUEST_PIXELS
    per_image: int
    per_request: int


class Serving:
    """What every door asks: the model a caller may use, and image files as pixels."""

    def __init__(self, store: JobStore, models: Predictor, limits: PixelLimits) -> None:
        self.store = store
        self.models = models
        self.limits = limits
        # Decoding is CPU-bound: more at once than cores only holds more big images in memory.
        self._decoding = asyncio.Semaphore(os.cpu_count() or 1)

    async def model(self, job_id: str, viewer: Viewer) -> ServedModel:
        """The job's model, ready to classify. From memory when it is loaded and the viewer
        may use it: no database read. Otherwise the job is looked up and its model loaded:
        MalformedId, NotFound, NotReady, Gone or Unavailable when it cannot be served."""
        if not _ID.fullmatch(job_id):  # before the cache, whose lookups the metrics count
            raise MalformedId(job_id)
        model = self.models.loaded(job_id)
        if model is not None and viewer.may_see(model.owner):
            if self.models.due(job_id):
                await self._still_servable(job_id, viewer)
            return model
        return await self.models.load(await self.job(job_id, viewer))

    async def _still_servable(self, job_id: str, viewer: Viewer) -> None:
        """Gone (the model forgotten) once another process has deleted the job's files. A
        database that does not answer leaves the model served from memory, as before."""
        try:
            await self.job(job_id, viewer)
        except ServingError:
            self.models.forget(job_id)
            raise
        except SQLAlchemyError as error:
            log.warning("job=%s could not re-read its row, serving from memory: %s", job_id, error)

    async def job(self, job_id: str, viewer: Viewer) -> Job:
        """The job whose model the viewer asks for, its model not loaded: MalformedId,
        NotFound, NotReady or Gone when it has none to serve them."""
        if not _ID.fullmatch(job_id):
            raise MalformedId(job_id)
        # In anyio's threads, as the routes' own database reads run (FastAPI's thread pool),
        # not in asyncio's executor, whose few threads load the models.
        job = await anyio.to_thread.run_sync(visible_job, self.store, job_id, viewer)
        servable(job)
        return job

    def budget(self) -> PixelBudget:
        """What decoding one request's images may cost."""
        return PixelBudget(self.limits.per_image, self.limits.per_request)

    async def decode(self, data: bytes, budget: PixelBudget, what: str) -> np.ndarray:
        """Image file bytes → 28×28 pixels, charged to the request's `budget`; BadInput
        naming `what` when they are no usable image. A small image is decoded at once (a
        thread hop would cost more); a large one in a thread."""
        try:
            pixels = decode_plain_png(data, budget)
            if pixels is not None:
                return pixels
            image = open_image(data, budget)
            if image.width * image.height <= INLINE_PIXELS:
                return convert(image)
            async with self._decoding:
                return await asyncio.to_thread(convert, image)
        except ImageError as error:
            raise BadInput(what, str(error)) from None

    async def instances(self, instances: Sequence[np.ndarray | bytes]) -> np.ndarray:
        """A predict request's JSON instances as service.bodies reads them (pixel arrays, used
        as they are, or the bytes of image files sent in base64) → (n, 28, 28) pixels."""
        budget = self.budget()
        return np.stack(
            [
                await self.decode(instance, budget, f"instances[{number}].b64")
                if isinstance(instance, bytes)
                else instance
                for number, instance in enumerate(instances)
            ]
        )

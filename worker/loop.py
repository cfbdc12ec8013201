"""The worker's loop: claim a job, or a pack of compatible jobs → (resume) → train, checkpointing
every epoch → finish (or pause, at a search trial's epoch limit), always recording each job's
outcome; a heartbeat per job keeps its lease alive meanwhile."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core import cost, datasets
from core.datasets import Splits
from core.results import EpochRow
from core.spec import JobSpec
from jobqueue.artifacts import ArtifactStore, sha256_of
from jobqueue.models import Job
from jobqueue.pauses import Pauses
from jobqueue.retry import FailureReason
from jobqueue.states import JobStatus
from jobqueue.store import Checkpoint, JobStore, Lease
from jobqueue.sweeper import Sweeper
from worker import metrics, packing, training
from worker.checkpoints import Snapshot
from worker.devices import setup_device
from worker.run import Control, Interrupted, LeaseLost, Outcome, TimedOut, Trained, TrainingDiverged
from worker.servable import servable

log = logging.getLogger("tricklab.worker")


def failure_reason(error: BaseException) -> FailureReason:
    if isinstance(error, datasets.DatasetError):
        return FailureReason.INVALID_DATA
    if isinstance(error, TrainingDiverged):
        return FailureReason.DIVERGED
    if isinstance(error, TimedOut):
        return FailureReason.TIMEOUT
    return FailureReason.ERROR


class Heartbeat(threading.Thread):
    """Renews a lease every `interval` seconds; sets `lost` when the lease is gone."""

    def __init__(self, store: JobStore, lease: Lease, lost: threading.Event, interval: float):
        super().__init__(name=f"heartbeat-{lease.job_id}", daemon=True)
        self.store, self.lease, self.lost, self.interval = store, lease, lost, interval
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                alive = self.store.heartbeat(self.lease)
            except Exception:  # a passing database error: the lease has time left to retry
                log.warning("job=%s heartbeat failed", self.lease.job_id, exc_info=True)
                continue
            if not alive:
                log.warning("job=%s lease lost: stopping at once", self.lease.job_id)
                metrics.LEASES_LOST.inc()
                self.lost.set()
                return
            metrics.RENEWALS.inc()

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Held:
    """A job this worker has claimed: its lease, the heartbeat renewing it, how its training
    is steered, its newest registered checkpoint, and when this attempt began."""

    job: Job
    lease: Lease
    spec: JobSpec
    control: Control
    heartbeat: Heartbeat
    checkpoint: Checkpoint | None
    began: float = field(default_factory=time.monotonic)
    settled: bool = False
    samples: int = 0  # training images an epoch

    def trained_seconds(self) -> float:
        """Over all the job's attempts: what earlier ones recorded, and this one so far."""
        return self.job.trained_seconds + time.monotonic() - self.began


class Worker:
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        data_dir: Path,
        poll_seconds: float = 1.0,
        heartbeat_seconds: float = 10.0,
        sweep_seconds: float = 15.0,
        name: str | None = None,
        pack_size: int = 1,
        pack_memory_bytes: int = 2**30,
        max_job_seconds: float = math.inf,
        on_search_job: Callable[[str], object] | None = None,
    ) -> None:
        """`on_search_job(search_id)`: called once a job of a search has paused, finished,
        failed or been cancelled, for its search to plan what comes next."""
        self.store, self.artifacts, self.data_dir = store, artifacts, data_dir
        self.pauses = Pauses(store)
        self.on_search_job = on_search_job
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.sweep_seconds = sweep_seconds
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.pack_size = pack_size
        self.pack_memory_bytes = pack_memory_bytes
        self.max_job_seconds = max_job_seconds
        self.device = setup_device()
        metrics.DEVICE.info({"device": self.device})
        self._stop = threading.Event()
        self._held: list[Held] = []

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Stop after the current epoch; the running jobs go back to the queue."""
        self._stop.set()
        for held in self._held:
            held.control.stop_requested.set()

    def run(self, once: bool = False) -> None:
        """Train jobs until asked to stop; with `once`, train at most one job (or pack) and
        return."""
        log.info("worker=%s started device=%r pack_size=%d", self.name, self.device, self.pack_size)
        sweeper = Sweeper(self.store, self.sweep_seconds)
        sweeper.start()
        try:
            while not self.stopping:
                try:
                    if self.run_one() and not once:
                        continue
                except Exception:  # the database went away for a moment, say: not the end
                    log.exception(
                        "worker=%s could not claim or settle jobs; trying again", self.name
                    )
                if once:
                    break
                self._stop.wait(self.poll_seconds)
        finally:
            sweeper.stop()
        log.info("worker=%s stopped", self.name)

    def run_one(self) -> bool:
        """Claim a job, or up to `pack_size` compatible ones, and train them (together when
        there are several); False if the queue was empty."""
        claimed = self.store.claim_pack(self.name, self.device, self.pack_size, self._pack_key)
        if not claimed:
            return False
        metrics.PACK_SIZE.observe(len(claimed))
        held = self._held = [
            one for job, lease in claimed if (one := self._hold(job, lease, len(claimed)))
        ]
        if self.stopping:  # a signal that came while they were being claimed
            self.request_stop()
        try:
            if held:
                self._train(held)
        except BaseException:  # a second signal or SystemExit: hand the jobs back, then go
            for one in held:
                if not one.settled and self.store.release(one.lease):
                    log.warning(
                        "job=%s handed back to the queue: worker stopped at once", one.job.id
                    )
            raise
        finally:
            for one in held:
                one.heartbeat.stop()
            self._held = []
        return True

    def _hold(self, job: Job, lease: Lease, pack: int) -> Held | None:
        """Start holding a claimed job; None if its stored spec cannot be read, which fails
        the job alone (reason invalid_spec)."""
        log.info(
            "job=%s claimed worker=%s attempt=%d checkpoint_epoch=%s pack=%d",
            job.id,
            self.name,
            lease.attempt,
            job.checkpoint_epoch,
            pack,
        )
        try:
            spec = JobSpec.model_validate(job.spec)
        except ValidationError as error:
            status = self.store.fail(lease, FailureReason.INVALID_SPEC, _unreadable(error))
            metrics.FAILURES.labels(FailureReason.INVALID_SPEC.value).inc()
            log.error("job=%s has an invalid spec (%s); job now %s", job.id, error, status)
            self._tell_search(job)
            return None
        deadline = time.monotonic() + self.max_job_seconds - job.trained_seconds
        control = Control(
            time_limit=self.max_job_seconds, deadline=deadline, epoch_limit=job.epoch_limit
        )
        heartbeat = Heartbeat(self.store, lease, control.lease_lost, self.heartbeat_seconds)
        heartbeat.start()
        return Held(job, lease, spec, control, heartbeat, _registered(job))

    def _pack_key(self, document: dict[str, Any]) -> tuple[str, int] | None:
        """Which jobs train together, and how many of them fit the memory budget."""
        try:
            spec = JobSpec.model_validate(document)
        except ValidationError:
            return None  # alone: it fails as invalid_spec once held
        key = packing.pack_key(spec)
        if key is None:
            return None
        # At least the job itself: one that alone needs more than the budget (admitted under
        # other limits) still trains, alone.
        return key, max(1, self.pack_memory_bytes // cost.memory_bytes(spec))

    def _train(self, held: list[Held]) -> None:
        """Train the held jobs (all of one pack key), each settled as soon as it ends."""
        spec = held[0].spec
        try:
            splits = datasets.load(spec.dataset, self.data_dir, spec.validation_size)
        except Exception as error:
            for one in held:
                self._settle(one, error)
            return
        for one in held:
            one.samples = len(splits.y_train)
        # A pack trains from one epoch: a job whose checkpoint proved unusable starts apart.
        by_epoch: dict[int, list[tuple[Held, Snapshot | None]]] = {}
        for one in held:
            try:
                resume = self._resume(one)
            except Exception as error:
                self._settle(one, error)
                continue
            by_epoch.setdefault(resume.epoch if resume else 0, []).append((one, resume))
        for group in by_epoch.values():
            if not self.stopping:
                self._train_group(group, splits)
                continue
            for one, _ in group:  # not started yet: back to the queue without an epoch
                self._settle(one, Interrupted())

    def _train_group(self, group: list[tuple[Held, Snapshot | None]], splits: Splits) -> None:
        """One job alone, or several as one pack."""
        if len(group) == 1:
            ((one, resume),) = group
            try:
                outcome: Outcome = training.train(
                    one.spec, splits, partial(self._record, one), one.control, resume
                )
            except Exception as error:
                outcome = error
            self._settle(one, outcome)
            return
        branches = [
            packing.Branch(one.spec, partial(self._record, one), one.control, resume)
            for one, resume in group
        ]
        try:
            packing.train_pack(
                branches, splits, ended=lambda k, outcome: self._settle(group[k][0], outcome)
            )
        except Exception as error:  # whatever ended the pack ends its unsettled jobs
            for one, _ in group:
                if not one.settled:
                    self._settle(one, error)

    def _settle(self, held: Held, outcome: Outcome) -> None:
        """Record how a job's attempt ended: finished, paused, handed back to the queue,
        retried or failed; nothing when its lease is gone."""
        job, lease = held.job, held.lease
        ended = self._finish(held, outcome) if isinstance(outcome, Trained) else outcome
        how = "paused" if isinstance(outcome, Trained) and outcome.paused else "succeeded"
        if isinstance(ended, LeaseLost):
            how = "lost"
            log.info("job=%s cancelled or taken over: stopped without writing more", job.id)
        elif isinstance(ended, Interrupted):
            if self.store.release(lease):
                how = "handed_back"
                log.info("job=%s handed back to the queue: the worker is stopping", job.id)
            else:
                how = "lost"
                log.info("job=%s cancelled meanwhile: nothing to hand back", job.id)
        elif ended is not None:
            reason = failure_reason(ended)
            status = self.store.fail(lease, reason, ended)
            metrics.FAILURES.labels(reason.value).inc()
            how = {JobStatus.FAILED: "failed", JobStatus.QUEUED: "retried", None: "lost"}[status]
            log.error(
                "job=%s attempt %d failed (%s: %s: %s); job now %s",
                job.id,
                lease.attempt,
                reason,
                type(ended).__name__,
                ended,
                status,
                exc_info=ended,
            )
        metrics.JOB_SECONDS.labels(how).observe(time.monotonic() - held.began)
        held.settled = True
        held.heartbeat.stop()
        if how != "handed_back":
            self._tell_search(job)

    def _tell_search(self, job: Job) -> None:
        """Let the search a job belongs to plan on, now that the job has settled; whatever
        goes wrong there is logged, and the worker goes on."""
        if job.search_id is None or self.on_search_job is None:
            return
        try:
            self.on_search_job(job.search_id)
        except Exception:
            log.exception("search=%s could not plan after job=%s settled", job.search_id, job.id)

    def _record(self, held: Held, row: EpochRow, snapshot: Snapshot) -> bool:
        """Checkpoint an epoch and store its metrics with the checkpoint; False if the lease
        is gone. The job's previous checkpoint file goes once the new one is registered."""
        job, lease = held.job, held.lease
        name = self.artifacts.attempt_file(job.id, lease.token, f"checkpoint-{row.epoch}.npz")
        new = Checkpoint(row.epoch, name, self.artifacts.write_atomic(name, snapshot.save))
        if not self.store.record_epoch(lease, row, new, held.trained_seconds()):
            self.artifacts.remove(name)
            return False
        if held.checkpoint is not None:
            self.artifacts.remove(held.checkpoint.path)
        held.checkpoint = new
        _log_epoch(job.id, held.spec, row)
        metrics.EPOCHS.inc()
        metrics.SAMPLES.inc(held.samples)
        if row.seconds > 0:  # a pack's jobs all train in its epoch's seconds
            metrics.SAMPLES_PER_SECOND.set(held.samples * len(self._held) / row.seconds)
        return True

    def _finish(self, held: Held, trained: Trained) -> Exception | None:
        """Store a trained job's model and result: it is finished, or paused at its epoch
        limit. None once it is, else what stopped it: an error, or LeaseLost when the store
        no longer lets it end so."""
        job, lease = held.job, held.lease
        try:
            model_path, digest = _save_model(self.artifacts, held, trained)
            held.heartbeat.stop()  # before the final write: it cannot take the end for a loss
            result, best_epoch = trained.result, trained.best_epoch
            if trained.paused:
                ended = self.pauses.pause(lease, result, best_epoch, model_path, digest)
            else:
                ended = self.store.finish(
                    lease, result, best_epoch, trained.stopped_epoch, model_path, digest
                )
            if not ended:
                for name in ("model.keras", "spec.json"):
                    self.artifacts.remove(self.artifacts.attempt_file(job.id, lease.token, name))
                return LeaseLost()
        except Exception as error:
            return error
        _log_end(job.id, trained)
        return None

    def _resume(self, held: Held) -> Snapshot | None:
        """The job's registered checkpoint; if it is gone or damaged, the job starts over
        from epoch 1 rather than failing."""
        job, lease, checkpoint = held.job, held.lease, held.checkpoint
        if checkpoint is None:
            return None
        path = self.artifacts.path(checkpoint.path)
        try:
            if sha256_of(path) != checkpoint.sha256:
                raise ValueError("its checksum does not match")
            snapshot = Snapshot.load(path)
        except (OSError, ValueError) as error:
            log.warning(
                "job=%s checkpoint %s unusable (%s): starting over from epoch 1",
                job.id,
                checkpoint.path,
                error,
            )
            if not self.store.forget_checkpoint(lease):
                raise LeaseLost from None
            return None
        log.info("job=%s resuming after epoch %d", job.id, checkpoint.epoch)
        return snapshot


def _save_model(artifacts: ArtifactStore, held: Held, trained: Trained) -> tuple[str, str]:
    """Save a trained job's model in its attempt's folder, with the spec and result beside it;
    the model's path and SHA-256."""
    job, lease = held.job, held.lease
    path = artifacts.attempt_file(job.id, lease.token, "model.keras")
    # Saved with standard Keras layers only: the file loads in plain Keras, and serves.
    digest = artifacts.write_atomic(path, servable(trained.model).save)
    artifacts.write_json(
        artifacts.attempt_file(job.id, lease.token, "spec.json"),
        {
            "job_id": job.id,
            "spec": job.spec,
            "result": trained.result.model_dump(mode="json"),
            "class_names": list(held.spec.class_names),
            "model_sha256": digest,
        },
    )
    return path, digest


def _log_end(job_id: str, trained: Trained) -> None:
    log.info(
        "job=%s %s epochs=%d best_epoch=%s stopped_epoch=%s test_accuracy=%.4f "
        "test_loss=%.4f seconds=%.1f",
        job_id,
        "paused" if trained.paused else "succeeded",
        trained.result.epochs_trained,
        trained.best_epoch,
        trained.stopped_epoch,
        trained.result.test_accuracy,
        trained.result.test_loss,
        trained.result.seconds,
    )


def _unreadable(error: ValidationError) -> ValueError:
    problems = "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in error.errors()
    )
    return ValueError(f"the stored spec is not a valid job spec: {problems}")


def _registered(job: Job) -> Checkpoint | None:
    if job.checkpoint_epoch is None or not job.checkpoint_path or not job.checkpoint_sha256:
        return None
    return Checkpoint(job.checkpoint_epoch, job.checkpoint_path, job.checkpoint_sha256)


def _log_epoch(job_id: str, spec: JobSpec, row: EpochRow) -> None:
    log.info(
        "job=%s epoch=%d/%d train_loss=%.4f train_accuracy=%.4f val_loss=%s val_accuracy=%s "
        "test_loss=%.4f test_accuracy=%.4f learning_rate=%.3g seconds=%.2f",
        job_id,
        row.epoch,
        spec.epochs,
        row.train_loss,
        row.train_accuracy,
        _fmt(row.val_loss),
        _fmt(row.val_accuracy),
        row.test_loss,
        row.test_accuracy,
        row.learning_rate,
        row.seconds,
    )


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"

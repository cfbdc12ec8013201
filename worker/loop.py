"""The worker's loop: claim → (resume) → train, checkpointing every epoch → finish, always
recording the outcome; a heartbeat keeps the lease alive meanwhile."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

from core.artifacts import ArtifactStore, sha256_of
from core.models import Job
from core.retry import FailureReason
from core.spec import JobSpec
from core.store import Checkpoint, JobStore, Lease
from core.sweeper import Sweeper
from worker import datasets, training
from worker.checkpoints import Snapshot
from worker.devices import setup_device

log = logging.getLogger("tricklab.worker")


def failure_reason(error: BaseException) -> FailureReason:
    if isinstance(error, datasets.DatasetError):
        return FailureReason.INVALID_DATA
    if isinstance(error, training.TrainingDiverged):
        return FailureReason.DIVERGED
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
                self.lost.set()
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


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
    ) -> None:
        self.store, self.artifacts, self.data_dir = store, artifacts, data_dir
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.sweep_seconds = sweep_seconds
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.device = setup_device()
        self._stop = threading.Event()
        self._control: training.Control | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Stop after the current epoch; the running job goes back to the queue."""
        self._stop.set()
        if self._control is not None:
            self._control.stop_requested.set()

    def run(self, once: bool = False) -> None:
        """Train jobs until asked to stop; with `once`, train at most one job and return."""
        log.info("worker=%s started device=%r", self.name, self.device)
        sweeper = Sweeper(self.store, self.sweep_seconds)
        sweeper.start()
        try:
            while not self.stopping:
                if self.run_one() and not once:
                    continue
                if once:
                    break
                self._stop.wait(self.poll_seconds)
        finally:
            sweeper.stop()
        log.info("worker=%s stopped", self.name)

    def run_one(self) -> bool:
        """Claim and train one job; False if the queue was empty."""
        claimed = self.store.claim(self.name, self.device)
        if claimed is None:
            return False
        job, lease = claimed
        log.info(
            "job=%s claimed worker=%s attempt=%d checkpoint_epoch=%s",
            job.id,
            self.name,
            lease.attempt,
            job.checkpoint_epoch,
        )
        control = self._control = training.Control()
        if self.stopping:
            control.stop_requested.set()
        heartbeat = Heartbeat(self.store, lease, control.lease_lost, self.heartbeat_seconds)
        heartbeat.start()
        try:
            self._train(job, lease, control, heartbeat)
        except training.LeaseLost:
            log.info("job=%s cancelled or taken over: stopped without writing more", job.id)
        except training.Interrupted:
            if self.store.release(lease):
                log.info("job=%s handed back to the queue: the worker is stopping", job.id)
            else:
                log.info("job=%s cancelled meanwhile: nothing to hand back", job.id)
        except Exception as error:
            reason = failure_reason(error)
            status = self.store.fail(lease, reason, error)
            log.exception(
                "job=%s attempt %d failed (%s: %s: %s); job now %s",
                job.id,
                lease.attempt,
                reason,
                type(error).__name__,
                error,
                status,
            )
        except BaseException:  # a second signal or SystemExit: hand the job back, then go
            self.store.release(lease)
            log.warning("job=%s handed back to the queue: worker stopped at once", job.id)
            raise
        finally:
            heartbeat.stop()
            self._control = None
        return True

    def _train(
        self, job: Job, lease: Lease, control: training.Control, heartbeat: Heartbeat
    ) -> None:
        spec = JobSpec.model_validate(job.spec)
        splits = datasets.load(spec.dataset, self.data_dir, spec.validation_size)
        resume = self._resume(job, lease)
        checkpoint = _registered(job)  # replaced (and removed) by the first new one

        def record(row: dict[str, Any], snapshot: Snapshot) -> bool:
            nonlocal checkpoint
            name = self.artifacts.attempt_file(
                job.id, lease.token, f"checkpoint-{row['epoch']}.npz"
            )
            new = Checkpoint(row["epoch"], name, self.artifacts.write_atomic(name, snapshot.save))
            if not self.store.record_epoch(lease, row, new):
                self.artifacts.remove(name)
                return False
            if checkpoint is not None:
                self.artifacts.remove(checkpoint.path)
            checkpoint = new
            _log_epoch(job.id, spec, row)
            return True

        trained = training.train(spec, splits, record, control, resume)
        model_path = self.artifacts.attempt_file(job.id, lease.token, "model.keras")
        digest = self.artifacts.write_atomic(model_path, trained.model.save)
        self.artifacts.write_json(
            self.artifacts.attempt_file(job.id, lease.token, "spec.json"),
            {
                "job_id": job.id,
                "spec": job.spec,
                "result": trained.result,
                "class_names": list(spec.class_names),
                "model_sha256": digest,
            },
        )
        heartbeat.stop()  # before the final write, so it cannot mistake the end for a loss
        if not self.store.finish(
            lease,
            result=trained.result,
            best_epoch=trained.best_epoch,
            stopped_epoch=trained.stopped_epoch,
            model_path=model_path,
            model_sha256=digest,
        ):
            for name in ("model.keras", "spec.json"):
                self.artifacts.remove(self.artifacts.attempt_file(job.id, lease.token, name))
            raise training.LeaseLost
        log.info(
            "job=%s succeeded epochs=%d best_epoch=%s stopped_epoch=%s test_accuracy=%.4f "
            "test_loss=%.4f seconds=%.1f",
            job.id,
            trained.result["epochs_trained"],
            trained.best_epoch,
            trained.stopped_epoch,
            trained.result["test_accuracy"],
            trained.result["test_loss"],
            trained.result["seconds"],
        )

    def _resume(self, job: Job, lease: Lease) -> Snapshot | None:
        """The job's registered checkpoint; if it is gone or damaged, the job starts over
        from epoch 1 rather than failing."""
        checkpoint = _registered(job)
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
                raise training.LeaseLost from None
            return None
        log.info("job=%s resuming after epoch %d", job.id, checkpoint.epoch)
        return snapshot


def _registered(job: Job) -> Checkpoint | None:
    if job.checkpoint_epoch is None or not job.checkpoint_path or not job.checkpoint_sha256:
        return None
    return Checkpoint(job.checkpoint_epoch, job.checkpoint_path, job.checkpoint_sha256)


def _log_epoch(job_id: str, spec: JobSpec, row: dict[str, Any]) -> None:
    log.info(
        "job=%s epoch=%d/%d train_loss=%.4f train_accuracy=%.4f val_loss=%s val_accuracy=%s "
        "test_loss=%.4f test_accuracy=%.4f learning_rate=%.3g seconds=%.2f",
        job_id,
        row["epoch"],
        spec.epochs,
        row["train_loss"],
        row["train_accuracy"],
        _fmt(row["val_loss"]),
        _fmt(row["val_accuracy"]),
        row["test_loss"],
        row["test_accuracy"],
        row["learning_rate"],
        row["seconds"],
    )


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"

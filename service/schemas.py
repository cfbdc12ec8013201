"""Request and response bodies of the v1 API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from core.models import EpochMetrics, Job
from core.spec import JobSpec
from core.states import JobStatus


class JobError(BaseModel):
    reason: str | None = Field(
        description="worker_lost, invalid_data, diverged or error (see the README)."
    )
    type: str = Field(description="The error's class, e.g. DatasetError, WorkerLost.")
    message: str


class AttemptFailure(BaseModel):
    attempt: int
    reason: str
    worker: str | None
    error_type: str
    message: str
    at: datetime


class JobResult(BaseModel):
    """The saved model's scores, evaluated once training ended (dropout off, best weights
    restored when early stopping was on)."""

    epochs_trained: int
    parameters: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    test_loss: float
    test_accuracy: float
    seconds: float = Field(description="Wall time of the whole training, evaluation included.")


class JobLinks(BaseModel):
    self: str
    metrics: str
    cancel: str
    model: str
    predict: str


class JobRead(BaseModel):
    id: str
    status: JobStatus
    spec: JobSpec = Field(description="The resolved spec: every default filled in.")
    attempts: int = Field(description="Times a worker claimed the job.")
    max_attempts: int = Field(description="Failed attempts allowed before the job fails.")
    failures: list[AttemptFailure] = Field(description="Each failed attempt, oldest first.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_expires_at: datetime | None = Field(
        description="While running: when the job returns to the queue unless its worker's "
        "heartbeat renews the lease."
    )
    heartbeat_at: datetime | None
    epochs_done: int
    epochs_total: int
    checkpoint_epoch: int | None = Field(description="A retry resumes after this epoch.")
    best_epoch: int | None = Field(description="Epoch with the lowest validation loss.")
    stopped_epoch: int | None = Field(description="Epoch at which early stopping ended the run.")
    result: JobResult | None
    error: JobError | None
    device: str | None = Field(description="What the job trained on, e.g. 'GPU:0 NVIDIA H200'.")
    worker: str | None
    links: JobLinks

    @classmethod
    def of(cls, job: Job) -> JobRead:
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            status=job.status,
            spec=JobSpec.model_validate(job.spec),
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            failures=[AttemptFailure.model_validate(f) for f in job.failures],
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            lease_expires_at=job.lease_expires_at,
            heartbeat_at=job.heartbeat_at,
            epochs_done=job.epochs_done,
            epochs_total=job.spec["epochs"],
            checkpoint_epoch=job.checkpoint_epoch,
            best_epoch=job.best_epoch,
            stopped_epoch=job.stopped_epoch,
            result=JobResult.model_validate(job.result) if job.result else None,
            error=JobError(
                reason=job.failure_reason, type=job.error_type, message=job.error_message or ""
            )
            if job.error_type
            else None,
            device=job.device,
            worker=job.worker,
            links=JobLinks(
                self=base,
                metrics=f"{base}/metrics",
                cancel=f"{base}/cancel",
                model=f"{base}/model",
                predict=f"{base}/predict",
            ),
        )


class JobList(BaseModel):
    jobs: list[JobRead]
    total: int = Field(description="Jobs matching the filter, on all pages.")
    limit: int
    offset: int


class EpochRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int = Field(description="From 1.")
    train_loss: float = Field(description="Cross-entropy, averaged over the epoch's steps.")
    train_accuracy: float
    train_objective: float = Field(
        description="The loss minimised: cross-entropy plus L2 penalty, with label smoothing."
    )
    val_loss: float | None
    val_accuracy: float | None
    test_loss: float
    test_accuracy: float
    learning_rate: float = Field(description="At the end of the epoch.")
    seconds: float = Field(description="Training and validation time of the epoch.")


class MetricsRead(BaseModel):
    job_id: str
    status: JobStatus
    epochs: list[EpochRead]

    @classmethod
    def of(cls, job: Job, rows: list[EpochMetrics]) -> MetricsRead:
        return cls(
            job_id=job.id, status=job.status, epochs=[EpochRead.model_validate(r) for r in rows]
        )


Pixel = Annotated[float, Field(ge=0, le=255, allow_inf_nan=False)]
Row = Annotated[list[Pixel], Field(min_length=28, max_length=28)]
Pixels = Annotated[list[Row], Field(min_length=28, max_length=28)]


class PredictInstances(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[Pixels] = Field(
        min_length=1, description="28×28 grayscale pixel arrays, 0–255, light on dark."
    )


class PredictionRead(BaseModel):
    label: int
    class_name: str
    probabilities: list[float] = Field(description="One per class, summing to 1.")


class PredictResponse(BaseModel):
    job_id: str
    predictions: list[PredictionRead]


class TrickInfo(BaseModel):
    name: str
    description: str
    parameters: dict[str, dict[str, Any]] = Field(
        description="JSON schema of each parameter: type, default, limits, description."
    )


class TrickCatalogue(BaseModel):
    tricks: list[TrickInfo]

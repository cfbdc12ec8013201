"""Request and response bodies of the v1 API, and of the Open Inference Protocol (/v2)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import Query
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    WithJsonSchema,
)

from analysis.plots import PlotName
from analysis.report import ReportRead, progress, study_status
from core.results import EpochRow, JobResult
from core.spec import JobSpec
from jobqueue.models import EpochMetrics, Job, Search, Study
from jobqueue.states import JobStatus
from search.plots import PlotName as SearchPlotName
from search.report import BestTrial

# Ids are uuid4 hex: anything else names nothing, and is refused before the database is asked.
ID_PATTERN = "^[0-9a-f]{32}$"
# The start of an id, as the dashboard and narrow tables show it (8 digits) or shorter: at least
# 4, as git asks of a short commit id, so that one names a handful of items, not a page.
ID_PREFIX_PATTERN = "^[0-9a-f]{4,32}$"
IdPrefix = Annotated[
    str | None,
    Query(
        pattern=ID_PREFIX_PATTERN,
        description="Only those whose id starts with these 4 to 32 lowercase hex digits (a "
        "short id, as the dashboard shows it, names the items it starts).",
    ),
]
# A body of bytes (a file), as OpenAPI 3.1 describes one.
BINARY = {"type": "string", "format": "binary"}


class Error(BaseModel):
    """The body of every error response but a validation error: what went wrong, and what to
    do about it."""

    detail: str


class ValidationIssue(BaseModel):
    """One invalid field: where it is, and what is wrong with it and what is allowed."""

    loc: list[str | int] = Field(description="Where, as FastAPI locates it: ['body', 'epochs'].")
    field: str = Field(description="Where, as a path: 'tricks[0].rate'.")
    msg: str = Field(description="What is wrong and what is allowed, starting with the field.")
    type: str = Field(description="The kind of problem, e.g. less_than_equal, over_limit.")
    ctx: dict[str, Any] | None = Field(
        None, description="The limit and value involved, where there are some."
    )


class ValidationErrors(BaseModel):
    """A 422: every invalid field of the request."""

    detail: list[ValidationIssue]


class JobError(BaseModel):
    reason: str | None = Field(
        description="worker_lost, invalid_data, diverged or error (see the README)."
    )
    type: str = Field(description="The error's class, e.g. DatasetError, WorkerLost.")
    message: str


class AttemptFailure(BaseModel):
    attempt: int
    reason: str
    worker: str | None = Field(description="Shown to admins only.")
    error_type: str
    message: str
    at: datetime


class JobLinks(BaseModel):
    self: str
    metrics: str
    cancel: str
    model: str
    model_metadata: str
    predict: str
    study: str | None = Field(description="The study the job was made for, if any.")


class JobRead(BaseModel):
    id: str
    owner: str | None = Field(description="The name of the user who submitted it.")
    status: JobStatus
    spec: JobSpec | dict[str, Any] = Field(
        union_mode="left_to_right",
        description="The resolved spec: every default filled in. A spec stored by an older "
        "tricklab that no longer parses is shown as stored; its job fails with reason "
        "invalid_spec.",
    )
    attempts: int = Field(
        description="Attempts so far, the running one included. A worker that stops hands its "
        "attempt back to the queue, and it goes on when the job is claimed again."
    )
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
    epochs_total: int | None = Field(description="None when the stored spec no longer parses.")
    epoch_limit: int | None = Field(
        description="A search's trial trains up to this epoch, then pauses (status paused) "
        "until its search resumes it or ends it there; null: it trains every epoch."
    )
    checkpoint_epoch: int | None = Field(description="A retry resumes after this epoch.")
    best_epoch: int | None = Field(description="Epoch with the lowest validation loss.")
    stopped_epoch: int | None = Field(
        description="Epoch at which early stopping, or the job's search, ended the run."
    )
    result: JobResult | None
    error: JobError | None
    device: str | None = Field(description="What the job trained on, e.g. 'GPU:0 NVIDIA H200'.")
    worker: str | None = Field(
        description="The host and process of the worker that holds or held it: shown to "
        "admins only (null for everyone else)."
    )
    trained_seconds: float = Field(
        description="Wall-clock seconds of training over all attempts, up to the last "
        "checkpoint; TRICKLAB_MAX_JOB_SECONDS bounds it."
    )
    artifacts_deleted_at: datetime | None = Field(
        description="When the job's files (checkpoints, model) were deleted; the job and its "
        "metrics stay."
    )
    metrics_archived_at: datetime | None = Field(
        description="When the retention policy archived the job's epoch metrics and removed "
        "them from the database (TRICKLAB_RETAIN_METRICS_DAYS)."
    )
    links: JobLinks

    @classmethod
    def of(cls, job: Job, admin: bool) -> JobRead:
        """The job as `admin` or its owner may see it (only admins see where it ran)."""
        base = f"/v1/jobs/{job.id}"
        try:
            spec: JobSpec | dict[str, Any] = JobSpec.model_validate(job.spec)
        except ValidationError:
            spec = job.spec
        return cls(
            id=job.id,
            owner=job.owner,
            status=job.status,
            spec=spec,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            failures=[
                AttemptFailure.model_validate(f if admin else {**f, "worker": None})
                for f in job.failures
            ],
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            lease_expires_at=job.lease_expires_at,
            heartbeat_at=job.heartbeat_at,
            epochs_done=job.epochs_done,
            epochs_total=spec.epochs if isinstance(spec, JobSpec) else None,
            epoch_limit=job.epoch_limit,
            checkpoint_epoch=job.checkpoint_epoch,
            best_epoch=job.best_epoch,
            stopped_epoch=job.stopped_epoch,
            result=job.result,
            error=JobError(
                reason=job.failure_reason, type=job.error_type, message=job.error_message or ""
            )
            if job.error_type
            else None,
            device=job.device,
            worker=job.worker if admin else None,
            trained_seconds=job.trained_seconds,
            artifacts_deleted_at=job.artifacts_deleted_at,
            metrics_archived_at=job.metrics_archived_at,
            links=JobLinks(
                self=base,
                metrics=f"{base}/metrics",
                cancel=f"{base}/cancel",
                model=f"{base}/model",
                model_metadata=f"{base}/model/metadata",
                predict=f"{base}/predict",
                study=f"/v1/studies/{job.study_id}" if job.study_id else None,
            ),
        )


class JobList(BaseModel):
    jobs: list[JobRead]
    total: int | None = Field(
        description="Jobs matching the filters, on all pages; null when filtering by trick "
        "(only the counts by owner and status are kept)."
    )
    limit: int
    offset: int
    next: str | None = Field(description="The next page (null on the last): follow it as is.")


# Jobs one batch submission may queue: one transaction, a few hundred rows per 100.
MAX_BATCH_JOBS = 1000


class JobBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobSpec] = Field(
        min_length=1, max_length=MAX_BATCH_JOBS, description="The specs, queued in this order."
    )


class JobBatchRead(BaseModel):
    jobs: list[JobRead] = Field(description="The jobs, in the order of their specs.")


class EpochRead(EpochRow):
    # core.results.EpochRow, under the name the API's clients know.
    __doc__ = EpochRow.__doc__


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


def _strict_base64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("must be a string of base64")
    try:  # strict: a lenient decoder silently drops stray characters
        return base64.b64decode(text, validate=True)
    except binascii.Error as error:
        raise ValueError(f"not valid base64 ({error})") from None


class EncodedImage(BaseModel):
    """An image file in JSON, as TensorFlow Serving's REST API carries binary data."""

    model_config = ConfigDict(extra="forbid")

    b64: Annotated[
        bytes,
        BeforeValidator(_strict_base64),
        WithJsonSchema({"type": "string", "contentEncoding": "base64", "minLength": 1}),
        Field(description="Base64 of a PNG, JPEG, WebP or GIF file."),
    ]


INSTANCE_KINDS = ("pixels", "b64")  # the tags pydantic puts into error locations


def _instance_kind(value: Any) -> str | None:
    return "b64" if isinstance(value, dict) else "pixels" if isinstance(value, list) else None


Instance = Annotated[
    Annotated[Pixels, Tag("pixels")] | Annotated[EncodedImage, Tag("b64")],
    Discriminator(
        _instance_kind,
        custom_error_type="instance_kind",
        custom_error_message='an instance is a 28×28 array of pixels (0–255) or {"b64": '
        '"<base64 image file>"}',
    ),
]


class PredictInstances(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[Instance] = Field(
        min_length=1,
        description="28×28 grayscale pixel arrays, 0–255, light on dark, used as they are; "
        'or image files as {"b64": ...}, converted like uploaded files.',
    )


class PredictionRead(BaseModel):
    label: int
    class_name: str
    probabilities: list[float] = Field(description="One per class, summing to 1.")


class PredictResponse(BaseModel):
    job_id: str
    predictions: list[PredictionRead]


class ModelInput(BaseModel):
    shape: list[int] = Field(description="One image: height × width.")
    dtype: str
    range: list[float] = Field(description="Pixel values accepted, before scaling to [0, 1].")
    description: str


class ModelMetadata(BaseModel):
    job_id: str
    input: ModelInput
    class_names: list[str] = Field(description="Output index → class.")
    spec: JobSpec = Field(description="The resolved spec the model was trained with.")
    result: JobResult
    best_epoch: int | None
    stopped_epoch: int | None
    model_sha256: str = Field(description="Checked before the service loads the file.")
    model_bytes: int
    trained_on: str | None = Field(description="The device the worker trained on.")
    finished_at: datetime | None
    loaded: bool = Field(description="Whether the model is in the service's memory now.")
    runtime: str | None = Field(
        description="How the loaded model runs: 'numpy' (its layers as a verified chain of numpy "
        "operations, see the README) or 'keras'; null while it is not loaded."
    )


class Health(BaseModel):
    status: Literal["ok", "ready", "unavailable"]


class TrickInfo(BaseModel):
    name: str
    description: str
    parameters: dict[str, dict[str, Any]] = Field(
        description="JSON schema of each parameter: type, default, limits, description."
    )
    architecture_defaults: dict[str, dict[str, Any]] = Field(
        description="By architecture, the parameters whose default there differs from the "
        'schema\'s (empty: none), e.g. {"cnn": {"rate": 0.25}}. A parameter a job '
        "does not give takes its architecture's default."
    )


class TrickCatalogue(BaseModel):
    tricks: list[TrickInfo]


class StudyLinks(BaseModel):
    self: str
    report: str
    variants_csv: str
    effects_csv: str
    cancel: str
    plots: dict[str, str] = Field(description="PNG by default; add ?format=svg for SVG.")


class StudySummary(BaseModel):
    id: str
    owner: str | None = Field(description="The name of the user who created it.")
    name: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    design: str
    repeats: int
    seeds: list[int]
    variants: list[str]
    progress: dict[str, int] = Field(description="The study's jobs per status, and the total.")
    created_at: datetime
    cancelled_at: datetime | None
    links: StudyLinks

    @classmethod
    def of(cls, study: Study, statuses: list[JobStatus]) -> StudySummary:
        return cls(
            id=study.id,
            owner=study.owner,
            name=study.name,
            status=study_status(study.cancelled_at is not None, statuses),
            design=study.request["design"],
            repeats=study.request["repeats"],
            seeds=study.seeds,
            variants=[variant["name"] for variant in study.variants],
            progress=progress(statuses),
            created_at=study.created_at,
            cancelled_at=study.cancelled_at,
            links=StudyLinks(
                self=f"/v1/studies/{study.id}",
                report=f"/v1/studies/{study.id}/report",
                variants_csv=f"/v1/studies/{study.id}/report.csv?table=variants",
                effects_csv=f"/v1/studies/{study.id}/report.csv?table=effects",
                cancel=f"/v1/studies/{study.id}/cancel",
                plots={name: f"/v1/studies/{study.id}/plots/{name}" for name in get_args(PlotName)},
            ),
        )


class StudyRead(StudySummary):
    request: dict[str, Any] = Field(description="The study as submitted, preset applied.")
    report: ReportRead = Field(description="The report so far: finished runs only.")


class StudyList(BaseModel):
    studies: list[StudySummary]
    total: int
    limit: int
    offset: int
    next: str | None = Field(description="The next page (null on the last): follow it as is.")


# ---- users and tokens ----------------------------------------------------------------------

UserName = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
        description="Lower-case letters, digits, '_', '.' and '-', starting with a letter or "
        "digit; at most 64. Never reused: a user's name stays the owner of their jobs.",
    ),
]
Role = Literal["user", "admin"]
Quota = Annotated[
    int | None,
    Field(
        ge=1,
        le=10_000_000,
        description="Queued and running jobs the user may have at once; null: the default, "
        "TRICKLAB_QUOTA_ACTIVE_JOBS.",
    ),
]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: UserName
    role: Role = "user"
    quota_active_jobs: Quota = None


class UserUpdate(BaseModel):
    """Only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    quota_active_jobs: Quota = None
    disabled: bool | None = Field(
        None,
        description="true: every token of the user stops working (jobs they queued still "
        "run); false: they work again.",
    )


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    role: Role
    quota_active_jobs: int | None = Field(description="null: TRICKLAB_QUOTA_ACTIVE_JOBS.")
    created_at: datetime
    disabled_at: datetime | None


class UserCreated(UserRead):
    token: str = Field(description="The user's first API token: shown this once, never again.")
    token_id: str


class UserList(BaseModel):
    users: list[UserRead]


class Me(UserRead):
    active_jobs: int = Field(description="Your queued and running jobs now.")
    quota: int = Field(description="How many of them you may have at once.")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("token", min_length=1, max_length=100, description="What it is for.")
    expires_in_days: int | None = Field(
        None, ge=1, le=3650, description="It stops working after this many days; null: never."
    )


class TokenRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenRead):
    token: str = Field(description="The secret: shown this once, never again.")


class TokenList(BaseModel):
    tokens: list[TokenRead]


# ---- the Open Inference Protocol (KServe V2): /v2 ------------------------------------------

# A request's, input's or output's parameters: names to strings, numbers or booleans.
InferenceParameters = dict[str, StrictBool | StrictInt | StrictFloat | StrictStr]


class InferenceError(BaseModel):
    """The body of every error on the /v2 routes, as the protocol has it: what went wrong,
    and what to do about it."""

    error: str


class InferenceLive(BaseModel):
    live: bool


class InferenceReady(BaseModel):
    ready: bool


class InferenceServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="Protocol extensions the server supports.")


class InferenceTensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="The protocol's datatype: UINT8, FP32, INT64, …")
    shape: list[int] = Field(description="-1 for a dimension of any size (the batch).")
    parameters: dict[str, str] | None = Field(
        None, description="What the tensor holds, and other datatypes an input also takes."
    )


class InferenceModelMetadata(BaseModel):
    name: str = Field(description="The model's name: its job's id.")
    versions: list[str]
    platform: str = Field(description="<project>_<format>: a Keras model in a .keras file.")
    inputs: list[InferenceTensorMetadata]
    outputs: list[InferenceTensorMetadata]


class InferenceModelReady(BaseModel):
    name: str
    ready: bool


class InferenceRequestInput(BaseModel):
    name: StrictStr
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: StrictStr
    parameters: InferenceParameters | None = Field(
        None,
        description="binary_data_size: the tensor's bytes follow the JSON (binary tensor data "
        "extension) instead of `data`.",
    )
    data: list[Any] | None = Field(
        None, description="The elements in row-major order, flat or nested as the shape."
    )


class InferenceRequestOutput(BaseModel):
    name: StrictStr
    parameters: InferenceParameters | None = Field(
        None, description="binary_data: true to have this output's bytes follow the JSON."
    )


class InferenceRequest(BaseModel):
    id: StrictStr | None = Field(None, description="Returned in the response.")
    parameters: InferenceParameters | None = Field(
        None, description="binary_data_output: true to have every output as binary data."
    )
    inputs: list[InferenceRequestInput]
    outputs: list[InferenceRequestOutput] | None = Field(
        None, description="The outputs wanted, and how; every output (as JSON) if left out."
    )


class InferenceResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, int] | None = Field(
        None, description="binary_data_size: the output's bytes follow the JSON."
    )
    data: list[Any] | None = Field(None, description="The elements in row-major order, flat.")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = Field(None, description="The request's id, if it had one.")
    outputs: list[InferenceResponseOutput]


# ---- searches ------------------------------------------------------------------------------


class SearchLinks(BaseModel):
    self: str
    trials: str
    trials_csv: str
    report: str
    report_csv: str
    cancel: str
    plots: dict[str, str] = Field(description="PNG by default; add ?format=svg for SVG.")


class SearchSummary(BaseModel):
    id: str
    owner: str | None = Field(description="The name of the user who created it.")
    name: str
    status: Literal["queued", "searching", "confirming", "succeeded", "failed", "cancelled"]
    error: str | None = Field(description="Why it failed.")
    created_at: datetime
    finished_at: datetime | None
    links: SearchLinks

    @classmethod
    def of(cls, search: Search) -> SearchSummary:
        return cls(
            id=search.id,
            owner=search.owner,
            name=search.name,
            status=search.status,
            error=search.error,
            created_at=search.created_at,
            finished_at=search.finished_at,
            links=SearchLinks(
                self=f"/v1/searches/{search.id}",
                trials=f"/v1/searches/{search.id}/trials",
                trials_csv=f"/v1/searches/{search.id}/trials.csv",
                report=f"/v1/searches/{search.id}/report",
                report_csv=f"/v1/searches/{search.id}/report.csv",
                cancel=f"/v1/searches/{search.id}/cancel",
                plots={
                    name: f"/v1/searches/{search.id}/plots/{name}"
                    for name in get_args(SearchPlotName)
                },
            ),
        )


class SearchRead(SearchSummary):
    request: dict[str, Any] = Field(description="The search as submitted, its base resolved.")
    trials: dict[str, int] = Field(description="Its trials per state, and the total.")
    best: BestTrial | None = Field(description="The best completed trial so far, on validation.")


class SearchList(BaseModel):
    searches: list[SearchSummary]
    total: int
    limit: int
    offset: int
    next: str | None = Field(description="The next page (null on the last): follow it as is.")


class TrialRead(BaseModel):
    number: int = Field(description="From 0, in the order the sampler asked them.")
    job_id: str | None = Field(description="Null when its configuration could not train.")
    params: dict[str, Any] = Field(description="The sampled value of each key of the space.")
    state: Literal["running", "paused", "promoted", "pruned", "completed", "failed", "cancelled"]
    rung: int = Field(description="The rung it trains towards or stopped at, from 0.")
    rung_epochs: int = Field(description="That rung's epochs.")
    values: dict[int, float] = Field(description="The objective on validation, by epoch.")
    error: str | None


class TrialList(BaseModel):
    search_id: str
    objective: str
    rungs: list[int] = Field(description="The epochs at which trials pause, then the last.")
    trials: list[TrialRead]

"""Settings shared by both processes, read from TRICKLAB_* variables or a .env file."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

# Proxies' addresses and networks, each checked (trusted_proxies), comma-separated.
ProxyList = Annotated[str, AfterValidator(lambda value: ",".join(trusted_proxies(value)))]
# A path that compose's unset variable ("") leaves unset.
OptionalPath = Annotated[
    Path | None,
    BeforeValidator(lambda value: None if value == "" else value),
    AfterValidator(lambda path: path.expanduser() if path else None),
]


class Limits(BaseSettings):
    """What one request, a flood of them, one job or one study may cost: Settings' second
    half (documented after the first)."""

    # Prediction limits: each bounds what one request, or a flood of them, can cost.
    max_predict_files: int = Field(
        64, ge=1, description="Files (form parts) per prediction request; beyond it, 400."
    )
    max_predict_instances: int = Field(
        1024,
        ge=1,
        description="Images per prediction request (JSON instances on `…/predict`, the batch "
        "of a `/v2` infer); beyond it, 400.",
    )
    max_request_bytes: int = Field(
        32 * 2**20,
        ge=1024,
        description="A request body on a route that takes images (`…/predict`, `/v2` "
        "infer); larger ones get 413, chunked ones included.",
    )
    max_in_flight_bytes: int = Field(
        256 * 2**20,
        ge=1024,
        description="The bytes of all request bodies being received at once, counted as they "
        "arrive; beyond it, 503 and Retry-After. At least `TRICKLAB_MAX_REQUEST_BYTES`.",
    )
    max_concurrent_requests: int = Field(
        512,
        ge=1,
        description="Requests in progress at once, the health probes apart; beyond it, 503.",
    )
    max_requests_per_user: int = Field(
        128,
        ge=1,
        description="Requests in progress at once for one user (or one client address that is "
        "signed in as no one), event streams apart; beyond it, 429 and Retry-After.",
    )
    max_streams_per_user: int = Field(
        16,
        ge=1,
        description="Event streams (`…/events`) open at once for one user; beyond it, 429 and "
        "Retry-After.",
    )
    max_connections: int = Field(
        4096,
        ge=16,
        description="Open connections, idle and half-sent ones included; beyond it, 503. The API "
        "raises its open-file limit to fit them.",
    )
    # Concurrent predictions for one model share a forward pass. A request that finds the
    # model idle waits this long for company; under load, requests that arrive during a
    # forward pass form the next batch anyway, so the window matters only when traffic is light.
    predict_batch_window_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long a prediction that finds its model idle waits for others to share "
        "the forward pass.",
    )
    predict_max_batch: int = Field(256, ge=1, description="Images in one forward pass.")
    predict_max_queued: int = Field(
        4096, ge=1, description="Images waiting for one model; beyond it, 503 and Retry-After."
    )

    # Slow clients: a connection holds a slot until its request has arrived, so each part of
    # the arrival has a deadline (beyond it, 408 or the connection is closed).
    max_header_bytes: int = Field(
        64 * 2**10,
        ge=1024,
        le=2**24,
        description="A request's line and headers together; beyond it, 431 and the connection "
        "is closed.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Time from a connection's opening (or a later request's first byte) to its "
        "complete headers; beyond it, the connection is closed.",
    )
    body_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Time to receive a whole request body after its headers; beyond it, 408 "
        "and the connection is closed.",
    )
    max_json_bytes: int = Field(
        256 * 2**10,
        ge=1024,
        description="JSON bodies of routes that take no images (job specs, studies); larger "
        "ones get 413.",
    )
    # Decoding cost grows with pixels, not bytes: a 163 KiB PNG can hold 40 million of them.
    max_image_pixels: int = Field(
        4_000_000,
        ge=784,
        description="Pixels of one uploaded image, read from its header before decoding; beyond "
        "it, 400.",
    )
    max_request_pixels: int = Field(
        16_000_000,
        ge=784,
        description="Pixels of all the images of one prediction request; beyond it, 400.",
    )

    # What one job may cost; a spec over a limit is refused (422) before it is queued.
    max_parameters: int = Field(
        5_000_000,
        ge=1000,
        description="Trainable and non-trainable parameters of one job's model; beyond it, 422.",
    )
    max_steps_per_job: int = Field(
        1_000_000,
        ge=1,
        description="Training steps of one job (epochs × steps per epoch); beyond it, 422.",
    )
    max_job_seconds: float = Field(
        4 * 3600.0,
        gt=0,
        description="Wall-clock training time of one job, over all its attempts; beyond it "
        "the job fails with reason `timeout`.",
    )
    max_pack_memory_bytes: int = Field(
        2**30,
        ge=2**20,
        description="Estimated training memory of one pack (weights, gradients, optimizer "
        "state, activations); a worker packs fewer jobs to stay within it, and a job that "
        "alone needs more is refused (422).",
    )
    # A study refuses to expand into more jobs than this (a full factorial doubles per trick).
    max_study_jobs: int = Field(
        200,
        ge=1,
        le=100_000,
        description="Jobs one study may create (variants × repeats); beyond it, 422.",
    )

    @model_validator(mode="after")
    def _one_body_fits_in_flight(self) -> Limits:
        if self.max_in_flight_bytes < self.max_request_bytes:
            raise ValueError(
                f"max_in_flight_bytes ({self.max_in_flight_bytes}) must be at least "
                f"max_request_bytes ({self.max_request_bytes}), or the largest allowed request "
                "could never be received"
            )
        return self


class Settings(Limits):
    # hide_input_in_errors: a refused value (a token, a password in a URL) is never echoed.
    model_config = SettingsConfigDict(
        env_prefix="TRICKLAB_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = Field(
        "sqlite:///./var/tricklab.db",
        description="The queue and metadata database: a SQLite file, or "
        "`postgresql+psycopg://user@host/db` for many machines.",
    )
    artifacts_dir: Path = Field(
        Path("./var/artifacts"),
        description="Checkpoints and trained models (`jobs/<id>/<lease>/model.keras`, with "
        "`spec.json` beside it); one folder that every host mounts at the same path.",
    )
    # Keras keeps its own Fashion-MNIST download in ~/.keras/datasets/fashion-mnist/.
    data_dir: Path = Field(
        Path("~/.keras/datasets"),
        description="A dataset's folder holding its four IDX `.gz` files (`…/fashion-mnist`), "
        "or a folder of such folders (`fashion-mnist/`, `mnist/`). The API reads it too, to "
        "check each spec against the data.",
    )
    auth: Literal["on", "off"] = Field(
        "on",
        description="`on`: every route but the health probes and the static docs needs "
        "`Authorization: Bearer <token>`. `off`: everyone is the admin, allowed only while "
        "the API listens on a loopback address (and requests must come from a loopback Host "
        "and Origin, so that a web page cannot drive it).",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="The admin's API token (at least 32 characters). Unset: one is generated "
        "on first start into `admin_token_file`.",
    )
    admin_token_file: Path | None = Field(
        None,
        description="Where the generated admin token is kept (mode 0600). Default: "
        "`admin-token` beside the SQLite database, else `./var/admin-token`.",
    )
    session_hours: float = Field(
        12,
        gt=0,
        le=24 * 90,
        description="How long a dashboard sign-in lasts (never beyond the expiry of the token "
        "it signed in with); then the browser must sign in again.",
    )
    quota_active_jobs: int = Field(
        200,
        ge=1,
        le=10_000_000,
        description="Queued and running jobs one user may have at once, unless the user has a "
        "quota of their own; beyond it, 429.",
    )
    host: str = Field("127.0.0.1", description="The address the API listens on.")
    port: int = Field(8000, ge=1, le=65535, description="The port the API listens on.")
    # Only the TLS proxy may say who the client is and that it came over https (X-Forwarded-*).
    forwarded_allow_ips: ProxyList = Field(
        "127.0.0.1,::1",
        description="Addresses or networks (`10.0.0.2`, `10.0.0.0/29`) of the proxies whose "
        "`X-Forwarded-For` and `-Proto` the API believes, comma-separated; empty: none. Never `*`.",
    )
    hsts_seconds: int = Field(
        31_536_000,
        ge=0,
        le=63_072_000,
        description="`max-age` of the `Strict-Transport-Security` header sent on answers served "
        "over https (directly or through a trusted proxy); 0: none.",
    )
    metrics_token_file: OptionalPath = Field(
        None,
        description="A file holding a token that reads `GET /metrics` and nothing else; made "
        "(random, mode 0640: its group may read it) on first start if missing. Empty: none.",
    )
    log_level: str = Field("INFO", description="Log level of both processes.")
    # Idle workers poll; a short interval keeps queued jobs from waiting, SQLite reads are cheap.
    poll_seconds: float = Field(
        1.0, gt=0, le=60, description="How often an idle worker looks for a queued job."
    )
    # SQLite waits this long for a competing writer before "database is locked".
    busy_timeout_ms: int = Field(
        30_000,
        ge=0,
        description='How long SQLite waits for a competing writer before "database is locked".',
    )
    # A running job's lease: renewed by its worker's heartbeat; once it expires (worker killed,
    # machine gone, process frozen) a sweep puts the job back in the queue. Hosts' clocks must
    # agree to well within a lease (NTP does).
    lease_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="How long a running job stays with a worker that stopped renewing its "
        "lease; then a sweep puts the job back in the queue.",
    )
    heartbeat_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="How often a training worker renews its lease; shorter than the lease.",
    )
    sweep_seconds: float = Field(
        15.0,
        gt=0,
        le=600,
        description="How often the API and the workers look for expired leases.",
    )
    retain_metrics_days: float | None = Field(
        None,
        gt=0,
        description="Per-epoch metrics of jobs that ended more than this many days ago are "
        "archived (gzipped JSON lines under `<TRICKLAB_ARTIFACTS_DIR>/archive/`) and removed "
        "from the database; the job and its result stay. Empty: kept forever.",
    )
    retain_artifacts_days: float | None = Field(
        None,
        gt=0,
        description="Checkpoints and models of jobs that ended more than this many days ago "
        "are deleted, as `DELETE /v1/jobs/{id}` does. Empty: kept forever.",
    )
    retention_seconds: float = Field(
        3600.0,
        gt=0,
        le=7 * 86400,
        description="How often the API applies the retention policy "
        "(`python -m jobqueue.retention` applies it at once).",
    )
    worker_metrics: str = Field(
        "127.0.0.1:9101",
        description="`host:port` where each worker serves its Prometheus metrics (`/metrics`); "
        "empty: none. `0.0.0.0:9101` lets another machine scrape it. Workers on one machine "
        "need a port each: one whose port is taken logs it and trains on without metrics.",
    )
    # One query a tick serves every open event stream: a shorter tick is news sooner.
    events_poll_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        description="How often the API looks in the database for news of the jobs that open "
        "event streams follow (one query for all of them).",
    )
    # Attempts that may fail (worker lost, unexpected error) before the job fails for good.
    max_attempts: int = Field(
        3,
        ge=1,
        le=10_000,
        description="Failed attempts (lost workers, unexpected errors) before a job fails.",
    )
    # Compatible queued jobs a worker claims at once and trains as one model (1: one at a time).
    pack_size: int = Field(
        8,
        ge=1,
        le=64,
        description="Compatible queued jobs a worker claims at once and trains as one model; "
        "1 trains one job at a time.",
    )
    # Loaded models kept in the service's memory, least recently used evicted first.
    model_cache_size: int = Field(
        8,
        ge=1,
        le=1000,
        description="Trained models the service keeps loaded; the least recently used go first.",
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be shorter than "
                f"lease_seconds ({self.lease_seconds}), or leases expire between heartbeats"
            )
        return self

    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> Settings:
        if self.auth == "off" and not is_loopback(self.host):
            raise ValueError(
                f"auth is off but the API would listen on {self.host!r}: anyone who can reach "
                "it could train and delete as the admin. Without tokens the API listens only "
                "on a loopback address (TRICKLAB_HOST=127.0.0.1); to listen on this one, "
                "leave TRICKLAB_AUTH on"
            )
        return self

    @field_validator("artifacts_dir", "data_dir", "admin_token_file")
    @classmethod
    def _expand_home(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path else None

    @field_validator("admin_token", "retain_metrics_days", "retain_artifacts_days", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # compose passes an unset variable as ""

    @field_validator("admin_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @property
    def token_file(self) -> Path:
        """`admin_token_file`, or its default: beside the SQLite database, else in ./var."""
        if self.admin_token_file:
            return self.admin_token_file
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(url.database or "").parent / "admin-token"
        return Path("var/admin-token")


def trusted_proxies(value: str) -> list[str]:
    """The addresses and networks of a comma-separated list, each checked: uvicorn would take
    a misspelt one as a name that no peer ever has, and trust no one without a word."""
    found = []
    for entry in filter(None, (part.strip() for part in value.split(","))):
        if entry == "*":
            raise ValueError(
                "'*' would let any client claim any address and https: name the proxy's "
                "address (e.g. 127.0.0.1) or network (e.g. 10.0.0.0/29)"
            )
        try:
            parsed = ipaddress.ip_network(entry, strict=False) if "/" in entry else None
            found.append(str(parsed or ipaddress.ip_address(entry)))
        except ValueError:
            raise ValueError(
                f"{entry!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/29)"
            ) from None
    return found


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address, without port) is this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    return Settings()


def load_settings() -> Settings:
    """The settings, or exit with one line naming each invalid one: what every command (the
    API, the worker, the database's and retention's) calls first."""
    try:
        return get_settings()
    except ValidationError as error:
        raise SystemExit(f"tricklab: invalid settings: {settings_problems(error)}") from None


def settings_problems(error: ValidationError) -> str:
    """Each problem on one line, by variable and rule, never by value: the value may be a
    secret, and this goes to terminals and logs."""
    problems = []
    for problem in error.errors(include_url=False, include_input=False):
        name = f"TRICKLAB_{str(problem['loc'][0]).upper()}" if problem["loc"] else "settings"
        message = problem["msg"].removeprefix("Value error, ").replace("\n", " ")
        problems.append(f"{name}: {message}")
    return "; ".join(problems)

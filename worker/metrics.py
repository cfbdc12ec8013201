"""A worker's Prometheus metrics (prometheus-client, on the process's default registry: one
worker a process), served on TRICKLAB_WORKER_METRICS. Labels are outcomes, reasons and the
device: never a job id or a spec."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

log = logging.getLogger("tricklab.worker")

EPOCHS = Counter("tricklab_worker_epochs", "Epochs trained and recorded.")
SAMPLES = Counter("tricklab_worker_samples", "Training images gone through, over all epochs.")
SAMPLES_PER_SECOND = Gauge(
    "tricklab_worker_samples_per_second",
    "Training images a second in the latest recorded epoch, summed over the jobs it trained "
    "(a pack's jobs share their epoch's seconds).",
)
JOB_SECONDS = Histogram(
    "tricklab_worker_job_duration_seconds",
    "Wall-clock time of each attempt this worker held, by how it ended: succeeded, paused (a "
    "search's trial at its epoch limit), failed, retried (failed, to be tried again), "
    "handed_back (the worker stopped) or lost (cancelled or taken over).",
    ["outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600),
)
FAILURES = Counter(
    "tricklab_worker_failures", "Failed attempts, by reason (see jobqueue.retry).", ["reason"]
)
PACK_SIZE = Histogram(
    "tricklab_worker_pack_size",
    "Jobs claimed together, trained as one pack (1: alone).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
RENEWALS = Counter("tricklab_worker_lease_renewals", "Leases renewed by a heartbeat.")
LEASES_LOST = Counter(
    "tricklab_worker_leases_lost", "Leases found gone (the job cancelled, or taken over)."
)
DEVICE = Info("tricklab_worker_device", "What this worker trains on.")


def serve(address: str) -> None:
    """Serve the metrics on "host:port" (nothing for ""); a port that is taken (another
    worker on this machine) is logged, and the worker trains on without metrics."""
    if not address:
        return
    host, _, port = address.rpartition(":")
    try:
        start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")
    except OSError as error:
        log.warning(
            "metrics: cannot listen on %s (%s); this worker serves none: give each worker "
            "on a machine its own TRICKLAB_WORKER_METRICS",
            address,
            error.strerror or error,
        )
        return
    log.info("metrics on http://%s/metrics", address)

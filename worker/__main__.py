"""`python -m worker [--once]`: train queued jobs until stopped."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from types import FrameType

# Before any backend loads: JAX takes GPU memory as needed, like TensorFlow's memory growth.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from core.backend import load_backend
from core.config import load_settings
from core.logs import setup_logging

log = logging.getLogger("tricklab.worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--once", action="store_true", help="train at most one job, then exit")
    parser.add_argument("--name", help="worker name in logs and job records (host:pid)")
    args = parser.parse_args(argv)

    settings = load_settings()  # before Keras loads (seconds): a bad setting is one line at once
    setup_logging(settings.log_level)
    load_backend()
    from jobqueue.artifacts import ArtifactStore
    from jobqueue.db import init_db, make_engine
    from jobqueue.searches import Searches
    from jobqueue.store import JobStore
    from search.progress import Progress
    from worker import metrics
    from worker.devices import freeze_imports
    from worker.loop import Worker

    name = args.name or f"{socket.gethostname()}:{os.getpid()}"
    engine = make_engine(settings.database_url, settings.busy_timeout_ms, f"tricklab-worker {name}")
    init_db(engine)
    store = JobStore(engine, settings.lease_seconds, settings.max_attempts)
    progress = Progress(Searches(store), settings)
    # Not named `worker`: that is this package, and `worker.run` its training core.
    loop = Worker(
        store,
        ArtifactStore(settings.artifacts_dir),
        settings.data_dir,
        poll_seconds=settings.poll_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        sweep_seconds=settings.sweep_seconds,
        name=name,
        pack_size=settings.pack_size,
        pack_memory_bytes=settings.max_pack_memory_bytes,
        max_job_seconds=settings.max_job_seconds,
        # A search goes on the moment one of its jobs settles, not at the API's next round.
        on_search_job=progress.advance,
    )
    metrics.serve(settings.worker_metrics)
    freeze_imports()  # after Worker() loaded the backend

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if loop.stopping:
            raise KeyboardInterrupt  # second signal: stop now (the job is still handed back)
        log.info(
            "signal=%s: stopping after the current epoch (again: at once)",
            signal.Signals(signum).name,
        )
        loop.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        loop.run(once=args.once)
    except KeyboardInterrupt:
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())

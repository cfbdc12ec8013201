"""The background work that both processes run: every few seconds the sweep (expired leases
go back to the queue, the job counts' change rows are folded); in the API, every hour or so,
the retention policy."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from jobqueue.counts import JobCounts
from jobqueue.store import JobStore

log = logging.getLogger("tricklab.sweeper")


class Periodic(threading.Thread):
    """Runs `work` every `interval` seconds until stopped; a failure is logged and the work
    tried again next time (the database may be briefly away)."""

    def __init__(self, name: str, interval: float, work: Callable[[], None]) -> None:
        super().__init__(name=f"tricklab-{name}", daemon=True)
        self.interval, self.work = interval, work
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.work()
            except Exception:
                log.warning("%s failed", self.name, exc_info=True)

    def stop(self) -> None:
        self._done.set()


class Sweeper(Periodic):
    """Requeue (or fail) running jobs whose lease expired. Any number of sweepers may run at
    once: each move is a compare-and-set."""

    def __init__(self, store: JobStore, interval: float) -> None:
        super().__init__("sweeper", interval, self.sweep)
        self.store = store
        self.counts = JobCounts(store.engine)

    def sweep(self) -> None:
        for job_id, status in self.store.requeue_expired():
            log.warning("job=%s lease expired: worker lost, job now %s", job_id, status)
        self.counts.fold()

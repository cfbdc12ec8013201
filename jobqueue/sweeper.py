"""The background sweep that both processes run: expired leases go back to the queue, and
the job counts' change rows are folded."""

from __future__ import annotations

import logging
import threading

from jobqueue.store import JobStore

log = logging.getLogger("tricklab.sweeper")


class Sweeper(threading.Thread):
    """Every `interval` seconds, requeue (or fail) running jobs whose lease expired. Any
    number of sweepers may run at once: each move is a compare-and-set."""

    def __init__(self, store: JobStore, interval: float) -> None:
        super().__init__(name="tricklab-sweeper", daemon=True)
        self.store, self.interval = store, interval
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                moved = self.store.requeue_expired()
                self.store.fold_counts()
            except Exception:  # the database may be briefly away; try again next time
                log.warning("sweep failed", exc_info=True)
                continue
            for job_id, status in moved:
                log.warning("job=%s lease expired: worker lost, job now %s", job_id, status)

    def stop(self) -> None:
        self._done.set()

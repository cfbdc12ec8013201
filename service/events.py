"""Server-Sent Events: a job's status and epochs, a study's or a search's progress, as they
happen.

Workers write to the database, never to the API, and there may be several API processes, so
a stream follows the database. One `Watch` per API process asks it, every
TRICKLAB_EVENTS_POLL_SECONDS, where every followed job is (status, epochs done, attempts: one
query by primary key for all streams), and wakes the streams whose jobs moved; only those read
what is new. An idle stream costs a set entry and a ping comment every 15 seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

from sse_starlette import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from jobqueue.models import Job, Study
from jobqueue.reads import Reads
from jobqueue.states import TERMINAL, JobStatus
from jobqueue.store import JobStore
from jobqueue.studies import Studies
from search.states import ENDED
from service.auth import CACHE_SECONDS
from service.schemas import EpochRead, JobRead, SearchRead, StudySummary

log = logging.getLogger("tricklab.service")
# A stream re-reads this often even without news: a safety net, should a change slip past
# the watch's comparison (a job that moved and came back between two polls).
REREAD_SECONDS = 30.0
# What a browser's EventSource waits before reconnecting after a dropped connection.
RETRY_MS = 2000
# A stream asks this often whether its caller may still follow it (a user disabled, a token or
# session revoked), as often as the gate forgets what it knows of a token.
RECHECK_SECONDS = CACHE_SECONDS

Allowed = Callable[[], Awaitable[bool]]  # whether the stream's caller may still follow it
# A search as it stands (as GET /v1/searches/{id} shows it), and the status of each of its jobs.
LookSearch = Callable[[], tuple[SearchRead, dict[str, JobStatus]]]


class Watch:
    """Polls the database for the jobs that open streams follow, and wakes their streams."""

    def __init__(self, reads: Reads, interval: float) -> None:
        self.reads, self.interval = reads, interval
        self._followers: dict[str, set[asyncio.Event]] = {}
        self._seen: dict[str, tuple[str, int, int]] = {}
        self._task: asyncio.Task[None] | None = None
        self.streams = 0  # open now

    @contextlib.contextmanager
    def follow(self, job_ids: Sequence[str]) -> Iterator[asyncio.Event]:
        """An event set whenever one of these jobs moves, while the block runs."""
        moved = asyncio.Event()
        for job_id in job_ids:
            self._followers.setdefault(job_id, set()).add(moved)
        self.streams += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll(), name="tricklab-events-watch")
        try:
            yield moved
        finally:
            self.streams -= 1
            for job_id in job_ids:
                followers = self._followers.get(job_id)
                if followers is not None:
                    followers.discard(moved)
                    if not followers:
                        del self._followers[job_id]
                        self._seen.pop(job_id, None)

    async def _poll(self) -> None:
        while self._followers:
            await asyncio.sleep(self.interval)
            ids = list(self._followers)
            try:
                moves = await run_in_threadpool(self.reads.moves, ids)
            except Exception:  # a database hiccup: the streams wait for the next tick
                log.exception("events: reading the followed jobs failed")
                continue
            for job_id, where in moves.items():
                if self._seen.get(job_id) != where:
                    self._seen[job_id] = where
                    for moved in self._followers.get(job_id, ()):
                        moved.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def job_events(
    job: Job, since_epoch: int, store: JobStore, watch: Watch, admin: bool, allowed: Allowed
) -> AsyncIterator[ServerSentEvent]:
    """`status` with the job; an `epoch` (id: its number) for each epoch after
    `since_epoch` as it is recorded; `status` at each change of status; `end` with the
    final job. The stream closes without `end` once its caller may no longer follow it."""
    yield _event("status", JobRead.of(job, admin), retry=RETRY_MS)
    shown = (job.status, job.attempts)
    with watch.follow([job.id]) as moved:
        while True:
            moved.clear()
            # The job before its metrics: once it has ended, every epoch is already stored.
            current = await run_in_threadpool(store.get, job.id)
            if current is None:  # its row is gone: nothing more will come
                return
            ended = current.status in TERMINAL
            if (current.status, current.attempts) != shown and not ended:
                yield _event("status", JobRead.of(current, admin))
                shown = (current.status, current.attempts)
            for row in await run_in_threadpool(watch.reads.metrics, job.id, since_epoch):
                yield _event("epoch", EpochRead.model_validate(row), id=str(row.epoch))
                since_epoch = row.epoch
            if ended:
                final = JobRead.of(current, admin)
                if current.status != shown[0]:
                    yield _event("status", final)
                yield _event("end", final)
                return
            if not await _next_move(moved, allowed):
                return


async def study_events(
    study: Study, studies: Studies, watch: Watch, allowed: Allowed
) -> AsyncIterator[ServerSentEvent]:
    """`progress` with the study's summary at first and whenever its jobs advance; `end` with
    the final summary once every job has ended (or the study was cancelled). The stream closes
    without `end` once its caller may no longer follow it."""
    shown: StudySummary | None = None
    with watch.follow(study.job_ids) as moved:
        while True:
            moved.clear()
            current = await run_in_threadpool(studies.get, study.id) or study
            statuses = await run_in_threadpool(watch.reads.statuses, study.job_ids)
            summary = StudySummary.of(current, [statuses[i] for i in study.job_ids])
            if summary != shown:
                yield _event("progress", summary, retry=RETRY_MS if shown is None else None)
                shown = summary
            if summary.status not in ("queued", "running"):
                yield _event("end", summary)
                return
            if not await _next_move(moved, allowed):
                return


async def search_events(
    look: LookSearch, watch: Watch, allowed: Allowed
) -> AsyncIterator[ServerSentEvent]:
    """`progress` with the search at first and whenever its trials or jobs move; `end` with it
    once it has ended. The jobs it adds are followed as they come. The stream closes without
    `end` once its caller may no longer follow it."""
    read, jobs = await run_in_threadpool(look)
    shown: SearchRead | None = None
    # A search advances in a transaction of its own right after one of its jobs settles, and
    # the sweep advances it too: news that no followed job announces. After news the stream
    # looks again soon, then less and less often while nothing changes.
    soon = watch.interval
    while True:
        followed = set(jobs)
        with watch.follow(list(followed)) as moved:
            while True:
                if read != shown:
                    yield _event("progress", read, retry=RETRY_MS if shown is None else None)
                    shown = read
                if read.status in ENDED:
                    yield _event("end", read)
                    return
                if set(jobs) != followed:
                    break  # follow the jobs it added too
                if not await _next_move(moved, allowed, soon):
                    return
                moved.clear()
                before = (read, jobs)
                read, jobs = await run_in_threadpool(look)
                soon = watch.interval if (read, jobs) != before else min(2 * soon, REREAD_SECONDS)


async def _next_move(
    moved: asyncio.Event, allowed: Allowed, within: float = REREAD_SECONDS
) -> bool:
    """Wait until a followed job moves, or `within` seconds pass; False, at once, when the
    caller may no longer follow the stream."""
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    while await allowed():
        left = until - loop.time()
        if moved.is_set() or left <= 0:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(moved.wait(), min(left, RECHECK_SECONDS))
    return False


def _event(name: str, body: Any, **fields: Any) -> ServerSentEvent:
    return ServerSentEvent(data=body.model_dump_json(), event=name, **fields)

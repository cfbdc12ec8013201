"""A search's trials, as verbs: a trial's job trains up to its epoch limit (its rung) and
pauses there, checkpointed, until its search promotes it (it trains on from its checkpoint,
exactly as if it had never stopped, to a higher limit) or ends it where it stopped. Which
trials go on is the search's to decide; its jobs are otherwise ordinary jobs."""

from __future__ import annotations

from sqlalchemy import Update, update

from core.results import JobResult
from jobqueue.db import Verbs
from jobqueue.models import Job, utcnow
from jobqueue.states import JobStatus
from jobqueue.store import JobStore, Lease, fenced, moved, unleased


class Pauses(Verbs):
    def __init__(self, jobs: JobStore) -> None:
        super().__init__(jobs.engine)

    def pause(
        self,
        lease: Lease,
        result: JobResult,
        best_epoch: int | None = None,
        model_path: str | None = None,
        model_sha256: str | None = None,
    ) -> bool:
        """The worker's: its job has trained up to its epoch limit. It keeps its checkpoint to
        resume from, and stores its model and result so far as a finished job would; it
        holds no lease and no worker meanwhile. False if the lease is gone."""
        with self._write.begin() as session:
            return moved(
                session,
                fenced(lease).values(
                    status=JobStatus.PAUSED,
                    result=result,
                    best_epoch=best_epoch,
                    model_path=model_path,
                    model_sha256=model_sha256,
                    **unleased(),
                ),
            )

    def promote(self, job_id: str, epoch_limit: int | None) -> bool:
        """`promoting`, alone in a transaction. False if the job was not paused."""
        with self._write.begin() as session:
            return moved(session, promoting(job_id, epoch_limit))

    def end_paused(self, job_id: str) -> bool:
        """`ending`, alone in a transaction. False if the job was not paused."""
        with self._write.begin() as session:
            return moved(session, ending(job_id))


def promoting(job_id: str, epoch_limit: int | None) -> Update:
    """Queue a paused job again, to train on from its checkpoint up to `epoch_limit` (None:
    to the spec's last epoch). Its attempt goes on when it is claimed again: a pause is
    neither a failed attempt nor a second one. Its model and result were the rung's, not the
    job's."""
    return _paused(job_id).values(
        status=JobStatus.QUEUED,
        epoch_limit=epoch_limit,
        attempts=Job.attempts - 1,
        result=None,
        best_epoch=None,
        model_path=None,
        model_sha256=None,
    )


def ending(job_id: str) -> Update:
    """End a paused job where it stopped: it succeeds with the model and result of the epoch
    it paused at."""
    return _paused(job_id).values(
        status=JobStatus.SUCCEEDED, finished_at=utcnow(), stopped_epoch=Job.epochs_done
    )


def _paused(job_id: str) -> Update:
    """A move of a paused job, as a compare-and-set: one cancelled meanwhile stays so."""
    return update(Job).where(Job.id == job_id, Job.status == JobStatus.PAUSED)

"""Studies, as verbs: a study and all its jobs are stored together, and cancelled together.
What a study compares, and how, is analysis.studies'; its jobs are ordinary jobs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from core.spec import JobSpec
from jobqueue.db import Verbs
from jobqueue.models import Job, Study, utcnow
from jobqueue.store import Admission, JobStore, cancelling, queued, with_tricks


class Studies(Verbs):
    def __init__(self, jobs: JobStore) -> None:
        super().__init__(jobs.engine)
        self.max_attempts = jobs.max_attempts

    def create(
        self,
        owner: str,
        name: str | None,
        request: dict[str, Any],
        seeds: list[int],
        variants: Sequence[tuple[dict[str, Any], Sequence[JobSpec]]],
        admit: Admission | None = None,
    ) -> Study:
        """Store a study of `owner`'s and all its jobs, queued, in one transaction: durable
        together, or (refused by `admit`) not at all. Each variant comes as its document and
        its jobs' specs; the document gains the jobs' ids."""
        study_id = uuid.uuid4().hex
        jobs: list[Job] = []
        documents = []
        for document, specs in variants:
            variant = [queued(spec, owner, self.max_attempts) for spec in specs]
            for job in variant:
                job.study_id = study_id
            jobs += variant
            documents.append({**document, "jobs": [job.id for job in variant]})
        row = Study(
            id=study_id,
            owner=owner,
            name=name,
            request=request,
            variants=documents,
            seeds=seeds,
            created_at=utcnow(),
        )
        with self._write.begin() as session:
            if admit is not None:
                admit(session, owner, len(jobs))
            session.add_all([*with_tricks(jobs), row])
        return row

    def get(self, study_id: str) -> Study | None:
        with self._read() as session:
            return session.get(Study, study_id)

    def cancel(self, study_id: str) -> Study | None:
        """Mark the study cancelled and cancel its queued and running jobs; finished jobs
        keep their results. None if there is no such study."""
        with self._write.begin() as session:
            study = session.get(Study, study_id)
            if study is None:
                return None
            if study.cancelled_at is None:
                study.cancelled_at = utcnow()
            session.execute(
                cancelling(Job.id.in_(study.job_ids)),
                execution_options={"synchronize_session": False},
            )
        return study

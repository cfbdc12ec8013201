"""The reads behind lists and reports, against real databases."""

from sqlalchemy import update

from core.spec import JobSpec
from jobqueue.models import ADMIN, Job
from jobqueue.states import JobStatus


def test_list_is_newest_first_filtered_and_paginated(any_store, any_reads):
    ids = [any_store.enqueue(JobSpec(seed=i), ADMIN)[0].id for i in range(5)]
    any_store.cancel(ids[1])
    page, total = any_reads.list_jobs(limit=2, offset=1)
    assert total == 5 and [j.id for j in page] == [ids[3], ids[2]]
    cancelled, total = any_reads.list_jobs(status=JobStatus.CANCELLED)
    assert total == 1 and [j.id for j in cancelled] == [ids[1]]


def test_pages_follow_one_another_by_position_even_through_equal_times(any_store, any_reads):
    ids = [any_store.enqueue(JobSpec(seed=i), ADMIN)[0].id for i in range(7)]
    with any_store.engine.begin() as connection:  # three jobs made in the same microsecond
        connection.execute(
            update(Job)
            .where(Job.id.in_(ids[2:5]))
            .values(created_at=any_store.get(ids[2]).created_at)
        )
    newest_first = [j.id for j in any_reads.list_jobs(limit=10)[0]]
    pages, after = [], None
    while page := any_reads.list_jobs(limit=2, after=after)[0]:
        pages.append([j.id for j in page])
        after = (page[-1].created_at, page[-1].id)
    assert [job for page in pages for job in page] == newest_first and sorted(
        newest_first
    ) == sorted(ids)
    assert [len(p) for p in pages] == [2, 2, 2, 1]

from jobqueue.states import (
    ACTIVE,
    CANCELLABLE,
    TERMINAL,
    TRANSITIONS,
    JobStatus,
    can_transition,
    sources_of,
)


def test_every_status_has_a_row():
    assert set(TRANSITIONS) == set(JobStatus)


def test_terminal_states_are_final():
    assert {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED} == TERMINAL
    for status in TERMINAL:
        assert not any(can_transition(status, target) for target in JobStatus)


def test_lifecycle_table():
    allowed = {(s, t) for s in JobStatus for t in JobStatus if can_transition(s, t)}
    assert allowed == {
        (JobStatus.QUEUED, JobStatus.RUNNING),
        (JobStatus.QUEUED, JobStatus.CANCELLED),
        (JobStatus.RUNNING, JobStatus.SUCCEEDED),
        (JobStatus.RUNNING, JobStatus.FAILED),
        (JobStatus.RUNNING, JobStatus.CANCELLED),
        (JobStatus.RUNNING, JobStatus.QUEUED),
        (JobStatus.RUNNING, JobStatus.PAUSED),
        (JobStatus.PAUSED, JobStatus.QUEUED),
        (JobStatus.PAUSED, JobStatus.SUCCEEDED),
        (JobStatus.PAUSED, JobStatus.CANCELLED),
    }


def test_guards_derive_from_the_table():
    assert {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED} == CANCELLABLE
    assert sources_of(JobStatus.CANCELLED) == CANCELLABLE
    assert sources_of(JobStatus.RUNNING) == {JobStatus.QUEUED}


def test_a_paused_job_has_not_ended_but_counts_in_no_quota():
    assert JobStatus.PAUSED not in TERMINAL
    assert {JobStatus.QUEUED, JobStatus.RUNNING} == ACTIVE

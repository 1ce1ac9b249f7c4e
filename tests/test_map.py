"""Tests of ``Queue.map``: one job per item, one wait for all, values in input order; real worker and Redis."""

from __future__ import annotations

import time

import pytest

from nbqueue import Queue, Result
from nbqueue.errors import JobsFailedError, NbqueueError, WaitTimeoutError


def square_after(item: int) -> int:
    """Return ``item ** 2`` after sleeping ``item`` hundredths of a second, so items end out of order."""
    time.sleep(item / 100)
    return item * item


def fail_on_two_and_five(item: int) -> int:
    if item in (2, 5):
        raise ValueError(f"item {item} is bad")
    return item * 10


def sleep_seconds(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_map_returns_values_in_input_order(connection, start_worker):
    start_worker("--concurrency", "3")
    queue = Queue(connection=connection)

    values = queue.map(square_after, [9, 1, 5, 0, 3], timeout=30)

    assert values == [81, 1, 25, 0, 9]


def test_map_failures_name_indexes_two_and_five(connection, start_worker):
    start_worker("--concurrency", "2")
    queue = Queue(connection=connection)

    with pytest.raises(JobsFailedError) as excinfo:
        queue.map(fail_on_two_and_five, range(8), timeout=30)

    error = excinfo.value
    assert isinstance(error, NbqueueError)
    assert sorted(error.failures) == [2, 5]
    assert error.values == [0, 10, None, 30, 40, None, 60, 70]
    assert [result.type for result in error.failures.values()] == [Result.Type.FAILED] * 2
    assert len(error.jobs) == 8
    assert error.failures[2].job_id == error.jobs[2].id
    assert error.failures[5].job_id == error.jobs[5].id
    assert str(error).splitlines() == [
        "2 of 8 jobs failed:",
        "  [2] ValueError: item 2 is bad",
        "  [5] ValueError: item 5 is bad",
    ]


def test_map_timeout_counts_done_jobs(connection, start_worker):
    start_worker()
    queue = Queue(connection=connection)

    with pytest.raises(WaitTimeoutError) as excinfo:
        queue.map(sleep_seconds, [0, 0, 30], timeout=2)

    error = excinfo.value
    assert isinstance(error, TimeoutError)
    assert "2 of 3 jobs are done (0 failed)" in str(error)
    assert error.values == [0, 0, None]
    assert error.failures == {}
    assert len(error.jobs) == 3
    error.jobs[2].stop()


def test_map_applies_options_to_every_job(connection, start_worker):
    start_worker()
    queue = Queue(connection=connection)

    with pytest.raises(JobsFailedError) as excinfo:
        queue.map(fail_on_two_and_five, [1, 2], result_ttl=100, failure_ttl=200, timeout=30)

    jobs = excinfo.value.jobs
    assert 90 < connection.ttl(f"nbqueue:job:{jobs[0].id}") <= 100
    assert 190 < connection.ttl(f"nbqueue:job:{jobs[1].id}") <= 200


def test_map_of_empty_iterable_returns_empty_list(connection):
    queue = Queue(connection=connection)

    assert queue.map(square_after, [], timeout=1) == []
    assert connection.llen(queue.key) == 0


def test_enqueue_many_gives_jobs_without_waiting(connection, start_worker):
    queue = Queue(connection=connection)

    jobs = queue.enqueue_many([Queue.prepare_data(square_after, (item,)) for item in (3, 4)])

    assert queue.job_ids == [job.id for job in jobs]
    start_worker()
    assert [job.latest_result(timeout=30).return_value for job in jobs] == [9, 16]

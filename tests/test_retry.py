"""Tests of retries and delayed jobs: ``Retry`` on enqueue, a job returning ``Retry``, ``enqueue_in`` and ``enqueue_at``.

Every test runs real ``nbqueue worker`` subprocesses against the session's redis-server.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from polling import wait_until

import fault_jobs
from nbqueue import Job, JobStatus, Queue, Result, Retry
from nbqueue.errors import InvalidOptionError

pytestmark = pytest.mark.timeout(60)


def wait_for_final_result(job: Job, timeout_s: float) -> list[Result]:
    """Wait until the job's newest result is SUCCESSFUL, FAILED or STOPPED, then return its results oldest first."""
    final_types = {Result.Type.SUCCESSFUL, Result.Type.FAILED, Result.Type.STOPPED}

    def has_final_result() -> bool:
        newest = job.latest_result()
        return newest is not None and newest.type in final_types

    wait_until(has_final_result, timeout_s, f"a final result of job {job.id}")
    return list(reversed(job.results()))


def start_gaps_s(results: list[Result]) -> list[float]:
    """Seconds between the starts of consecutive executions, oldest first."""
    return [(later.started_at - earlier.started_at).total_seconds() for earlier, later in zip(results, results[1:])]


# Retry on enqueue


def test_retry_fixed_interval_runs_four_times(start_worker, connection):
    queue = Queue("retryq", connection=connection)
    job = queue.enqueue(fault_jobs.always_fail, "boom", retry=Retry(max=3, interval=1))
    worker = start_worker("retryq")

    results = wait_for_final_result(job, 20)
    log = worker.log()

    assert [result.type for result in results] == [
        Result.Type.RETRIED, Result.Type.RETRIED, Result.Type.RETRIED, Result.Type.FAILED,
    ], log
    for result in results:
        assert result.exc_string is not None
        assert result.exc_string.startswith("Traceback (most recent call last):"), result.exc_string
        assert result.exc_string.rstrip().endswith("ValueError: boom"), result.exc_string
        assert result.return_value is None
    gaps = start_gaps_s(results)
    print(f"gaps between starts with Retry(max=3, interval=1): {[round(gap, 3) for gap in gaps]} s")
    for gap in gaps:
        assert gap >= 1.0, gaps
    assert job.get_status() == JobStatus.FAILED
    assert Job.fetch(job.id, connection).retries_left == 0
    assert job.id in queue.failed_job_registry
    assert job.id not in queue.scheduled_job_registry
    assert len(queue.started_job_registry) == 0


def test_retry_interval_list_last_value_repeats(start_worker, connection):
    queue = Queue("retrylistq", connection=connection)
    job = queue.enqueue(fault_jobs.always_fail, "boom", retry=Retry(max=3, interval=[1, 2]))
    start_worker("retrylistq")

    results = wait_for_final_result(job, 25)

    assert [result.type for result in results] == [
        Result.Type.RETRIED, Result.Type.RETRIED, Result.Type.RETRIED, Result.Type.FAILED,
    ]
    gaps = start_gaps_s(results)
    print(f"gaps between starts with Retry(max=3, interval=[1, 2]): {[round(gap, 3) for gap in gaps]} s")
    assert gaps[0] >= 1.0, gaps
    assert gaps[1] >= 2.0, gaps
    assert gaps[2] >= 2.0, gaps


def test_retry_then_success_keeps_return_value(start_worker, connection, tmp_path):
    queue = Queue("retryokq", connection=connection)
    counter = tmp_path / "runs"
    job = queue.enqueue(fault_jobs.fail_once_then_return, str(counter), {"answer": 42}, retry=Retry(max=2))
    start_worker("retryokq")

    results = wait_for_final_result(job, 15)

    assert [result.type for result in results] == [Result.Type.RETRIED, Result.Type.SUCCESSFUL]
    assert "RuntimeError: first run fails on purpose" in results[0].exc_string
    assert results[1].return_value == {"answer": 42}
    assert results[1].exc_string is None
    assert job.return_value(refresh=True) == {"answer": 42}
    assert job.get_status() == JobStatus.FINISHED
    assert counter.read_text() == "2"
    assert job.id in queue.finished_job_registry


# A job that returns Retry


def test_returned_retry_stops_at_its_limit(start_worker, connection, tmp_path):
    queue = Queue("returnretryq", connection=connection)
    counter = tmp_path / "runs"
    job = queue.enqueue(fault_jobs.always_return_retry, str(counter), 2)
    start_worker("returnretryq")

    results = wait_for_final_result(job, 15)

    assert [result.type for result in results] == [Result.Type.RETRIED, Result.Type.RETRIED, Result.Type.FAILED]
    assert results[0].exc_string == "The job returned Retry(max=2, interval=0.0): retry 1 of 2"
    assert results[1].exc_string == "The job returned Retry(max=2, interval=0.0): retry 2 of 2"
    assert results[2].exc_string == (
        "The job returned Retry(max=2, interval=0.0) after 2 retries: the retry limit was reached"
    )
    assert counter.read_text() == "3"
    assert job.get_status() == JobStatus.FAILED


def test_returned_retry_ignores_enqueue_retry(start_worker, connection, tmp_path):
    queue = Queue("returnretry5q", connection=connection)
    counter = tmp_path / "runs"
    job = queue.enqueue(fault_jobs.always_return_retry, str(counter), 2, retry=Retry(max=5))
    worker = start_worker("returnretry5q")

    results = wait_for_final_result(job, 15)
    # A job enqueued behind it shows that the worker went on and did not run the first one again.
    sentinel = queue.enqueue(fault_jobs.add, 1, 1)
    sentinel_result = sentinel.latest_result(timeout=10)

    assert sentinel_result is not None, worker.log()
    assert sentinel_result.return_value == 2
    assert [result.type for result in reversed(job.results())] == [
        Result.Type.RETRIED, Result.Type.RETRIED, Result.Type.FAILED,
    ]
    assert results[-1].exc_string.endswith("the retry limit was reached")
    assert counter.read_text() == "3"
    assert Job.fetch(job.id, connection).retries_left == 5
    assert job.get_status() == JobStatus.FAILED
    assert queue.count == 0
    assert len(queue.scheduled_job_registry) == 0


# Validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max": 0}, "Retry(max=0) is invalid: max must be a whole number >= 1"),
        ({"max": -1}, "Retry(max=-1) is invalid: max must be a whole number >= 1"),
        ({"max": 1.5}, "Retry(max=1.5) is invalid: max must be a whole number >= 1"),
        ({"max": True}, "Retry(max=True) is invalid: max must be a whole number >= 1"),
        ({"max": 1, "interval": -1}, "Retry(interval=-1) is invalid: intervals must be numbers of seconds >= 0"),
        (
            {"max": 1, "interval": [1, -2]},
            "Retry(interval=[1, -2]) is invalid: intervals must be numbers of seconds >= 0",
        ),
        ({"max": 1, "interval": "5"}, "Retry(interval='5') is invalid: intervals must be numbers of seconds >= 0"),
        ({"max": 1, "interval": []}, "Retry(interval=[]) is invalid: give at least one interval, or a number"),
    ],
    ids=["max-0", "max-negative", "max-float", "max-bool", "interval-negative", "interval-list-negative",
         "interval-str", "interval-empty"],
)
def test_retry_invalid_arguments_rejected(kwargs, message):
    with pytest.raises(InvalidOptionError) as raised:
        Retry(**kwargs)
    assert str(raised.value) == message


def test_retry_get_interval_repeats_last_value():
    retry = Retry(max=5, interval=[1, 2])

    assert [retry.get_interval(number) for number in range(1, 6)] == [1.0, 2.0, 2.0, 2.0, 2.0]


# Delayed jobs


def test_enqueue_in_waits_in_scheduled_registry(start_worker, connection):
    queue = Queue("delayq", connection=connection)
    before = time.time()
    job = queue.enqueue_in(1, fault_jobs.add, 2, 3)

    assert job.id in queue.scheduled_job_registry
    assert job.get_status() == JobStatus.SCHEDULED
    assert queue.job_ids == []
    due = queue.scheduled_job_registry.get_expiration_time(job)
    assert before + 1 <= due <= time.time() + 1

    start_worker("delayq")
    result = job.latest_result(timeout=15)

    assert result is not None
    assert result.type == Result.Type.SUCCESSFUL
    assert result.return_value == 5
    waited_s = result.started_at.timestamp() - before
    print(f"enqueue_in(1): the job started {waited_s:.3f} s after enqueue")
    assert waited_s >= 1.0
    assert job.id not in queue.scheduled_job_registry


def test_enqueue_in_accepts_timedelta_and_string(connection):
    queue = Queue("delayformsq", connection=connection)
    before = time.time()
    by_timedelta = queue.enqueue_in(timedelta(minutes=2), fault_jobs.add, 1, 1)
    by_string = queue.enqueue_in("10m", fault_jobs.add, 1, 1)
    after = time.time()

    registry = queue.scheduled_job_registry
    assert before + 120 <= registry.get_expiration_time(by_timedelta) <= after + 120
    assert before + 600 <= registry.get_expiration_time(by_string) <= after + 600


def test_enqueue_in_negative_delay_rejected(connection):
    queue = Queue("delaybadq", connection=connection)

    with pytest.raises(InvalidOptionError) as raised:
        queue.enqueue_in(-1, fault_jobs.add, 1, 1)

    assert str(raised.value) == "delay=-1 is invalid: use a delay >= 0"
    assert connection.keys("*") == []


def test_enqueue_at_runs_at_given_time(start_worker, connection):
    queue = Queue("atq", connection=connection)
    when = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    job = queue.enqueue_at(when, fault_jobs.add, 4, 5)

    assert job.get_status() == JobStatus.SCHEDULED
    assert queue.scheduled_job_registry.get_expiration_time(job) == pytest.approx(when.timestamp(), abs=1e-3)

    start_worker("atq")
    result = job.latest_result(timeout=15)

    assert result is not None
    assert result.return_value == 9
    print(f"enqueue_at: the job started {result.started_at.timestamp() - when.timestamp():.3f} s after its due time")
    assert result.started_at.timestamp() >= when.timestamp()


def test_enqueue_at_naive_datetime_is_local_time(connection):
    queue = Queue("atnaiveq", connection=connection)
    when = datetime.now() + timedelta(hours=1)
    job = queue.enqueue_at(when, fault_jobs.add, 1, 1)

    assert queue.scheduled_job_registry.get_expiration_time(job) == pytest.approx(when.timestamp(), abs=1e-3)


def test_enqueue_at_rejects_non_datetime(connection):
    queue = Queue("atbadq", connection=connection)

    with pytest.raises(InvalidOptionError) as raised:
        queue.enqueue_at(12345, fault_jobs.add, 1, 1)

    assert str(raised.value) == "when=12345 is invalid: pass a datetime"

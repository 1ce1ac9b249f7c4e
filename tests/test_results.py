"""Tests of ``Result`` records, ``latest_result`` waits and result lifetimes, with a real Redis and workers."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import redis

from nbqueue import Job, JobStatus, Queue, Result, Retry, get_current_job, keys

DEFAULT_RESULT_TTL_S = 500
DEFAULT_FAILURE_TTL_S = 365 * 24 * 3600


def add(a: int, b: int) -> int:
    return a + b


def return_none() -> None:
    return None


def fail_with_value_error(code: int) -> None:
    raise ValueError(f"bad input {code}")


def fail_with_run_number() -> None:
    """Fail with the number of this run, counted in Redis, so that each result names its run."""
    run = get_current_job().connection.incr("test:runs")
    raise RuntimeError(f"run {run}")


def return_run_number() -> int:
    return get_current_job().connection.incr("test:runs")


def return_lock() -> threading.Lock:
    return threading.Lock()


def return_long_text() -> str:
    return "x" * 5000


def run_burst_worker(start_worker, *args: str):
    worker = start_worker("--burst", *args)
    assert worker.wait() == 0, worker.log()
    return worker


# Result fields


def test_result_fields_successful(connection, start_worker):
    before = time.time()
    job = Queue(connection=connection).enqueue(add, 2, 3)

    run_burst_worker(start_worker, "--name", "results-worker")
    after = time.time()

    result = job.latest_result()
    assert result.type == Result.Type.SUCCESSFUL
    assert result.job_id == job.id
    assert result.return_value == 5
    assert result.worker_name == "results-worker"
    assert result.exc_string is None
    assert result.started_at <= result.ended_at
    assert before <= result.started_at.timestamp()
    assert result.ended_at.timestamp() <= after
    # created_at comes from the stream entry id, in whole milliseconds of the Redis server's clock.
    assert before - 0.001 <= result.created_at.timestamp() <= after
    assert result.duration_s >= 0
    assert result.execution_started_at == result.started_at
    assert result.execution_ended_at == result.ended_at
    assert result.id == connection.xrevrange(keys.results(job.id), count=1)[0][0].decode()


def test_result_fields_failed(connection, start_worker):
    job = Queue(connection=connection).enqueue(fail_with_value_error, 42)

    run_burst_worker(start_worker, "--name", "failing-worker")

    result = job.latest_result()
    assert result.type == Result.Type.FAILED
    assert result.job_id == job.id
    assert result.return_value is None
    assert result.worker_name == "failing-worker"
    assert result.started_at <= result.ended_at
    assert result.exc_string.startswith("Traceback (most recent call last):")
    assert "in fail_with_value_error" in result.exc_string
    assert result.exc_string.rstrip().endswith("ValueError: bad input 42")


def test_return_value_none_for_failed(connection, start_worker):
    job = Queue(connection=connection).enqueue(fail_with_value_error, 1)

    run_burst_worker(start_worker)

    assert job.return_value() is None
    assert job.return_value(refresh=True) is None
    assert job.get_status() == JobStatus.FAILED


def test_return_value_none_before_run(connection):
    job = Queue(connection=connection).enqueue(add, 1, 2)

    assert job.return_value() is None
    assert job.results() == []
    assert job.latest_result() is None


def test_return_value_refresh(connection, start_worker):
    job = Queue(connection=connection).enqueue(add, 1, 2)
    assert job.return_value() is None

    run_burst_worker(start_worker)

    assert job.return_value(refresh=True) == 3


def test_results_newest_first(connection, start_worker):
    job = Queue(connection=connection).enqueue(fail_with_run_number, retry=Retry(max=2))

    run_burst_worker(start_worker)

    results = job.results()
    assert [result.type for result in results] == [Result.Type.FAILED, Result.Type.RETRIED, Result.Type.RETRIED]
    assert [result.exc_string.rstrip().splitlines()[-1] for result in results] == [
        "RuntimeError: run 3",
        "RuntimeError: run 2",
        "RuntimeError: run 1",
    ]
    assert results[0].created_at >= results[1].created_at >= results[2].created_at
    assert job.latest_result() == results[0]


def test_unpicklable_return_value_fails(connection, start_worker):
    queue = Queue(connection=connection)
    job = queue.enqueue(return_lock)
    next_job = queue.enqueue(add, 3, 4)

    run_burst_worker(start_worker)

    result = job.latest_result()
    assert result.type == Result.Type.FAILED
    assert "SerializationError" in result.exc_string
    assert "returned a lock that cannot be stored" in result.exc_string
    assert result.return_value is None
    assert job.get_status() == JobStatus.FAILED
    assert next_job.return_value() == 7


def test_return_value_over_limit_fails(connection, start_worker, monkeypatch):
    queue = Queue(connection=connection)
    job = queue.enqueue(return_long_text)
    next_job = queue.enqueue(add, 3, 4)
    monkeypatch.setenv("NBQUEUE_MAX_PAYLOAD_BYTES", "2000")

    run_burst_worker(start_worker)

    result = job.latest_result()
    assert result.type == Result.Type.FAILED
    assert "over the limit of 2,000 bytes" in result.exc_string
    assert next_job.return_value() == 7


# The cap of 10 results per job


def test_results_capped_at_ten_with_retries(connection, start_worker):
    job = Queue(connection=connection).enqueue(fail_with_run_number, retry=Retry(max=11))

    run_burst_worker(start_worker)

    assert connection.get("test:runs") == b"12"
    assert connection.xlen(keys.results(job.id)) == 10
    results = job.results()
    assert len(results) == 10
    assert [result.exc_string.rstrip().splitlines()[-1] for result in results] == [
        f"RuntimeError: run {run}" for run in range(12, 2, -1)
    ]
    assert results[0].type == Result.Type.FAILED
    assert {result.type for result in results[1:]} == {Result.Type.RETRIED}


def test_results_capped_at_ten_when_reenqueued(connection, start_worker):
    queue = Queue(connection=connection)
    worker = start_worker()

    for run in range(1, 13):
        queue.enqueue(return_run_number, job_id="rerun")
        worker.wait_for_log(rf"(?s)(?:Job rerun finished.*?){{{run}}}", timeout_s=10)

    job = Job.fetch("rerun", connection)
    assert connection.xlen(keys.results("rerun")) == 10
    assert [result.return_value for result in job.results()] == list(range(12, 2, -1))
    assert job.return_value() == 12


# latest_result(timeout=...)


def test_latest_result_wait_returns_at_once(connection, start_worker):
    job = Queue(connection=connection).enqueue(add, 1, 2)
    run_burst_worker(start_worker)

    started = time.monotonic()
    result = job.latest_result(timeout=10)
    elapsed_s = time.monotonic() - started

    assert result.return_value == 3
    assert elapsed_s < 0.5


def test_latest_result_wait_times_out(connection):
    job = Queue(connection=connection).enqueue(add, 1, 2)

    started = time.monotonic()
    result = job.latest_result(timeout=0.5)
    elapsed_s = time.monotonic() - started

    assert result is None
    assert 0.5 <= elapsed_s < 1.5


def test_latest_result_wait_sees_new_result(connection, start_worker):
    job = Queue(connection=connection).enqueue(add, 4, 5)
    assert job.latest_result() is None

    start_worker("--burst", wait_ready=False)
    started = time.monotonic()
    result = job.latest_result(timeout=15)

    assert result is not None
    assert result.type == Result.Type.SUCCESSFUL
    assert result.return_value == 9
    assert time.monotonic() - started < 15


def test_latest_result_wait_ignores_socket_timeout(redis_url):
    client = redis.Redis.from_url(redis_url, socket_timeout=0.2)
    job = Queue(connection=client).enqueue(add, 1, 2)

    started = time.monotonic()
    result = job.latest_result(timeout=1.5)
    elapsed_s = time.monotonic() - started

    assert result is None
    assert 1.5 <= elapsed_s < 2.5
    assert client.ping() is True
    client.close()


@pytest.mark.parametrize("timeout", [-1, "5", True])
def test_latest_result_invalid_timeout(connection, timeout):
    job = Queue(connection=connection).enqueue(add, 1, 2)

    with pytest.raises(ValueError):
        job.latest_result(timeout=timeout)


def test_latest_result_wait_for_deleted_job(connection):
    job = Queue(connection=connection).enqueue(add, 1, 2)
    connection.delete(keys.job(job.id))

    started = time.monotonic()
    result = job.latest_result(timeout=10)

    assert result is None
    assert time.monotonic() - started < 1.5


WAIT_THEN_INTERRUPT = textwrap.dedent(
    """
    import sys
    import time

    from nbqueue import Queue

    queue = Queue(connection=sys.argv[1])
    job = queue.enqueue(len, "abc")
    print("waiting", flush=True)
    try:
        job.latest_result(timeout=30)
        print("returned", flush=True)
    except KeyboardInterrupt:
        print(f"interrupted at {time.time():.3f}", flush=True)
    print("ping", job.connection.ping(), flush=True)
    print("count", queue.count, flush=True)
    print("wait again", job.latest_result(timeout=0.3), flush=True)
    """
)


def test_latest_result_wait_interrupted(redis_url, tmp_path):
    script = tmp_path / "wait_then_interrupt.py"
    script.write_text(WAIT_THEN_INTERRUPT)
    process = subprocess.Popen(
        [sys.executable, str(script), redis_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline() == "waiting\n"
        # The wait must already be blocked in Redis when the signal comes, as it is when a user presses Ctrl-C.
        time.sleep(0.5)
        sent_at = time.time()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait(5)

    lines = out.splitlines()
    assert lines[0].startswith("interrupted at "), (out, err)
    assert float(lines[0].split()[-1]) - sent_at < 1.2
    assert lines[1:] == ["ping True", "count 1", "wait again None"], (out, err)
    assert process.returncode == 0, err


# result_ttl


def test_result_ttl_default(connection, start_worker):
    job = Queue(connection=connection).enqueue(add, 1, 2)

    run_burst_worker(start_worker)

    assert DEFAULT_RESULT_TTL_S - 10 <= connection.ttl(keys.job(job.id)) <= DEFAULT_RESULT_TTL_S
    assert DEFAULT_RESULT_TTL_S - 10 <= connection.ttl(keys.results(job.id)) <= DEFAULT_RESULT_TTL_S
    score = connection.zscore(keys.finished("default"), job.id)
    assert score == pytest.approx(time.time() + DEFAULT_RESULT_TTL_S, abs=10)
    assert job.get_status() == JobStatus.FINISHED


def test_result_ttl_custom(connection, start_worker):
    job = Queue(connection=connection).enqueue(add, 1, 2, result_ttl="2m")

    run_burst_worker(start_worker)

    assert 110 <= connection.ttl(keys.job(job.id)) <= 120
    assert 110 <= connection.ttl(keys.results(job.id)) <= 120
    score = connection.zscore(keys.finished("default"), job.id)
    assert score == pytest.approx(time.time() + 120, abs=10)


def test_result_ttl_zero_keeps_nothing(connection, start_worker):
    queue = Queue(connection=connection)
    job = queue.enqueue(add, 1, 2, result_ttl=0)

    run_burst_worker(start_worker)

    assert connection.exists(keys.job(job.id)) == 0
    assert job.results() == []
    assert job.latest_result() is None
    assert job.return_value() is None
    assert job.id not in queue.finished_job_registry
    assert job.id not in queue.started_job_registry
    # A marker entry signals waiters that the outcome was discarded, and it must expire on its own.
    assert connection.pttl(keys.results(job.id)) <= 2000


def test_result_ttl_zero_waiter_returns_none(connection, start_worker):
    job = Queue(connection=connection).enqueue(add, 1, 2, result_ttl=0)
    outcome: dict[str, object] = {}

    def wait() -> None:
        started = time.monotonic()
        outcome["result"] = job.latest_result(timeout=30)
        outcome["returned_at"] = time.monotonic()
        outcome["elapsed_s"] = outcome["returned_at"] - started

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    run_burst_worker(start_worker)
    worker_done_at = time.monotonic()
    waiter.join(10)

    assert not waiter.is_alive()
    assert outcome["result"] is None
    assert outcome["returned_at"] - worker_done_at < 3
    assert outcome["elapsed_s"] < 15


def test_result_ttl_never_expires(connection, start_worker):
    queue = Queue(connection=connection)
    job = queue.enqueue(add, 1, 2, result_ttl=-1)

    run_burst_worker(start_worker)

    assert connection.ttl(keys.job(job.id)) == -1
    assert connection.ttl(keys.results(job.id)) == -1
    assert connection.zscore(keys.finished("default"), job.id) == math.inf
    assert queue.finished_job_registry.get_job_ids() == [job.id]
    assert job.return_value() == 3


def test_result_ttl_none_return_kept(connection, start_worker):
    queue = Queue(connection=connection)
    job = queue.enqueue(return_none)

    run_burst_worker(start_worker)

    result = job.latest_result()
    assert result.type == Result.Type.SUCCESSFUL
    assert result.return_value is None
    assert result.exc_string is None
    assert job.get_status() == JobStatus.FINISHED
    assert DEFAULT_RESULT_TTL_S - 10 <= connection.ttl(keys.job(job.id)) <= DEFAULT_RESULT_TTL_S
    assert DEFAULT_RESULT_TTL_S - 10 <= connection.ttl(keys.results(job.id)) <= DEFAULT_RESULT_TTL_S
    assert queue.finished_job_registry.get_job_ids() == [job.id]


# failure_ttl


def test_failure_ttl_default(connection, start_worker):
    queue = Queue(connection=connection)
    job = queue.enqueue(fail_with_value_error, 1)

    run_burst_worker(start_worker)

    assert DEFAULT_FAILURE_TTL_S - 10 <= connection.ttl(keys.job(job.id)) <= DEFAULT_FAILURE_TTL_S
    assert DEFAULT_FAILURE_TTL_S - 10 <= connection.ttl(keys.results(job.id)) <= DEFAULT_FAILURE_TTL_S
    score = connection.zscore(keys.failed("default"), job.id)
    assert score == pytest.approx(time.time() + DEFAULT_FAILURE_TTL_S, abs=10)
    assert queue.failed_job_registry.get_job_ids() == [job.id]
    assert job.id not in queue.finished_job_registry


def test_failure_ttl_custom(connection, start_worker):
    queue = Queue(connection=connection)
    job = queue.enqueue(fail_with_value_error, 1, failure_ttl=100)

    run_burst_worker(start_worker)

    assert 90 <= connection.ttl(keys.job(job.id)) <= 100
    assert 90 <= connection.ttl(keys.results(job.id)) <= 100
    score = connection.zscore(keys.failed("default"), job.id)
    assert score == pytest.approx(time.time() + 100, abs=10)


def test_failure_ttl_never_expires(connection, start_worker):
    queue = Queue(connection=connection)
    job = queue.enqueue(fail_with_value_error, 1, failure_ttl=-1)

    run_burst_worker(start_worker)

    assert connection.ttl(keys.job(job.id)) == -1
    assert connection.ttl(keys.results(job.id)) == -1
    assert connection.zscore(keys.failed("default"), job.id) == math.inf
    assert queue.failed_job_registry.get_job_ids() == [job.id]


def test_failure_ttl_applies_not_result_ttl(connection, start_worker):
    job = Queue(connection=connection).enqueue(fail_with_value_error, 1, result_ttl=-1, failure_ttl=100)

    run_burst_worker(start_worker)

    assert 90 <= connection.ttl(keys.job(job.id)) <= 100
    assert 90 <= connection.ttl(keys.results(job.id)) <= 100


# ttl: how long a job may wait in its queue


def test_ttl_expired_job_not_run(connection, start_worker):
    queue = Queue(connection=connection)
    job = queue.enqueue(add, 1, 2, ttl=1)
    assert 0 < connection.ttl(keys.job(job.id)) <= 1

    # Redis removes the job hash when its ttl passes, so wait for that, bounded.
    deadline = time.monotonic() + 5
    while connection.exists(keys.job(job.id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connection.exists(keys.job(job.id)) == 0

    worker = run_burst_worker(start_worker)

    assert job.results() == []
    assert connection.exists(keys.job(job.id)) == 0
    assert queue.count == 0
    assert job.id not in queue.finished_job_registry
    assert job.id not in queue.failed_job_registry
    assert job.id not in queue.started_job_registry
    expired_lines = [line for line in worker.log().splitlines() if job.id in line and "expired" in line]
    assert len(expired_lines) == 1, worker.log()


def test_ttl_job_run_in_time_kept(connection, start_worker):
    job = Queue(connection=connection).enqueue(add, 1, 2, ttl=60)

    run_burst_worker(start_worker)

    assert job.return_value() == 3
    assert DEFAULT_RESULT_TTL_S - 10 <= connection.ttl(keys.job(job.id)) <= DEFAULT_RESULT_TTL_S

"""Tests of the ``nbqueue`` commands that look at and act on queues and jobs: info, requeue, empty, stop.

Each command runs as ``python -m nbqueue`` in a subprocess against the session's redis-server.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from polling import wait_until

import fault_jobs
from nbqueue import Job, JobStatus, Queue, Result, keys

pytestmark = pytest.mark.timeout(60)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbqueue", *args], capture_output=True, text=True, timeout=30)


def table_rows(output: str) -> dict[str, list[str]]:
    """Split ``info`` output into rows keyed by their first column."""
    return {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.strip()}


def run_burst(start_worker, queue_name: str) -> None:
    worker = start_worker("--burst", queue_name)
    assert worker.wait(30) == 0, worker.log()


# info


def test_info_counts_each_registry_and_shows_worker(start_worker, connection, redis_url):
    queue = Queue("cliq", connection=connection)
    queue.enqueue(fault_jobs.add, 1, 2)
    queue.enqueue(fault_jobs.always_fail, "one")
    queue.enqueue(fault_jobs.always_fail, "two")
    run_burst(start_worker, "cliq")
    for index in range(3):
        queue.enqueue(fault_jobs.add, index, index)
    queue.enqueue_in(600, fault_jobs.add, 1, 1)
    queue.enqueue(fault_jobs.add, 9, 9).cancel()
    running = Queue("runq", connection=connection).enqueue(fault_jobs.sleep_then_return, 30)
    worker = start_worker("--name", "cli-worker", "runq")
    worker.wait_for_log(rf"Job {running.id} started")

    # The worker key's state and current jobs change with its heartbeat, every 10 s.
    shown_at = time.monotonic()
    wait_until(
        lambda: table_rows(run_cli("info", "--url", redis_url).stdout)["cli-worker"][0] == "busy",
        15, "info to show the worker busy",
    )
    lag_s = time.monotonic() - shown_at
    info = run_cli("info", "--url", redis_url)
    rows = table_rows(info.stdout)

    print(f"info showed the worker busy {lag_s:.1f} s after its job started")
    assert info.returncode == 0, info.stderr
    assert info.stdout.splitlines()[0].split() == ["queue", "queued", "started", "scheduled", "finished", "failed", "canceled"]
    assert rows["cliq"] == ["3", "0", "1", "1", "2", "1"], info.stdout
    assert rows["runq"] == ["0", "1", "0", "0", "0", "0"], info.stdout
    worker_row = rows["cli-worker"]
    assert worker_row[0] == "busy"
    assert worker_row[1:3] == ["0", "0"]
    assert worker_row[-1] == running.id
    running.stop()


def test_info_empty_server(redis_url):
    info = run_cli("info", "--url", redis_url)

    assert info.returncode == 0, info.stderr
    assert "(no queues)" in info.stdout
    assert "(no workers)" in info.stdout


# requeue


def test_requeue_one_job(start_worker, connection, redis_url):
    queue = Queue("requeuecliq", connection=connection)
    failed = queue.enqueue(fault_jobs.always_fail, "boom")
    run_burst(start_worker, "requeuecliq")
    assert failed.get_status() == JobStatus.FAILED

    result = run_cli("requeue", "--url", redis_url, failed.id)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Requeued {failed.id}\n1 of 1 jobs requeued\n"
    assert failed.get_status() == JobStatus.QUEUED
    assert queue.job_ids == [failed.id]
    assert failed.id not in queue.failed_job_registry


def test_requeue_all_counts_jobs(start_worker, connection, redis_url):
    queue = Queue("requeueallq", connection=connection)
    failed = [queue.enqueue(fault_jobs.always_fail, str(index)) for index in range(3)]
    finished = queue.enqueue(fault_jobs.add, 1, 1)
    run_burst(start_worker, "requeueallq")

    result = run_cli("requeue", "--url", redis_url, "--all")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines[:-1]) == sorted(f"Requeued {job.id}" for job in failed)
    assert lines[-1] == "3 of 3 jobs requeued"
    assert sorted(queue.job_ids) == sorted(job.id for job in failed)
    assert finished.get_status() == JobStatus.FINISHED
    assert len(queue.failed_job_registry) == 0


def test_requeue_finished_job_exits_one(start_worker, connection, redis_url):
    queue = Queue("requeuebadq", connection=connection)
    finished = queue.enqueue(fault_jobs.add, 1, 1)
    run_burst(start_worker, "requeuebadq")

    result = run_cli("requeue", "--url", redis_url, finished.id)

    assert result.returncode == 1
    assert result.stdout == "0 of 1 jobs requeued\n"
    assert result.stderr == (
        f"Not requeued: Job {finished.id!r} cannot be requeued (status finished): "
        f"only failed, stopped or canceled jobs can\n"
    )


def test_requeue_missing_job_exits_one(redis_url):
    result = run_cli("requeue", "--url", redis_url, "no-such-job")

    assert result.returncode == 1
    assert result.stderr == (
        "Not requeued: No job with id 'no-such-job': it was never created, was deleted, or has expired\n"
    )


def test_requeue_without_ids_or_all_is_usage_error(redis_url):
    result = run_cli("requeue", "--url", redis_url)

    assert result.returncode == 2
    assert "Give job ids or --all, not both and not neither" in result.stderr


# empty


def test_empty_removes_waiting_jobs(connection, redis_url):
    queue = Queue("emptyq", connection=connection)
    jobs = [queue.enqueue(fault_jobs.add, index, index) for index in range(4)]

    result = run_cli("empty", "--url", redis_url, "emptyq")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "Removed 4 jobs from queue emptyq\n"
    assert queue.count == 0
    assert connection.exists(*(keys.job(job.id) for job in jobs)) == 0

    again = run_cli("empty", "--url", redis_url, "emptyq")
    assert again.stdout == "Removed 0 jobs from queue emptyq\n"


# stop


def test_stop_running_job(start_worker, connection, redis_url):
    job = Queue("stopcliq", connection=connection).enqueue(fault_jobs.sleep_then_return, 30)
    worker = start_worker("stopcliq")
    worker.wait_for_log(rf"Job {job.id} started")

    result = run_cli("stop", "--url", redis_url, job.id)
    stopped = job.latest_result(timeout=5)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Stop requested for job {job.id}\n"
    assert stopped is not None, worker.log()
    assert stopped.type == Result.Type.STOPPED
    assert Job.fetch(job.id, connection).get_status() == JobStatus.STOPPED


def test_stop_missing_job_exits_one(redis_url):
    result = run_cli("stop", "--url", redis_url, "no-such-job")

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "Error: No job with id 'no-such-job': it was never created, was deleted, or has expired\n"


def test_stop_queued_job_exits_one(connection, redis_url):
    job = Queue("stopcliq", connection=connection).enqueue(fault_jobs.add, 1, 1)

    result = run_cli("stop", "--url", redis_url, job.id)

    assert result.returncode == 1
    assert f"Error: Job {job.id!r} is not running (status queued)" in result.stderr


def test_unreachable_redis_gives_one_error_line(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe socket is closed.
    completed = run_cli("info", "--url", f"redis://:secret-word@127.0.0.1:{port}/0")

    assert completed.returncode == 1
    assert completed.stderr.startswith("Error: ")
    assert "Traceback" not in completed.stderr
    assert "secret-word" not in completed.stderr

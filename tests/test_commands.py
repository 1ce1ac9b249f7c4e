"""Tests of stop, cancel, requeue and delete, of shutdown and crashes, of abandoned jobs and of concurrency.

Every test runs real ``nbqueue worker`` subprocesses against the session's redis-server.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from polling import wait_until

import fault_jobs
from nbqueue import Job, JobStatus, Queue, Result, Retry, keys
from nbqueue.commands import send_stop_job_command
from nbqueue.errors import InvalidJobOperation, NoSuchJobError

pytestmark = pytest.mark.timeout(60)


def wait_until_running(job: Job, worker, timeout_s: float = 15) -> None:
    """Wait until the worker has logged the job's start, so that a stop command finds it running."""
    worker.wait_for_log(rf"Job {job.id} started", timeout_s)
    assert job.get_status() == JobStatus.STARTED


# Stop


@pytest.mark.parametrize("how", ["job.stop", "send_stop_job_command"])
def test_stop_running_job_records_stopped(start_worker, connection, how):
    queue = Queue("stopq", connection=connection)
    running = queue.enqueue(fault_jobs.sleep_then_return, 30, retry=Retry(max=3))
    behind = queue.enqueue(fault_jobs.sleep_then_return, 2, "next")
    worker = start_worker("stopq")
    wait_until_running(running, worker)

    requested_at = time.monotonic()
    if how == "job.stop":
        running.stop()
    else:
        send_stop_job_command(connection, running.id)
    result = running.latest_result(timeout=2)
    stop_s = time.monotonic() - requested_at

    assert result is not None, worker.log()
    print(f"{how}: STOPPED result {stop_s:.3f} s after the request")
    assert result.type == Result.Type.STOPPED
    assert result.exc_string == "The job was stopped on request; its work horse was killed"
    assert running.get_status() == JobStatus.STOPPED
    assert str(running.get_status()) == "stopped"

    # The next job runs for 2 s: time enough for a wrong retry to show up, and proof the worker went on.
    behind_result = behind.latest_result(timeout=10)

    assert behind_result is not None, worker.log()
    assert behind_result.return_value == "next"
    assert [r.type for r in running.results()] == [Result.Type.STOPPED]
    assert running.get_status() == JobStatus.STOPPED
    assert running.id not in queue.scheduled_job_registry
    assert running.id not in queue.started_job_registry
    assert running.id in queue.failed_job_registry
    assert queue.job_ids == []
    assert worker.process.poll() is None


def test_stop_queued_job_rejected(connection):
    job = Queue("stopq", connection=connection).enqueue(fault_jobs.add, 1, 2)

    with pytest.raises(InvalidJobOperation) as raised:
        job.stop()

    assert str(raised.value) == (
        f"Job {job.id!r} is not running (status queued): only a started job can be stopped; "
        f"use job.cancel() for a queued or scheduled job"
    )
    assert job.get_status() == JobStatus.QUEUED


def test_stop_finished_job_rejected(start_worker, connection):
    job = Queue("stopq", connection=connection).enqueue(fault_jobs.add, 1, 2)
    start_worker("stopq")
    assert job.latest_result(timeout=10) is not None

    with pytest.raises(InvalidJobOperation) as raised:
        send_stop_job_command(connection, job.id)

    assert "is not running (status finished): only a started job can be stopped" in str(raised.value)


def test_stop_missing_job_raises_no_such_job(connection):
    with pytest.raises(NoSuchJobError) as raised:
        send_stop_job_command(connection, "no-such-job")

    assert str(raised.value) == "No job with id 'no-such-job': it was never created, was deleted, or has expired"

    with pytest.raises(NoSuchJobError):
        Job("no-such-job", connection).stop()


# Cancel


def test_cancel_queued_job_never_runs(start_worker, connection):
    queue = Queue("cancelq", connection=connection)
    canceled = queue.enqueue(fault_jobs.add, 1, 2)
    kept = queue.enqueue(fault_jobs.add, 3, 4)

    canceled.cancel()

    assert canceled.get_status() == JobStatus.CANCELED
    assert canceled.id in queue.canceled_job_registry
    assert queue.job_ids == [kept.id]

    worker = start_worker("--burst", "cancelq")
    assert worker.wait(20) == 0, worker.log()

    assert canceled.latest_result() is None
    assert canceled.get_status() == JobStatus.CANCELED
    assert f"Job {canceled.id} started" not in worker.log()
    assert kept.latest_result().return_value == 7


def test_cancel_scheduled_job_leaves_scheduled_registry(connection):
    queue = Queue("cancelq", connection=connection)
    job = queue.enqueue_in(60, fault_jobs.add, 1, 2)
    assert job.id in queue.scheduled_job_registry

    job.cancel()

    assert job.id not in queue.scheduled_job_registry
    assert job.id in queue.canceled_job_registry
    assert job.get_status() == JobStatus.CANCELED
    assert queue.job_ids == []


def test_cancel_running_job_rejected(start_worker, connection):
    queue = Queue("cancelq", connection=connection)
    job = queue.enqueue(fault_jobs.sleep_then_return, 30)
    worker = start_worker("cancelq")
    wait_until_running(job, worker)

    with pytest.raises(InvalidJobOperation) as raised:
        job.cancel()

    assert str(raised.value) == (
        f"Job {job.id!r} cannot be canceled (status started): only queued or scheduled jobs can; "
        f"use job.stop() for a running job"
    )
    assert job.get_status() == JobStatus.STARTED
    job.stop()


def test_cancel_finished_job_rejected(start_worker, connection):
    queue = Queue("cancelq", connection=connection)
    job = queue.enqueue(fault_jobs.add, 1, 2)
    start_worker("cancelq")
    assert job.latest_result(timeout=10) is not None

    with pytest.raises(InvalidJobOperation) as raised:
        job.cancel()

    assert "cannot be canceled (status finished)" in str(raised.value)
    assert job.get_status() == JobStatus.FINISHED
    assert job.id not in queue.canceled_job_registry


def test_cancel_missing_job_raises_no_such_job(connection):
    queue = Queue("cancelq", connection=connection)
    job = queue.enqueue(fault_jobs.add, 1, 2)
    job.delete()

    with pytest.raises(NoSuchJobError):
        job.cancel()


# Requeue and delete


def test_requeue_failed_job_runs_again(start_worker, connection, tmp_path):
    queue = Queue("requeueq", connection=connection)
    job = queue.enqueue(fault_jobs.fail_once_then_return, str(tmp_path / "runs"), "second")
    worker = start_worker("requeueq")
    first = job.latest_result(timeout=10)
    assert first is not None, worker.log()
    assert first.type == Result.Type.FAILED
    assert job.id in queue.failed_job_registry

    job.requeue()
    wait_until(lambda: len(job.results()) == 2, 10, "a second result")

    results = list(reversed(job.results()))
    assert [r.type for r in results] == [Result.Type.FAILED, Result.Type.SUCCESSFUL]
    assert results[1].return_value == "second"
    assert job.get_status() == JobStatus.FINISHED
    assert job.id not in queue.failed_job_registry
    assert job.id in queue.finished_job_registry


def test_requeue_finished_job_rejected(start_worker, connection):
    queue = Queue("requeueq", connection=connection)
    job = queue.enqueue(fault_jobs.add, 1, 2)
    start_worker("requeueq")
    assert job.latest_result(timeout=10) is not None

    with pytest.raises(InvalidJobOperation) as raised:
        job.requeue()

    assert str(raised.value) == (
        f"Job {job.id!r} cannot be requeued (status finished): only failed, stopped or canceled jobs can"
    )


def test_delete_removes_every_key(start_worker, connection):
    queue = Queue("deleteq", connection=connection)
    job = queue.enqueue(fault_jobs.always_fail, "boom")
    start_worker("deleteq")
    assert job.latest_result(timeout=10) is not None
    assert connection.exists(keys.job(job.id), keys.results(job.id)) == 2

    job.delete()

    assert connection.exists(keys.job(job.id), keys.results(job.id)) == 0
    assert [key for key in connection.keys("*") if job.id.encode() in key] == []
    assert job.id not in queue.failed_job_registry
    assert not job.exists()
    with pytest.raises(NoSuchJobError):
        Job.fetch(job.id, connection)


def test_delete_queued_job_leaves_queue(connection):
    queue = Queue("deleteq", connection=connection)
    job = queue.enqueue(fault_jobs.add, 1, 2)

    job.delete()

    assert queue.job_ids == []
    assert not job.exists()


# Shutdown


def test_warm_sigint_lets_running_job_finish(start_worker, connection):
    queue = Queue("warmq", connection=connection)
    job = queue.enqueue(fault_jobs.sleep_then_return, 2, "finished")
    worker = start_worker("warmq")
    wait_until_running(job, worker)

    worker.signal(signal.SIGINT)
    exit_code = worker.wait(15)

    assert exit_code == 0, worker.log()
    result = job.latest_result()
    assert result is not None
    assert result.type == Result.Type.SUCCESSFUL
    assert result.return_value == "finished"


def test_cold_shutdown_records_failed(start_worker, connection):
    queue = Queue("coldq", connection=connection)
    job = queue.enqueue(fault_jobs.sleep_then_return, 30)
    worker = start_worker("--name", "coldfail", "coldq")
    wait_until_running(job, worker)

    worker.signal(signal.SIGINT)
    worker.wait_for_log(r"Worker coldfail received SIGINT: warm shutdown")
    worker.signal(signal.SIGINT)
    exit_code = worker.wait(15)

    assert exit_code == 0, worker.log()
    assert [r.type for r in job.results()] == [Result.Type.FAILED]
    assert job.latest_result().exc_string == (
        "nbqueue.errors.WorkHorseDiedError: The worker coldfail was shut down (SIGINT, cold shutdown) "
        "while the job ran; the job was killed"
    )
    assert job.get_status() == JobStatus.FAILED
    assert job.id in queue.failed_job_registry


def test_cold_shutdown_retries_job_with_retries_left(start_worker, connection, tmp_path):
    queue = Queue("coldretryq", connection=connection)
    job = queue.enqueue(fault_jobs.long_first_run, str(tmp_path / "marker"), 30, retry=Retry(max=1))
    worker = start_worker("--name", "coldretry", "coldretryq")
    wait_until_running(job, worker)
    # The start is logged when the job reaches its work horse; the marker shows the first run began.
    wait_until(lambda: (tmp_path / "marker").exists(), 10, "the first run to create its marker")

    worker.signal(signal.SIGINT)
    worker.wait_for_log(r"Worker coldretry received SIGINT: warm shutdown")
    worker.signal(signal.SIGINT)
    assert worker.wait(15) == 0, worker.log()

    assert [r.type for r in job.results()] == [Result.Type.RETRIED]
    assert "cold shutdown" in job.latest_result().exc_string
    assert job.get_status() == JobStatus.QUEUED
    assert queue.job_ids == [job.id]

    second_worker = start_worker("coldretryq")
    wait_until(lambda: len(job.results()) == 2, 15, "the retried run's result")

    assert [r.type for r in reversed(job.results())] == [Result.Type.RETRIED, Result.Type.SUCCESSFUL], (
        second_worker.log()
    )
    assert job.return_value(refresh=True) == "second run"


# Crashing work horses


@pytest.mark.parametrize(
    ("func", "args", "expected"),
    [
        (
            fault_jobs.exit_horse, (7,),
            "nbqueue.errors.WorkHorseDiedError: The work horse running the job exited with status 7",
        ),
        (
            fault_jobs.segfault, (),
            "nbqueue.errors.WorkHorseDiedError: The work horse running the job was killed by signal SIGSEGV",
        ),
    ],
    ids=["os._exit(7)", "segfault"],
)
def test_crashed_horse_records_failed(start_worker, connection, func, args, expected):
    queue = Queue("crashq", connection=connection)
    crashed = queue.enqueue(func, *args)
    behind = queue.enqueue(fault_jobs.add, 2, 2)
    worker = start_worker("crashq")

    result = crashed.latest_result(timeout=10)
    behind_result = behind.latest_result(timeout=10)

    assert result is not None, worker.log()
    assert result.type == Result.Type.FAILED
    assert result.exc_string == expected
    assert crashed.get_status() == JobStatus.FAILED
    assert behind_result is not None, worker.log()
    assert behind_result.return_value == 4
    assert worker.process.poll() is None


# Abandoned jobs


@pytest.mark.timeout(120)
def test_abandoned_jobs_failed_or_retried(start_worker, connection, tmp_path):
    queue = Queue("abandonq", connection=connection)
    plain = queue.enqueue(fault_jobs.sleep_then_return, 300)
    retried = queue.enqueue(fault_jobs.long_first_run, str(tmp_path / "marker"), 300, retry=Retry(max=1))
    worker_a = start_worker("--name", "doomed", "--concurrency", "2", "abandonq")
    wait_until_running(plain, worker_a)
    wait_until_running(retried, worker_a)
    wait_until(lambda: (tmp_path / "marker").exists(), 10, "the first run to create its marker")

    worker_a.kill()
    killed_at = time.monotonic()
    worker_b = start_worker("--name", "rescuer", "abandonq")

    plain_result = plain.latest_result(timeout=60)
    plain_s = time.monotonic() - killed_at
    wait_until(lambda: len(retried.results()) == 2, 60 - (time.monotonic() - killed_at), "the retried run's result")
    retried_s = time.monotonic() - killed_at
    print(f"abandoned job FAILED {plain_s:.1f} s after its worker's SIGKILL; retried job SUCCESSFUL after {retried_s:.1f} s")

    assert plain_result is not None, worker_b.log()
    assert plain_result.type == Result.Type.FAILED
    assert "AbandonedJobError" in plain_result.exc_string
    assert plain_result.exc_string == (
        "nbqueue.errors.AbandonedJobError: Worker doomed stopped sending heartbeats while it held the job; "
        "worker rescuer found the job abandoned"
    )
    assert plain_s < 60
    assert plain.get_status() == JobStatus.FAILED

    results = list(reversed(retried.results()))
    assert [r.type for r in results] == [Result.Type.RETRIED, Result.Type.SUCCESSFUL]
    assert "AbandonedJobError" in results[0].exc_string
    assert results[1].return_value == "second run"
    assert results[1].worker_name == "rescuer"
    assert retried_s < 60
    assert len(queue.started_job_registry) == 0


# Concurrency


def test_concurrency_three_runs_jobs_together(start_worker, connection):
    queue = Queue("concq", connection=connection)
    jobs = [queue.enqueue(fault_jobs.sleep_then_return, 2, index) for index in range(3)]
    worker = start_worker("--concurrency", "3", "concq")

    results = [job.latest_result(timeout=15) for job in jobs]

    assert all(result is not None for result in results), worker.log()
    assert [result.return_value for result in results] == [0, 1, 2]
    first_start = min(result.started_at for result in results)
    last_end = max(result.ended_at for result in results)
    total_s = (last_end - first_start).total_seconds()
    print(f"--concurrency 3: three 2-s jobs took {total_s:.2f} s in all")
    assert total_s < 3.5
    # Every run overlaps every other: each started before any ended.
    assert max(result.started_at for result in results) < min(result.ended_at for result in results)


@pytest.mark.timeout(90)
def test_three_workers_run_each_job_once(start_worker, connection, tmp_path):
    queue = Queue("manyq", connection=connection)
    log_path = tmp_path / "runs.log"
    tokens = [f"job-{index:02d}" for index in range(60)]
    jobs = [queue.enqueue(fault_jobs.append_id_and_pid, str(log_path), token, 0.05) for token in tokens]

    workers = [start_worker("--burst", "manyq") for _ in range(3)]
    for worker in workers:
        assert worker.wait(60) == 0, worker.log()

    lines = log_path.read_text().splitlines()
    seen = Counter(line.split()[0] for line in lines)
    pids = {line.split()[1] for line in lines}
    print(f"3 burst workers: {len(lines)} runs of 60 jobs by {len(pids)} work horses")
    assert sorted(seen) == tokens
    assert [token for token, count in seen.items() if count != 1] == []
    assert len(lines) == 60
    for job in jobs:
        assert [r.type for r in job.results()] == [Result.Type.SUCCESSFUL]
    worker_names = {job.latest_result().worker_name for job in jobs}
    assert len(worker_names) >= 2, worker_names

"""Tests of ``nbqueue worker``: real worker subprocesses against a real redis-server.

The job functions live in ``tests/jobs.py`` so that the worker processes can run them.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from polling import wait_until

import jobs
from servers import find_redis_server_binary, free_port
from nbqueue.worker.supervisor import QUEUE_WAIT_S
from nbqueue import Job, JobStatus, Queue, Result, __version__, keys

pytestmark = pytest.mark.timeout(60)

#: Start of every log line, as ``nbqueue worker`` formats it: date, time, level, logger name.
LINE_START = r"^\S+ \S+ "


def pid_alive(pid: int) -> bool:
    """Return True if ``pid`` runs and is not a zombie (the init process here may never reap one)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def log_lines(log: str, pattern: str) -> list[re.Match]:
    """Return the matches of ``pattern`` that start a log line."""
    return list(re.finditer(LINE_START + pattern, log, re.MULTILINE))


def duration_s(result: Result) -> float:
    return (result.ended_at - result.started_at).total_seconds()


def worker_is_blocked_on_queue(connection: redis.Redis) -> bool:
    """Return True while some client, the idle worker's queue wait, is blocked in BLMOVE."""
    return any(
        client.get("cmd") == "blmove" and "b" in client.get("flags", "") for client in connection.client_list()
    )


@pytest.fixture
def password_server(tmp_path) -> Iterator[tuple[str, str]]:
    """Start a private redis-server that requires a password, and yield its URL and the password."""
    password = "pw" + uuid.uuid4().hex
    port = free_port()
    log = open(tmp_path / "password-redis.log", "wb")
    process = subprocess.Popen(
        [
            find_redis_server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(tmp_path),
            "--save", "",
            "--appendonly", "no",
            "--requirepass", password,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1)

    def answers_ping() -> bool:
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            assert process.poll() is None, (tmp_path / "password-redis.log").read_text()
            return False

    try:
        wait_until(answers_ping, 10, f"redis-server with a password on port {port}")
        yield f"redis://:{password}@127.0.0.1:{port}/0", password
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


# Start-up and log lines


def test_banner_names_version_pid_queues_and_masked_url(start_worker, password_server):
    url, password = password_server
    port = url.rsplit(":", 1)[1].split("/")[0]

    # The fixture passes the test server's --url first; click keeps the last value of a repeated option.
    worker = start_worker("--url", url, "--name", "banner", "--concurrency", "2", "high", "low")
    job = Queue("high", connection=url).enqueue(jobs.add, 2, 3)
    result = job.latest_result(timeout=10)
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    log = worker.log()

    banners = log_lines(
        log,
        rf"INFO nbqueue\.worker: Worker banner started: nbqueue {re.escape(__version__)}, pid (\d+), "
        rf"queues high, low, concurrency 2, redis redis://:\*\*\*@127\.0\.0\.1:{port}/0$",
    )
    assert len(banners) == 1, log
    assert int(banners[0].group(1)) == worker.pid
    assert result is not None and result.return_value == 5
    assert password not in log
    assert "***" in log


def test_log_has_one_line_per_state_change(start_worker, connection):
    worker = start_worker("logq")
    queue = Queue("logq", connection=connection)

    good = queue.enqueue(jobs.sleep_then_return, 0.2, "ok")
    bad = queue.enqueue(jobs.raise_value_error, "boom 42")
    worker.wait_for_log(rf"Job {bad.id} failed")
    log = worker.log()

    started_good = log_lines(log, rf"INFO nbqueue\.worker: Job {good.id} started: queue=logq function=jobs\.sleep_then_return$")
    finished = log_lines(log, rf"INFO nbqueue\.worker: Job {good.id} finished in (\d+\.\d{{3}})s: queue=logq$")
    started_bad = log_lines(log, rf"INFO nbqueue\.worker: Job {bad.id} started: queue=logq function=jobs\.raise_value_error$")
    failed = log_lines(
        log,
        rf"ERROR nbqueue\.worker: Job {bad.id} failed after \d+\.\d{{3}}s: queue=logq\n"
        rf"Traceback \(most recent call last\):\n(?:  .*\n)+ValueError: boom 42$",
    )
    assert len(started_good) == 1, log
    assert len(finished) == 1, log
    assert 0.2 <= float(finished[0].group(1)) < 5
    assert len(started_bad) == 1, log
    assert len(failed) == 1, log
    assert len(log_lines(log, rf".*{good.id}")) == 2, log
    assert len(log_lines(log, rf".*{bad.id}")) == 2, log


# Failures


def test_failures_leave_one_worker_running(start_worker, connection):
    queue = Queue("faults", connection=connection)
    raising = queue.enqueue(jobs.raise_value_error, "boom")
    unpicklable = queue.enqueue(jobs.return_lock)
    corrupt = queue.enqueue(jobs.add, 1, 2)
    connection.hset(keys.job(corrupt.id), "payload", b"\x00garbage\xff")
    exiting = queue.enqueue(jobs.exit_horse, 3)
    segfault = queue.enqueue(jobs.kill_horse_with_signal, signal.SIGSEGV)
    good = queue.enqueue(jobs.add, 2, 3)

    worker = start_worker("--name", "survivor", "faults")
    good_result = good.latest_result(timeout=20)
    results = {job.id: job.results() for job in (raising, unpicklable, corrupt, exiting, segfault)}

    assert good_result is not None, worker.log()
    assert good_result.type == Result.Type.SUCCESSFUL
    assert good_result.return_value == 5
    assert worker.process.poll() is None
    assert int(connection.hget(keys.worker("survivor"), "pid")) == worker.pid
    banner = worker.wait_for_log(r"Worker survivor started: nbqueue \S+, pid (\d+),")
    assert int(banner.group(1)) == worker.pid
    for job_id, job_results in results.items():
        assert len(job_results) == 1, job_id
        assert job_results[0].type == Result.Type.FAILED, job_id
        assert job_results[0].worker_name == "survivor"
        assert Job.fetch(job_id, connection).get_status() == JobStatus.FAILED
        assert job_id in queue.failed_job_registry
        assert job_id not in queue.started_job_registry

    raised = results[raising.id][0].exc_string
    assert raised.startswith("Traceback (most recent call last):\n")
    assert "in raise_value_error\n" in raised
    assert raised.endswith("ValueError: boom\n")
    assert "horse.py" not in raised

    unstorable = results[unpicklable.id][0].exc_string
    assert unstorable.startswith("nbqueue.errors.SerializationError: The job returned a lock that cannot be stored: ")
    assert "cannot pickle '_thread.lock' object" in unstorable

    assert results[corrupt.id][0].exc_string == (
        f"nbqueue.errors.DeserializationError: The payload of job {corrupt.id!r} is not an nbqueue payload: "
        "it does not start with b'NBQ1'"
    )
    assert results[exiting.id][0].exc_string == (
        "nbqueue.errors.WorkHorseDiedError: The work horse running the job exited with status 3"
    )
    assert results[segfault.id][0].exc_string == (
        "nbqueue.errors.WorkHorseDiedError: The work horse running the job was killed by signal SIGSEGV"
    )

    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    worker.wait_for_log(r"Worker survivor stopped \(warm shutdown after SIGTERM\): 1 finished, 5 failed, 0 retried$")


# Timeouts

TIMEOUT_MESSAGE = "nbqueue.errors.JobTimeoutException: Job exceeded its timeout of 1 seconds; its work horse was killed"


@pytest.mark.parametrize(
    "func, args",
    [
        pytest.param(jobs.sleep_then_return, (30,), id="sleep"),
        pytest.param(jobs.sleep_with_signals_blocked, (30,), id="signals-blocked-sleeping"),
        pytest.param(jobs.spin_with_signals_blocked, (30,), id="signals-blocked-spinning"),
        pytest.param(jobs.sum_huge_range, (), id="c-loop"),
        pytest.param(jobs.backtrack_regex, (), id="regex-backtracking"),
    ],
)
def test_timeout_kills_job_and_worker_goes_on(start_worker, connection, func, args):
    worker = start_worker("slowq")
    queue = Queue("slowq", connection=connection)

    slow = queue.enqueue(func, *args, job_timeout=1)
    result = slow.latest_result(timeout=10)
    assert result is not None, worker.log()
    after = queue.enqueue(jobs.add, 20, 22)
    after_result = after.latest_result(timeout=10)

    assert result.type == Result.Type.FAILED
    assert result.exc_string == TIMEOUT_MESSAGE
    assert 1 <= duration_s(result) < 3
    assert slow.get_status() == JobStatus.FAILED
    assert slow.id in queue.failed_job_registry
    assert slow.id not in queue.started_job_registry
    assert len(slow.results()) == 1
    assert after_result is not None, worker.log()
    assert after_result.type == Result.Type.SUCCESSFUL
    assert after_result.return_value == 42
    assert worker.process.poll() is None


def test_queue_default_timeout_applies_without_job_timeout(start_worker, connection):
    worker = start_worker("q")
    queue = Queue("q", connection=connection, default_timeout=1)

    job = queue.enqueue(jobs.sleep_then_return, 30)
    result = job.latest_result(timeout=10)

    assert job.timeout == 1
    assert result is not None, worker.log()
    assert result.type == Result.Type.FAILED
    assert result.exc_string == TIMEOUT_MESSAGE
    assert duration_s(result) < 3


def test_job_timeout_minus_one_runs_to_completion(start_worker, connection):
    worker = start_worker("q")
    queue = Queue("q", connection=connection, default_timeout=1)

    job = queue.enqueue(jobs.sleep_then_return, 2.5, "slow", job_timeout=-1)
    result = job.latest_result(timeout=10)

    assert job.timeout == -1
    assert result is not None, worker.log()
    assert result.type == Result.Type.SUCCESSFUL
    assert result.return_value == "slow"
    assert duration_s(result) >= 2.5


def test_timeout_kills_processes_the_job_started(start_worker, connection, tmp_path):
    worker = start_worker("q")
    pid_path = tmp_path / "child.pid"

    job = Queue("q", connection=connection).enqueue(jobs.start_child_then_sleep, str(pid_path), 30, job_timeout=1)
    wait_until(lambda: pid_path.exists() and pid_path.read_text() != "", 10, "the job to start its child process")
    child_pid = int(pid_path.read_text())
    child_alive_while_running = pid_alive(child_pid)
    result = job.latest_result(timeout=10)

    assert child_alive_while_running
    assert result is not None, worker.log()
    assert result.exc_string == TIMEOUT_MESSAGE
    wait_until(lambda: not pid_alive(child_pid), 2, f"the job's child process {child_pid} to end")


# Shutdown


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_warm_shutdown_finishes_running_job(start_worker, connection, signum):
    queue = Queue("warmq", connection=connection)
    running = queue.enqueue(jobs.sleep_then_return, 2, "finished")
    behind = queue.enqueue(jobs.add, 1, 2)
    worker = start_worker("--name", "warm", "warmq")

    worker.wait_for_log(rf"Job {running.id} started")
    worker.signal(signum)
    exit_code = worker.wait(15)
    result = running.latest_result()
    log = worker.log()

    assert exit_code == 0, log
    assert result is not None, log
    assert result.type == Result.Type.SUCCESSFUL
    assert result.return_value == "finished"
    assert queue.job_ids == [behind.id]
    assert behind.get_status() == JobStatus.QUEUED
    assert behind.latest_result() is None
    assert f"Job {behind.id} started" not in log
    name = signum.name
    assert len(log_lines(log, rf"INFO nbqueue\.worker: Worker warm received {name}: warm shutdown, ")) == 1, log
    stops = log_lines(log, rf"INFO nbqueue\.worker: Worker warm stopped \(warm shutdown after {name}\): 1 finished, 0 failed, 0 retried$")
    assert len(stops) == 1, log


def test_cold_shutdown_kills_running_job(start_worker, connection, tmp_path):
    queue = Queue("coldq", connection=connection)
    pid_path = tmp_path / "child.pid"
    running = queue.enqueue(jobs.start_child_then_sleep, str(pid_path), 30)
    worker = start_worker("--name", "cold", "coldq")

    worker.wait_for_log(rf"Job {running.id} started")
    wait_until(lambda: pid_path.exists() and pid_path.read_text() != "", 10, "the job to start its child process")
    child_pid = int(pid_path.read_text())
    worker.signal(signal.SIGTERM)
    worker.wait_for_log(r"Worker cold received SIGTERM: warm shutdown")
    worker.signal(signal.SIGTERM)
    exit_code = worker.wait(15)
    result = running.latest_result()
    log = worker.log()

    assert exit_code == 0, log
    assert result is not None, log
    assert result.type == Result.Type.FAILED
    assert result.exc_string == (
        "nbqueue.errors.WorkHorseDiedError: The worker cold was shut down (SIGTERM, cold shutdown) "
        "while the job ran; the job was killed"
    )
    assert running.get_status() == JobStatus.FAILED
    assert running.id in queue.failed_job_registry
    assert running.id not in queue.started_job_registry
    assert len(log_lines(log, r"WARNING nbqueue\.worker: Worker cold received SIGTERM again: cold shutdown")) == 1, log
    stops = log_lines(log, r"INFO nbqueue\.worker: Worker cold stopped \(cold shutdown after SIGTERM\): 0 finished, 1 failed, 0 retried$")
    assert len(stops) == 1, log
    wait_until(lambda: not pid_alive(child_pid), 2, f"the job's child process {child_pid} to end")
    assert not connection.exists(keys.worker("cold"))


# Dequeue and scheduling


def test_dequeue_moves_job_into_started_registry(start_worker, connection):
    worker = start_worker("--name", "mover", "moveq")
    queue = Queue("moveq", connection=connection)

    job = queue.enqueue(jobs.sleep_then_return, 2, "moved")
    worker.wait_for_log(rf"Job {job.id} started")
    now = time.time()
    lease_expiry = connection.zscore(keys.started("moveq"), job.id)
    queued_ids = queue.job_ids
    job.refresh()
    status_while_running = job.get_status(refresh=False)
    worker_name = job.worker_name
    result = job.latest_result(timeout=10)

    assert lease_expiry is not None
    assert now < lease_expiry <= now + 31
    assert job.id not in queued_ids
    assert status_while_running == JobStatus.STARTED
    assert worker_name == "mover"
    assert result is not None, worker.log()
    assert result.type == Result.Type.SUCCESSFUL
    assert job.get_status() == JobStatus.FINISHED
    assert job.id in queue.finished_job_registry
    assert job.id not in queue.started_job_registry
    assert connection.llen(keys.queue("moveq")) == 0


def test_queues_listed_first_served_first(start_worker, connection):
    low_queue = Queue("low", connection=connection)
    high_queue = Queue("high", connection=connection)
    low_first = low_queue.enqueue(jobs.add, 1, 1)
    low_second = low_queue.enqueue(jobs.add, 2, 2)
    high = high_queue.enqueue(jobs.add, 3, 3)

    worker = start_worker("high", "low", "--burst")
    assert worker.wait(20) == 0, worker.log()
    log = worker.log()

    started = [match.group(1) for match in log_lines(log, r"INFO nbqueue\.worker: Job (\w+) started: ")]
    assert started == [high.id, low_first.id, low_second.id]
    times = [job.latest_result().started_at for job in (high, low_first, low_second)]
    assert times == sorted(times)


def test_concurrency_two_runs_jobs_in_parallel(start_worker, connection):
    worker = start_worker("--concurrency", "2", "parq")
    queue = Queue("parq", connection=connection)

    start = time.monotonic()
    first = queue.enqueue(jobs.sleep_then_return, 1.5, "first")
    second = queue.enqueue(jobs.sleep_then_return, 1.5, "second")
    first_result = first.latest_result(timeout=10)
    second_result = second.latest_result(timeout=10)
    elapsed_s = time.monotonic() - start

    assert first_result is not None and second_result is not None, worker.log()
    assert elapsed_s < 2.8
    assert first_result.return_value == "first"
    assert second_result.return_value == "second"
    assert len(first.results()) == 1
    assert len(second.results()) == 1
    assert first_result.started_at < second_result.ended_at
    assert second_result.started_at < first_result.ended_at


def test_burst_exits_zero_when_queues_empty(start_worker):
    worker = start_worker("--burst", "--name", "bursty", "emptyq")

    assert worker.wait(10) == 0
    stops = log_lines(worker.log(), r"INFO nbqueue\.worker: Worker bursty stopped \(burst mode, queues empty\): 0 finished, 0 failed, 0 retried$")
    assert len(stops) == 1, worker.log()


# Work horses


def test_horse_persists_between_jobs_until_killed(start_worker, connection):
    worker = start_worker("pidq")
    queue = Queue("pidq", connection=connection)

    first = queue.enqueue(jobs.return_pid)
    second = queue.enqueue(jobs.return_pid)
    timed_out = queue.enqueue(jobs.sleep_then_return, 30, job_timeout=1)
    third = queue.enqueue(jobs.return_pid)
    third_result = third.latest_result(timeout=15)
    assert third_result is not None, worker.log()

    first_pid = first.return_value()
    assert first_pid == second.return_value()
    assert first_pid != worker.pid
    assert timed_out.latest_result().exc_string == TIMEOUT_MESSAGE
    assert third_result.return_value != first_pid
    assert third_result.return_value != worker.pid
    assert not pid_alive(first_pid)


def test_idle_worker_starts_new_job_at_once(start_worker, connection):
    worker = start_worker("idleq")
    queue = Queue("idleq", connection=connection)

    for value in range(3):
        wait_until(lambda: worker_is_blocked_on_queue(connection), 5, "the worker to block on its queue")
        start = time.monotonic()
        job = queue.enqueue(jobs.add, value, 1)
        result = job.latest_result(timeout=5)
        elapsed_s = time.monotonic() - start

        assert result is not None, worker.log()
        assert result.return_value == value + 1
        assert elapsed_s < 0.5


def test_idle_worker_starts_job_after_its_wait_renews(start_worker, connection):
    worker = start_worker("idleq")
    queue = Queue("idleq", connection=connection)
    wait_until(lambda: worker_is_blocked_on_queue(connection), 5, "the worker to block on its queue")
    calls_before = connection.info("commandstats").get("cmdstat_blmove", {}).get("calls", 0)

    # The worker's blocking wait on a queue lasts QUEUE_WAIT_S; wait until it has timed out and been sent again.
    wait_until(
        lambda: connection.info("commandstats").get("cmdstat_blmove", {}).get("calls", 0) > calls_before,
        QUEUE_WAIT_S + 5,
        "the worker to renew its queue wait",
    )
    wait_until(lambda: worker_is_blocked_on_queue(connection), 5, "the worker to block on its queue again")
    start = time.monotonic()
    job = queue.enqueue(jobs.add, 1, 1)
    result = job.latest_result(timeout=5)
    elapsed_s = time.monotonic() - start

    assert result is not None, worker.log()
    assert result.return_value == 2
    assert elapsed_s < 0.5


def test_duplicate_worker_name_exits_nonzero(start_worker, connection):
    first = start_worker("--name", "twin", "q")
    second = start_worker("--name", "twin", "q", wait_ready=False)

    exit_code = second.wait(15)

    assert exit_code == 1
    assert "A worker named 'twin' is already running on this Redis: choose another --name" in second.log()
    assert first.process.poll() is None
    assert int(connection.hget(keys.worker("twin"), "pid")) == first.pid


def test_idle_horse_takes_job_while_other_horse_busy(start_worker, connection):
    worker = start_worker("--concurrency", "2", "parq")
    queue = Queue("parq", connection=connection)

    busy = queue.enqueue(jobs.sleep_then_return, 3, "busy")
    worker.wait_for_log(rf"Job {busy.id} started")
    start = time.monotonic()
    quick = queue.enqueue(jobs.add, 2, 2)
    result = quick.latest_result(timeout=10)
    elapsed_s = time.monotonic() - start

    assert result is not None, worker.log()
    assert result.return_value == 4
    assert elapsed_s < 0.5
    assert busy.latest_result() is None


def test_duplicate_worker_name_rejected_when_started_together(start_worker, connection):
    # Hold writes for 1.5 s, so that both workers check the name before either can register it.
    connection.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    first = start_worker("--name", "twin", "q", wait_ready=False)
    second = start_worker("--name", "twin", "q", wait_ready=False)

    wait_until(
        lambda: first.process.poll() is not None or second.process.poll() is not None,
        5,
        "one of the two workers named 'twin' to exit",
    )
    exit_codes = sorted(code for code in (first.process.poll(), second.process.poll()) if code is not None)

    assert exit_codes == [1]

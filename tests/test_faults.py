"""Fault injection: workers killed under load, Redis restarted, paused or cutting connections, corrupt payloads.

Each test prints its figures (run pytest with ``-s`` to see them) and is bounded in time. The Redis restart and
pause tests act on the session's redis-server and always leave it running.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from polling import wait_until

import fault_jobs
from nbqueue import Job, JobStatus, Queue, Result, Retry, keys, serialization
from test_signing import OTHER_KEY, SECRET_KEY, forge_payload

FINAL_STATUSES = {b"finished", b"failed", b"stopped"}


def statuses(connection: redis.Redis, jobs: list[Job]) -> list[bytes | None]:
    pipe = connection.pipeline(transaction=False)
    for job in jobs:
        pipe.hget(keys.job(job.id), "status")
    return pipe.execute()


def count_final(connection: redis.Redis, jobs: list[Job]) -> int:
    return sum(status in FINAL_STATUSES for status in statuses(connection, jobs))


class WaitInThread:
    """Calls ``job.latest_result(timeout=...)`` in a thread and records what it returned or raised, and when."""

    def __init__(self, job: Job, timeout_s: float):
        self.job = job
        self.timeout_s = timeout_s
        #: What the call returned or raised; read it only after :meth:`join` returned True.
        self.outcome: Result | BaseException | None = None
        self.elapsed_s: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self.outcome = self.job.latest_result(timeout=self.timeout_s)
        except BaseException as exc:  # recorded for the test's assertions
            self.outcome = exc
        self.elapsed_s = time.monotonic() - started

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> bool:
        """Wait for the call to end, and return False if it still runs after ``timeout_s``."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def blocked_result_readers(connection: redis.Redis) -> list[dict[str, Any]]:
    """Return the clients blocked in XREAD, that is, waiting for a job's result."""
    return [
        client for client in connection.client_list()
        if client.get("cmd") == "xread" and "b" in client.get("flags", "")
    ]


# Workers killed under load


@pytest.mark.timeout(180)
def test_sigkill_under_load_loses_no_job(start_worker, connection):
    queue = Queue("loadq", connection=connection)
    jobs = queue.enqueue_many([
        Queue.prepare_data(fault_jobs.sleep_then_return, (0.02, index), retry=Retry(max=2)) for index in range(200)
    ])
    began = time.monotonic()
    workers = [start_worker("loadq"), start_worker("loadq")]

    kills: list[dict[str, Any]] = []
    for threshold in (30, 80, 130):
        wait_until(lambda: count_final(connection, jobs) >= threshold, 60, f"{threshold} jobs to end")
        victim = workers.pop(0)
        running = len(queue.started_job_registry)
        victim.kill()
        kills.append({"after_final": count_final(connection, jobs), "started_registry": running})
        workers.append(start_worker("loadq"))
    last_kill = time.monotonic()

    def all_final() -> bool:
        return count_final(connection, jobs) == len(jobs) and len(queue.started_job_registry) == 0

    wait_until(all_final, 150, "every job to end and the started registry to empty", poll_s=0.2)
    total_s = time.monotonic() - began
    drain_s = time.monotonic() - last_kill

    outcomes: Counter[str] = Counter()
    unexpected = []
    for job in jobs:
        results = list(reversed(job.results()))
        types = [result.type for result in results]
        final = results[-1]
        if types == [Result.Type.SUCCESSFUL]:
            outcomes["successful"] += 1
        elif final.type == Result.Type.SUCCESSFUL and all(
            r.type == Result.Type.RETRIED and "AbandonedJobError" in r.exc_string for r in results[:-1]
        ):
            outcomes["retried to success"] += 1
        elif final.type == Result.Type.FAILED and "AbandonedJobError" in final.exc_string:
            outcomes["failed abandoned"] += 1
        else:
            unexpected.append((job.id, [(r.type.name, r.exc_string) for r in results]))
    print(
        f"SIGKILL under load: 200 jobs, 3 kills {kills}; all ended {total_s:.1f} s after start, "
        f"{drain_s:.1f} s after the last kill; outcomes {dict(outcomes)}"
    )

    assert unexpected == []
    assert sum(outcomes.values()) == 200
    assert queue.count == 0
    assert len(queue.scheduled_job_registry) == 0
    for job in jobs:
        assert len([r for r in job.results() if r.type != Result.Type.RETRIED]) == 1


# Redis restarted


@pytest.mark.timeout(180)
def test_redis_restart_mid_load(start_worker, connection, redis_server):
    queue = Queue("restartq", connection=connection)
    jobs = queue.enqueue_many([
        Queue.prepare_data(fault_jobs.sleep_then_return, (0.05, index)) for index in range(100)
    ])
    worker = start_worker("restartq")
    pid = worker.pid
    waiter = WaitInThread(Job(jobs[-1].id, redis.Redis.from_url(redis_server.url)), 90)
    waiter.start()

    outage_s = 3.0
    try:
        wait_until(lambda: count_final(connection, jobs) >= 20, 30, "20 jobs to end")
        ended_before = count_final(connection, jobs)
        redis_server.stop()
        stopped_at = time.monotonic()
        # The outage lasts a fixed time on purpose: nothing is awaited here.
        time.sleep(outage_s)
        redis_server.start()
        restarted_at = time.monotonic()
    finally:
        if redis_server.process is None or redis_server.process.poll() is not None:
            redis_server.start()
    survived = count_final(connection, jobs)

    wait_until(lambda: count_final(connection, jobs) == 100, 120, "every job to end after the restart", poll_s=0.2)
    drain_s = time.monotonic() - restarted_at
    returned = waiter.join(30)
    log = worker.log()
    unreachable = log.count("cannot reach Redis")
    record_retries = log.count("Cannot record the outcome")
    print(
        f"Redis restart: {ended_before} of 100 jobs ended before the stop, outage {restarted_at - stopped_at:.1f} s, "
        f"{survived} ended rows found right after the restart, all 100 ended {drain_s:.1f} s after it; "
        f"worker logged 'cannot reach Redis' {unreachable} times and record retries {record_retries} times; "
        f"waiter returned {waiter.outcome!r} after {waiter.elapsed_s} s"
    )

    assert worker.process.poll() is None, log
    assert worker.pid == pid
    for job in jobs:
        results = job.results()
        assert [r.type for r in results] == [Result.Type.SUCCESSFUL], (job.id, [r.exc_string for r in results])
    assert len(queue.started_job_registry) == 0
    assert returned, "latest_result(timeout=90) did not return within 30 s after every job ended"
    assert isinstance(waiter.outcome, Result), waiter.outcome
    assert waiter.outcome.type == Result.Type.SUCCESSFUL
    assert waiter.outcome.return_value == 99


# A waiting client's connection killed, or the server paused


@pytest.mark.timeout(60)
def test_client_kill_during_wait_ends_in_time(connection, redis_url):
    job = Queue("waitkillq", connection=connection).enqueue(fault_jobs.add, 1, 2)
    waiter = WaitInThread(Job(job.id, redis.Redis.from_url(redis_url)), 5)
    waiter.start()

    wait_until(lambda: blocked_result_readers(connection) != [], 5, "the waiter to block in XREAD")
    victims = blocked_result_readers(connection)
    for client in victims:
        connection.client_kill_filter(_id=client["id"])
    killed_at = time.monotonic()
    returned = waiter.join(10)
    print(
        f"CLIENT KILL during latest_result(timeout=5): returned {waiter.outcome!r} after {waiter.elapsed_s} s "
        f"({time.monotonic() - killed_at:.2f} s after the kill)"
    )

    assert len(victims) == 1
    assert returned, "latest_result(timeout=5) still runs 10 s after its connection was killed"
    assert waiter.elapsed_s <= 5 + 2
    assert waiter.outcome is None or isinstance(waiter.outcome, (Result, redis.ConnectionError)), waiter.outcome


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pause_s", [5, 12])
def test_server_paused_during_wait_ends_in_time(connection, redis_server, pause_s):
    job = Queue("waitpauseq", connection=connection).enqueue(fault_jobs.add, 1, 2)
    waiter = WaitInThread(Job(job.id, redis.Redis.from_url(redis_server.url)), 3)
    waiter.start()
    wait_until(lambda: blocked_result_readers(connection) != [], 5, "the waiter to block in XREAD")

    pid = redis_server.process.pid
    resume = threading.Timer(pause_s, os.kill, (pid, signal.SIGCONT))
    try:
        os.kill(pid, signal.SIGSTOP)
        resume.start()
        returned_while_paused = waiter.join(pause_s - 0.5)
        returned = waiter.join(pause_s + 40)
    finally:
        resume.cancel()
        os.kill(pid, signal.SIGCONT)
    print(
        f"server paused {pause_s} s during latest_result(timeout=3): returned {waiter.outcome!r} after "
        f"{waiter.elapsed_s} s; returned while the server was paused: {returned_while_paused}"
    )

    assert returned
    assert waiter.outcome is None or isinstance(waiter.outcome, (Result, redis.RedisError)), waiter.outcome
    assert waiter.elapsed_s <= 3 + 2.5, (
        f"latest_result(timeout=3) returned after {waiter.elapsed_s:.1f} s with the server paused {pause_s} s"
    )


# Corrupt payloads


def _envelope(header: object, body: bytes) -> bytes:
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode()
    return serialization.MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes + body


def _corrupt_payloads(real: bytes, count: int, seed: int) -> list[tuple[str, bytes]]:
    """Build ``count`` unreadable payloads as (kind, payload) pairs, cycling through kinds of damage."""
    rng = random.Random(seed)
    versions = {"python": serialization.PYTHON_VERSION, "cloudpickle": serialization.CLOUDPICKLE_VERSION}
    header_length = struct.unpack(">I", real[4:8])[0]
    body_start = 8 + header_length
    kinds: list[tuple[str, Callable[[], bytes]]] = [
        ("random bytes", lambda: rng.randbytes(rng.randint(1, 300))),
        ("empty", lambda: b""),
        ("truncated in header", lambda: real[: rng.randint(0, body_start - 1)]),
        ("truncated in pickle", lambda: real[: rng.randint(body_start, len(real) - 1)]),
        ("magic then junk", lambda: serialization.MAGIC + rng.randbytes(rng.randint(0, 100))),
        ("header length past end", lambda: serialization.MAGIC + struct.pack(">I", 0xFFFFFFFF) + b"{}"),
        ("header not JSON", lambda: _envelope(rng.randbytes(20), b"")),
        ("header a JSON list", lambda: _envelope([1, 2, 3], real[body_start:])),
        ("header deeply nested", lambda: _envelope(b"[" * 100_000 + b"]" * 100_000, real[body_start:])),
        ("other Python version", lambda: _envelope({"python": "2.7.18", "cloudpickle": "3.0.0"}, real[body_start:])),
        ("junk pickle", lambda: _envelope(versions, rng.randbytes(rng.randint(1, 200)))),
        ("pickle of an int", lambda: _envelope(versions, pickle.dumps(42))),
        ("pickle of a missing module", lambda: _envelope(versions, b"cno_such_module_for_tests\nfunc\n.")),
        ("missing import path", lambda: _envelope(versions, pickle.dumps(("no_such_module_for_tests.func", (), {})))),
        ("call of a non-callable", lambda: _envelope(versions, pickle.dumps((42, (), {})))),
    ]
    return [(kinds[index % len(kinds)][0], kinds[index % len(kinds)][1]()) for index in range(count)]


@pytest.mark.timeout(180)
def test_corrupt_payloads_fail_and_worker_survives(start_worker, connection):
    queue = Queue("corruptq", connection=connection)
    bad_jobs = queue.enqueue_many([Queue.prepare_data(fault_jobs.add, (index, 1)) for index in range(500)])
    real = connection.hget(keys.job(bad_jobs[0].id), "payload")
    damaged = _corrupt_payloads(real, len(bad_jobs), seed=20240501)
    pipe = connection.pipeline(transaction=False)
    for job, (_, payload) in zip(bad_jobs, damaged):
        pipe.hset(keys.job(job.id), "payload", payload)
    pipe.execute()
    good = queue.enqueue(fault_jobs.add, 40, 2)

    began = time.monotonic()
    worker = start_worker("corruptq")
    pid = worker.pid
    good_result = good.latest_result(timeout=150)
    elapsed_s = time.monotonic() - began
    log = worker.log()

    reasons: Counter[str] = Counter()
    wrong = []
    for job, (kind, _) in zip(bad_jobs, damaged):
        results = job.results()
        if [r.type for r in results] != [Result.Type.FAILED] or not (results[0].exc_string or "").strip():
            wrong.append((kind, job.id, [(r.type.name, r.exc_string) for r in results]))
            continue
        last_line = results[0].exc_string.strip().splitlines()[-1]
        reasons[f"{kind}: {last_line.split(':')[0]}"] += 1
    print(f"500 corrupt payloads and 1 good job in {elapsed_s:.1f} s with worker pid {pid}")
    for reason, count in sorted(reasons.items()):
        print(f"  {count:4d}  {reason}")

    assert good_result is not None, log[-3000:]
    assert good_result.type == Result.Type.SUCCESSFUL
    assert good_result.return_value == 42
    assert wrong == []
    assert worker.process.poll() is None
    assert worker.pid == pid
    assert log.count(" started: nbqueue ") == 1, "the worker started more than once"
    assert statuses(connection, bad_jobs) == [JobStatus.FAILED.value.encode()] * 500


# Forged payloads with a secret key set


@pytest.mark.timeout(60)
def test_forged_payloads_refused_unread(start_worker, connection, monkeypatch, tmp_path):
    monkeypatch.setenv("NBQUEUE_SECRET_KEY", SECRET_KEY)
    queue = Queue("forgeryq", connection=connection)
    markers = {kind: tmp_path / f"marker-{kind}" for kind in ("other key", "swapped body", "no signature")}
    jobs = {kind: queue.enqueue(fault_jobs.add, 1, 1) for kind in markers}

    forge_payload(connection, jobs["other key"].id, fault_jobs.create_marker, (str(markers["other key"]),), OTHER_KEY)

    # A genuine header and signature, followed by the pickle of another call.
    genuine = connection.hget(keys.job(jobs["swapped body"].id), "payload")
    header_length = struct.unpack(">I", genuine[4:8])[0]
    evil = serialization.dumps_call(
        fault_jobs.create_marker, (str(markers["swapped body"]),), {}, max_bytes=1 << 20, secret_key=None
    )
    evil_body = evil[8 + struct.unpack(">I", evil[4:8])[0]:]
    connection.hset(keys.job(jobs["swapped body"].id), "payload", genuine[: 8 + header_length] + evil_body)

    unsigned = serialization.dumps_call(
        fault_jobs.create_marker, (str(markers["no signature"]),), {}, max_bytes=1 << 20, secret_key=None
    )
    connection.hset(keys.job(jobs["no signature"].id), "payload", unsigned)
    good = queue.enqueue(fault_jobs.add, 2, 3)
    worker = start_worker("forgeryq")

    good_result = good.latest_result(timeout=20)
    outcomes = {kind: job.latest_result() for kind, job in jobs.items()}
    print("forged payloads: " + "; ".join(f"{kind}: {result.exc_string!r}" for kind, result in outcomes.items()))

    assert good_result is not None, worker.log()
    assert good_result.return_value == 5
    for kind, result in outcomes.items():
        assert result is not None, kind
        assert result.type == Result.Type.FAILED, kind
        assert not markers[kind].exists(), kind
    assert "has an invalid signature" in outcomes["other key"].exc_string
    assert "has an invalid signature" in outcomes["swapped body"].exc_string
    assert "is unsigned but NBQUEUE_SECRET_KEY is set" in outcomes["no signature"].exc_string

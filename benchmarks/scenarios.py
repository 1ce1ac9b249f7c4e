"""The measurements: each function measures one figure for one system or worker kind, once."""

from __future__ import annotations

import contextlib
import importlib
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks import rq_jobs
from benchmarks.processes import NBQUEUE, PeakMemorySampler, WorkerKind, WorkerProcess
from benchmarks.server import CommandCounter, RedisServer, ScriptCommandCounter

QUEUE = "bench"
#: Maximum time a burst worker may take to drain its queue, in seconds.
DRAIN_TIMEOUT_S = 600.0
#: Maximum wait for one job's result, in seconds.
RESULT_TIMEOUT_S = 60
#: Jobs run before latency samples are taken, so that connections and imports are warm.
LATENCY_WARMUP_JOBS = 5
#: Time an idle worker gets after registering before its commands are counted, in seconds.
IDLE_SETTLE_S = 2.0
#: Interval between two status reads while waiting for the large-payload job, in seconds.
STATUS_POLL_S = 0.005


class Client:
    """The calls of one queue library that the scenarios use."""

    system: str

    def __init__(self, connection: redis.Redis):
        self.connection = connection

    def queue(self) -> Any:
        raise NotImplementedError

    def enqueue_noop(self, queue: Any) -> Any:
        raise NotImplementedError

    def enqueue_many_noop(self, queue: Any, count: int) -> list[Any]:
        raise NotImplementedError

    def enqueue_echo(self, queue: Any, value: bytes) -> Any:
        raise NotImplementedError

    def latest_result(self, job: Any) -> Any:
        raise NotImplementedError

    def has_ended(self, job: Any) -> bool:
        raise NotImplementedError

    def finished_count(self) -> int:
        raise NotImplementedError


class NbqueueClient(Client):
    """nbqueue, with job functions defined in ``__main__`` so that they are pickled by value."""

    system = "nbqueue"

    def __init__(self, connection: redis.Redis, noop: Callable[[], None], echo: Callable[[bytes], bytes]):
        super().__init__(connection)
        self.noop, self.echo = noop, echo

    def queue(self) -> Any:
        import nbqueue

        return nbqueue.Queue(QUEUE, connection=self.connection)

    def enqueue_noop(self, queue: Any) -> Any:
        return queue.enqueue(self.noop)

    def enqueue_many_noop(self, queue: Any, count: int) -> list[Any]:
        return queue.enqueue_many([queue.prepare_data(self.noop) for _ in range(count)])

    def enqueue_echo(self, queue: Any, value: bytes) -> Any:
        return queue.enqueue(self.echo, value)

    def latest_result(self, job: Any) -> Any:
        return job.latest_result(timeout=float(RESULT_TIMEOUT_S))

    def has_ended(self, job: Any) -> bool:
        return job.get_status().value in ("finished", "failed")

    def finished_count(self) -> int:
        return self.connection.zcard(f"nbqueue:finished:{QUEUE}")


class RqClient(Client):
    """RQ, with job functions imported by the worker from ``benchmarks.rq_jobs``."""

    system = "rq"

    def queue(self) -> Any:
        import rq

        return rq.Queue(QUEUE, connection=self.connection)

    def enqueue_noop(self, queue: Any) -> Any:
        return queue.enqueue(rq_jobs.noop)

    def enqueue_many_noop(self, queue: Any, count: int) -> list[Any]:
        return queue.enqueue_many([queue.prepare_data(rq_jobs.noop) for _ in range(count)])

    def enqueue_echo(self, queue: Any, value: bytes) -> Any:
        return queue.enqueue(rq_jobs.echo, value)

    def latest_result(self, job: Any) -> Any:
        # RQ passes the timeout to XREAD BLOCK as whole seconds; redis-py rejects a float.
        return job.latest_result(timeout=RESULT_TIMEOUT_S)

    def has_ended(self, job: Any) -> bool:
        return job.get_status().value in ("finished", "failed")

    def finished_count(self) -> int:
        return self.connection.zcard(f"rq:finished:{QUEUE}")


@dataclass
class Bench:
    """The shared state of all scenarios: the server, an admin client, the command counter and a scratch folder."""

    server: RedisServer
    admin: redis.Redis
    counter: CommandCounter
    folder: Path
    clients: dict[str, Client]

    def client_for(self, kind: WorkerKind) -> Client:
        return self.clients[kind.system]

    def start_worker(self, kind: WorkerKind, burst: bool) -> WorkerProcess:
        return WorkerProcess.start(kind, self.server.url, QUEUE, self.folder, burst)


def _per_job(calls: Counter[str], jobs: int) -> dict[str, float]:
    return {name: count / jobs for name, count in calls.most_common()}


def throughput(bench: Bench, kind: WorkerKind, jobs: int) -> dict[str, Any]:
    """Drain ``jobs`` queued no-op jobs with one burst worker; time from its start to its exit."""
    bench.admin.flushdb()
    client = bench.client_for(kind)
    client.enqueue_many_noop(client.queue(), jobs)

    worker = bench.start_worker(kind, burst=True)
    times = worker.wait_drained(client.finished_count, jobs, DRAIN_TIMEOUT_S)

    finished = client.finished_count()
    if finished != jobs:
        raise RuntimeError(f"{kind.label} finished {finished} of {jobs} jobs: see {worker.log_path}")
    return {
        **times,
        "jobs_per_s": jobs / times["seconds"],
        "jobs_per_s_to_last_job": jobs / times["last_job_s"],
        "exit_lag_s": times["seconds"] - times["last_job_s"],
    }


def redis_commands(bench: Bench, kind: WorkerKind, jobs: int) -> dict[str, Any]:
    """Count the commands of ``jobs`` single enqueue calls, then of draining them with a burst worker."""
    bench.admin.flushdb()
    client = bench.client_for(kind)
    queue = client.queue()

    before = bench.counter.snapshot()
    for _ in range(jobs):
        client.enqueue_noop(queue)
    enqueue_calls = bench.counter.delta(before)

    with ScriptCommandCounter(bench.server) as script_counter:
        before = bench.counter.snapshot()
        worker = bench.start_worker(kind, burst=True)
        polls = [0]

        def finished_count() -> int:
            polls[0] += 1
            return client.finished_count()

        times = worker.wait_drained(finished_count, jobs, DRAIN_TIMEOUT_S)
        execution_calls = bench.counter.delta(before)
        execution_calls["zcard"] -= polls[0]  # the benchmark's own reads of the finished-job count
        execution_calls = +execution_calls
    # MONITOR itself runs no command; the PING that stops it comes after the delta.
    execution_total = sum(execution_calls.values())

    finished = client.finished_count()
    if finished != jobs:
        raise RuntimeError(f"{kind.label} finished {finished} of {jobs} jobs: see {worker.log_path}")
    return {
        "enqueue_per_job": sum(enqueue_calls.values()) / jobs,
        "execution_per_job": execution_total / jobs,
        "execution_sent_per_job": (execution_total - script_counter.count) / jobs,
        "execution_in_scripts_per_job": script_counter.count / jobs,
        # A worker killed after hanging on exit did not send its last commands.
        "exit_hung": times["exit_hung"],
        "enqueue_breakdown": _per_job(enqueue_calls, jobs),
        "execution_breakdown": _per_job(execution_calls, jobs),
    }


def _percentile(samples: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``samples``."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def latency(bench: Bench, kind: WorkerKind, jobs: int) -> dict[str, Any]:
    """Time enqueue until the blocking ``latest_result`` returns, one job at a time, with an idle worker."""
    bench.admin.flushdb()
    client = bench.client_for(kind)
    queue = client.queue()
    worker = bench.start_worker(kind, burst=False)
    try:
        worker.wait_registered(bench.admin)
        samples_ms: list[float] = []
        for index in range(LATENCY_WARMUP_JOBS + jobs):
            started = time.perf_counter()
            job = client.enqueue_noop(queue)
            result = client.latest_result(job)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if result is None:
                raise RuntimeError(f"{kind.label} returned no result within {RESULT_TIMEOUT_S}s: see {worker.log_path}")
            if index >= LATENCY_WARMUP_JOBS:
                samples_ms.append(elapsed_ms)
    finally:
        worker.stop()
    return {
        "median_ms": statistics.median(samples_ms),
        "p99_ms": _percentile(samples_ms, 0.99),
        "max_ms": max(samples_ms),
    }


def enqueue_rate(bench: Bench, client: Client, jobs: int) -> dict[str, Any]:
    """Time ``jobs`` single enqueue calls, then one ``enqueue_many`` of ``jobs`` prepared calls."""
    bench.admin.flushdb()
    queue = client.queue()
    started = time.perf_counter()
    for _ in range(jobs):
        client.enqueue_noop(queue)
    single_s = time.perf_counter() - started

    bench.admin.flushdb()
    queue = client.queue()
    started = time.perf_counter()
    client.enqueue_many_noop(queue, jobs)
    many_s = time.perf_counter() - started
    bench.admin.flushdb()
    return {"single_per_s": jobs / single_s, "many_per_s": jobs / many_s}


def plain_set_get(bench: Bench, payload: bytes) -> dict[str, Any]:
    """Time a redis-py SET and GET of ``payload``: the floor for moving it to Redis and back."""
    bench.admin.flushdb()
    started = time.perf_counter()
    bench.admin.set("bench:payload", payload)
    value = bench.admin.get("bench:payload")
    elapsed_s = time.perf_counter() - started
    if value != payload:
        raise RuntimeError("GET returned other bytes than SET stored")
    bench.admin.flushdb()
    return {"seconds": elapsed_s}


def large_payload(bench: Bench, kind: WorkerKind, payload: bytes) -> dict[str, Any]:
    """Send ``payload`` through an idle worker that returns it; time enqueue until the value is read back.

    The client waits by reading the job's status every ``STATUS_POLL_S``, so the result crosses the network
    once, in ``return_value()``.
    """
    bench.admin.flushdb()
    client = bench.client_for(kind)
    queue = client.queue()
    worker = bench.start_worker(kind, burst=False)
    try:
        worker.wait_registered(bench.admin)
        with PeakMemorySampler(worker.process.pid) as sampler:
            started = time.perf_counter()
            job = client.enqueue_echo(queue, payload)
            deadline = time.monotonic() + RESULT_TIMEOUT_S
            while not client.has_ended(job):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind.label} did not finish the job within {RESULT_TIMEOUT_S}s")
                time.sleep(STATUS_POLL_S)
            value = job.return_value()
            elapsed_s = time.perf_counter() - started
            sampler.sample()
    finally:
        worker.stop()
    bench.admin.flushdb()
    if value != payload:
        return {"error": f"the job ended {job.get_status().value} without returning the payload: see {worker.log_path}"}
    return {
        "seconds": elapsed_s,
        "peak_memory_bytes": sampler.total_bytes,
        "largest_process_bytes": sampler.largest_bytes,
        "processes": len(sampler.peaks_kib),
    }


@contextlib.contextmanager
def _count_round_trips() -> Iterator[list[int]]:
    """Count the writes of redis-py connections in this process: one per command or per pipeline."""
    connection_class = redis.connection.AbstractConnection
    original = connection_class.send_packed_command
    count = [0]

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        count[0] += 1
        original(self, command, check_health)

    connection_class.send_packed_command = counting  # type: ignore[method-assign]
    try:
        yield count
    finally:
        connection_class.send_packed_command = original  # type: ignore[method-assign]


def _refresh_once(bench: Bench, refresh_all: Callable[[], Any]) -> dict[str, float]:
    before = bench.counter.snapshot()
    with _count_round_trips() as round_trips:
        cpu_started = time.process_time()
        refresh_all()
        cpu_s = time.process_time() - cpu_started
    calls = bench.counter.delta(before)
    return {"round_trips": round_trips[0], "commands": sum(calls.values()), "cpu_ms": cpu_s * 1000}


def widget_refresh(bench: Bench, client: NbqueueClient, widgets: int) -> dict[str, Any]:
    """Refresh ``widgets`` job widgets once with ``nbqueue.jupyter.refresher.refresh_all()``, twice over.

    First while no job changed since the widgets were made, then after a burst worker ran every job, so
    that each widget has a new status and a result to show. Returns ``{"available": False}`` when
    nbqueue has no refresher.
    """
    try:
        refresher = importlib.import_module("nbqueue.jupyter.refresher")
    except ImportError as exc:
        return {"available": False, "reason": f"nbqueue.jupyter.refresher cannot be imported: {exc}"}
    if not hasattr(refresher, "refresh_all"):
        return {"available": False, "reason": "nbqueue.jupyter.refresher has no refresh_all()"}

    # Job.widget() registers each widget with the refresher, which reads the job's state once then.
    bench.admin.flushdb()
    queue = client.queue()
    jobs = client.enqueue_many_noop(queue, widgets)
    views = [job.widget() for job in jobs]
    unchanged = _refresh_once(bench, refresher.refresh_all)

    worker = bench.start_worker(NBQUEUE, burst=True)
    worker.wait_exit(DRAIN_TIMEOUT_S)
    changed = _refresh_once(bench, refresher.refresh_all)

    for view in views:
        view.close()
    del views
    bench.admin.flushdb()
    return {
        "available": True,
        **{f"unchanged_{name}": value for name, value in unchanged.items()},
        **{f"changed_{name}": value for name, value in changed.items()},
    }


def idle_worker(bench: Bench, kind: WorkerKind, seconds: float) -> dict[str, Any]:
    """Count the commands an idle worker sends over ``seconds``, the benchmark sending none meanwhile."""
    bench.admin.flushdb()
    worker = bench.start_worker(kind, burst=False)
    try:
        worker.wait_registered(bench.admin)
        time.sleep(IDLE_SETTLE_S)
        before = bench.counter.snapshot()
        time.sleep(seconds)
        calls = bench.counter.delta(before)
    finally:
        worker.stop()
    return {
        "commands_per_s": sum(calls.values()) / seconds,
        "breakdown_per_s": {name: count / seconds for name, count in calls.most_common()},
    }

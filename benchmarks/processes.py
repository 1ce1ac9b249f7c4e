"""Worker processes started by the benchmark, and the peak memory of a process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

#: The repository root: RQ workers import the job functions from ``benchmarks.rq_jobs`` below it.
REPOSITORY = Path(__file__).resolve().parent.parent
#: Maximum time a worker may take to register itself in Redis, in seconds.
READY_TIMEOUT_S = 30.0
#: Maximum time a worker may take to exit after SIGTERM before it is killed, in seconds.
STOP_TIMEOUT_S = 5.0
#: Interval between two reads of the finished-job count while a burst worker drains its queue, in seconds.
DRAIN_POLL_S = 0.02
#: Maximum time a burst worker may take to exit after its last job ended before it is killed, in seconds.
#: RQ 3.0 with redis-py 8.2 sometimes waits up to 60 s for its pub/sub thread on exit.
EXIT_GRACE_S = 10.0


@dataclass(frozen=True)
class WorkerKind:
    """One worker implementation and setting compared by the benchmark."""

    label: str
    system: str  # "nbqueue" or "rq"
    rq_worker_class: str | None = None
    concurrency: int = 1

    def command(self, url: str, queue: str, name: str, burst: bool) -> list[str]:
        """Return the command line that starts this worker on ``queue``."""
        if self.system == "nbqueue":
            command = [sys.executable, "-m", "nbqueue", "worker", "--url", url, "--name", name]
            command += ["--concurrency", str(self.concurrency)]
        else:
            command = [sys.executable, "-m", "rq.cli", "worker", "--url", url, "--name", name]
            command += ["--worker-class", self.rq_worker_class or "rq.Worker"]
        if burst:
            command.append("--burst")
        return [*command, queue]

    def is_registered(self, client: redis.Redis, name: str) -> bool:
        """Return whether the worker called ``name`` has registered itself in Redis."""
        if self.system == "nbqueue":
            return bool(client.sismember("nbqueue:workers", name))
        return bool(client.sismember("rq:workers", f"rq:worker:{name}"))


NBQUEUE = WorkerKind("nbqueue", "nbqueue")
NBQUEUE_2 = WorkerKind("nbqueue -c 2", "nbqueue", concurrency=2)
RQ_WORKER = WorkerKind("RQ Worker", "rq", "rq.Worker")
RQ_SIMPLE = WorkerKind("RQ SimpleWorker", "rq", "rq.SimpleWorker")


def worker_environment(url: str, home: Path) -> dict[str, str]:
    """Return the environment of a worker process: the benchmark's server and import path, nothing else."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("NBQUEUE_", "RQ_"))}
    env["NBQUEUE_REDIS_URL"] = url
    env["NBQUEUE_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
    return env


#: Every worker started by this process, so that an interrupted run can stop the ones still running.
_started: list[WorkerProcess] = []


def stop_all_workers() -> None:
    """Stop every worker this process started that is still running."""
    for worker in _started:
        worker.stop()
    _started.clear()


@dataclass
class WorkerProcess:
    """A worker started as a subprocess, with its log in a file."""

    kind: WorkerKind
    process: subprocess.Popen[bytes]
    name: str
    log_path: Path
    started_at: float

    @classmethod
    def start(cls, kind: WorkerKind, url: str, queue: str, folder: Path, burst: bool) -> WorkerProcess:
        name = f"bench-{kind.system}-{os.getpid()}-{time.monotonic_ns()}"
        log_path = folder / f"{name}.log"
        with open(log_path, "wb") as log:
            started_at = time.perf_counter()
            process = subprocess.Popen(
                kind.command(url, queue, name, burst),
                cwd=REPOSITORY,
                env=worker_environment(url, folder),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = cls(kind, process, name, log_path, started_at)
        _started.append(worker)
        return worker

    def wait_registered(self, client: redis.Redis) -> None:
        """Block until the worker has registered itself in Redis."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.kind.is_registered(client, self.name):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind.label} exited with status {self.process.returncode}: see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind.label} did not register within {READY_TIMEOUT_S:g}s: see {self.log_path}")
            time.sleep(0.02)

    def wait_drained(self, finished_count: Callable[[], int], jobs: int, timeout_s: float) -> dict[str, float]:
        """Wait until ``jobs`` jobs finished and the worker exited; kill it if it hangs on exit.

        Returns the seconds from the worker's start to the end of its last job (``last_job_s``) and to its
        exit or kill (``seconds``), and ``exit_hung`` (1 if it was killed ``EXIT_GRACE_S`` after its last job).
        """
        deadline = time.monotonic() + timeout_s
        last_job_s: float | None = None
        while self.process.poll() is None:
            now = time.perf_counter()
            if last_job_s is None and finished_count() >= jobs:
                last_job_s = now - self.started_at
            if last_job_s is not None and now - self.started_at > last_job_s + EXIT_GRACE_S:
                self.process.kill()
                self.process.wait()
                seconds = time.perf_counter() - self.started_at
                return {"seconds": seconds, "last_job_s": last_job_s, "exit_hung": 1}
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind.label} did not finish within {timeout_s:g}s: see {self.log_path}")
            time.sleep(DRAIN_POLL_S)
        seconds = time.perf_counter() - self.started_at
        if self.process.returncode != 0:
            raise RuntimeError(f"{self.kind.label} exited with status {self.process.returncode}: see {self.log_path}")
        return {"seconds": seconds, "last_job_s": seconds if last_job_s is None else last_job_s, "exit_hung": 0}

    def wait_exit(self, timeout_s: float) -> float:
        """Wait for the worker to exit by itself; return the seconds from its start to its exit."""
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"{self.kind.label} did not finish within {timeout_s:g}s: see {self.log_path}") from None
        elapsed_s = time.perf_counter() - self.started_at
        if self.process.returncode != 0:
            raise RuntimeError(f"{self.kind.label} exited with status {self.process.returncode}: see {self.log_path}")
        return elapsed_s

    def stop(self) -> None:
        """Stop the worker with SIGTERM (a warm shutdown), and kill it if it does not exit in time."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        try:
            children += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return children


def _peak_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class PeakMemorySampler:
    """Samples ``VmHWM`` (peak resident set size) of a process and all its descendants in a thread.

    Each process's last value read is its peak so far, because VmHWM only grows. A process that reaches
    its peak less than one interval before it exits is read low. Pages shared after a fork count once in
    each process, so the sum over processes overstates the memory the tree takes.
    """

    root_pid: int
    interval_s: float = 0.01
    peaks_kib: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory-sampler", daemon=True)

    def __enter__(self) -> PeakMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        """Read VmHWM of every process in the tree now."""
        pending = [self.root_pid]
        while pending:
            pid = pending.pop()
            peak = _peak_rss_kib(pid)
            if peak is not None:
                self.peaks_kib[pid] = max(peak, self.peaks_kib.get(pid, 0))
            pending += _children(pid)

    @property
    def total_bytes(self) -> int:
        """Sum over the processes seen of each one's peak resident set size."""
        return sum(self.peaks_kib.values()) * 1024

    @property
    def largest_bytes(self) -> int:
        """Peak resident set size of the largest process seen."""
        return max(self.peaks_kib.values(), default=0) * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

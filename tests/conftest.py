"""Shared fixtures: a real ``redis-server`` on a free loopback port and real ``nbqueue worker`` processes.

The server is started once per test session in a temporary folder; each test gets it flushed. Tests never
touch a Redis server they did not start.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from servers import RedisServer, find_redis_server_binary


def pytest_configure(config) -> None:
    # Every kernel the tests start through jupyter_client leaves a zmq context open, about 20 descriptors
    # each, so a full run needs more than the common soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(binary=find_redis_server_binary(), directory=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path) -> None:
    """Point nbqueue at a private home folder and away from any Redis the machine may run."""
    for name in list(os.environ):
        if name.startswith("NBQUEUE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NBQUEUE_HOME", str(tmp_path / "nbqueue-home"))


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The test server's URL, with its data flushed before the test."""
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class WorkerProcess:
    """An ``nbqueue worker`` subprocess with its log in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str]):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nbqueue", "worker", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float = 20.0) -> re.Match:
        """Wait until a log line matches ``pattern``; fail with the log if it does not come in time."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = regex.search(self.log())
            if match:
                return match
            if self.process.poll() is not None:
                match = regex.search(self.log())
                if match:
                    return match
                pytest.fail(f"worker exited with {self.process.returncode} before logging {pattern!r}:\n{self.log()}")
            time.sleep(0.02)
        pytest.fail(f"worker did not log {pattern!r} within {timeout_s}s:\n{self.log()}")

    def wait(self, timeout_s: float = 30.0) -> int:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"worker did not exit within {timeout_s}s:\n{self.log()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the worker and every process in its session (its work horses)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)
        else:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self._log.close()


@pytest.fixture
def start_worker(redis_url, tmp_path) -> Iterator:
    """Start ``nbqueue worker --url <test server>`` with extra arguments; every worker is stopped at teardown."""
    workers: list[WorkerProcess] = []

    def start(*args: str, wait_ready: bool = True) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items()}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        log_path = tmp_path / f"worker-{len(workers)}.log"
        worker = WorkerProcess(["--url", redis_url, *args], log_path, env)
        workers.append(worker)
        if wait_ready and "--burst" not in args:
            worker.wait_for_log(r"Worker .* started")
        return worker

    yield start
    for worker in workers:
        worker.stop()

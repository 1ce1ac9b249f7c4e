"""Job functions for the retry, command, signing, CLI and fault-injection tests.

Worker subprocesses get this folder on PYTHONPATH, so each function here can run there. Functions that
count runs keep the count in a file, because every run may happen in a different work horse.
"""

from __future__ import annotations

import ctypes
import os
import resource
import time
from pathlib import Path

from nbqueue import Retry


def add(a: int, b: int) -> int:
    return a + b


def sleep_then_return(seconds: float, value: object = "done") -> object:
    time.sleep(seconds)
    return value


def always_fail(message: str) -> None:
    raise ValueError(message)


def count_run(counter_path: str) -> int:
    """Add one to the run count stored in ``counter_path`` and return the new count."""
    path = Path(counter_path)
    runs = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(runs))
    return runs


def always_return_retry(counter_path: str, max_retries: int) -> Retry:
    """Count the run, then ask for another run every time."""
    count_run(counter_path)
    return Retry(max=max_retries, interval=0)


def fail_once_then_return(counter_path: str, value: object) -> object:
    """Raise on the first run and return ``value`` on every later run."""
    if count_run(counter_path) == 1:
        raise RuntimeError("first run fails on purpose")
    return value


def long_first_run(marker_path: str, first_run_s: float, value: object = "second run") -> object:
    """Create ``marker_path`` and sleep ``first_run_s`` on the first run, and return ``value`` at once on later runs."""
    marker = Path(marker_path)
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(first_run_s)
        return "first run"
    return value


def append_id_and_pid(log_path: str, token: str, seconds: float = 0.0) -> str:
    """Append ``token`` and this process's pid as one line to ``log_path``, after sleeping ``seconds``."""
    time.sleep(seconds)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{token} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return token


def exit_horse(status: int) -> None:
    """End the work horse at once, skipping every cleanup."""
    os._exit(status)


def segfault() -> None:
    """Read address 0, which kills the work horse with SIGSEGV. Core dumps are turned off first, so none is written."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.string_at(0)


def create_marker(marker_path: str) -> str:
    """Create ``marker_path``, which must never happen for a rejected forged payload."""
    with open(marker_path, "w") as marker:
        marker.write("the forged job ran")
    return "ran"

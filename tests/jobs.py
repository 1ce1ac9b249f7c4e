"""Job functions for worker tests.

Worker subprocesses get this folder on PYTHONPATH, so each function here can run there whether the
client pickles it by reference or by value.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path


def add(a: int, b: int) -> int:
    return a + b


def sleep_then_return(seconds: float, value: object = "done") -> object:
    time.sleep(seconds)
    return value


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def return_lock() -> threading.Lock:
    """Return a lock, which pickle rejects."""
    return threading.Lock()


def exit_horse(status: int) -> None:
    """End the work horse at once, skipping every cleanup, as a crashing extension module would."""
    os._exit(status)


def kill_horse_with_signal(signum: int) -> None:
    """Send ``signum`` to the work horse itself, with core dumps off so that nothing lands in the work tree."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.kill(os.getpid(), signum)
    time.sleep(10)


def return_pid() -> int:
    return os.getpid()


def sleep_with_signals_blocked(seconds: float) -> None:
    """Block every signal that can be blocked, then wait in C (``time.sleep``)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    time.sleep(seconds)


def spin_with_signals_blocked(seconds: float) -> None:
    """Block every signal that can be blocked, then run a Python busy loop."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def sum_huge_range() -> int:
    """Run one C call that holds the GIL for hours: no Python code runs until it returns."""
    return sum(range(10**12))


def backtrack_regex() -> bool:
    """Match a pattern with nested quantifiers against a near miss: exponential backtracking inside ``re``."""
    return re.match(r"(a+)+$", "a" * 64 + "b") is not None


def start_child_then_sleep(pid_path: str, seconds: float) -> None:
    """Start ``sleep 60`` as a child process, write its pid to ``pid_path``, then sleep."""
    child = subprocess.Popen(["sleep", "60"])
    Path(pid_path).write_text(str(child.pid))
    time.sleep(seconds)

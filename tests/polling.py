"""Waiting in tests for a condition that no event announces, such as a file appearing or a Redis key changing."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(predicate: Callable[[], bool], timeout_s: float, description: str, poll_s: float = 0.02) -> None:
    """Poll ``predicate`` every ``poll_s`` until it is true, and fail the test naming ``description`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {description}")
        time.sleep(poll_s)

"""Feedback while a caller blocks on jobs: a progress bar in a kernel, a text bar in a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def wait_feedback(jobs: Sequence[Any], timeout_s: float | None) -> Iterator[None]:
    """Show progress of ``jobs`` while the body blocks."""
    yield

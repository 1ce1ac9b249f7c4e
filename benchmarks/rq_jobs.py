"""Job functions for RQ workers, which import a job's function by its module path.

nbqueue's versions of these functions live in the ``__main__`` of ``benchmarks.run`` instead, so that
nbqueue pickles them by value as it does for functions defined in a notebook.
"""

from __future__ import annotations


def noop() -> None:
    """Do nothing."""


def echo(value: bytes) -> bytes:
    """Return ``value`` unchanged."""
    return value

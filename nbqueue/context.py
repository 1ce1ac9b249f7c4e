"""The job a work horse is running, for code inside the job."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nbqueue.job import Job

_current_job: ContextVar[Job | None] = ContextVar("nbqueue_current_job", default=None)


def get_current_job() -> Job | None:
    """Return the job being run, when called from inside a job on a worker; else None."""
    return _current_job.get()

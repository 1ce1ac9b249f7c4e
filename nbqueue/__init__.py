"""nbqueue: run functions written in Jupyter notebooks on background workers through Redis."""

from __future__ import annotations

from typing import Any

from nbqueue.connection import connect
from nbqueue.context import get_current_job
from nbqueue.errors import (
    AbandonedJobError,
    DeserializationError,
    InvalidJobOperation,
    InvalidOptionError,
    JobsFailedError,
    JobTimeoutException,
    NbqueueError,
    NoSuchJobError,
    SerializationError,
    WaitTimeoutError,
)
from nbqueue.commands import send_stop_job_command
from nbqueue.job import Job, JobStatus
from nbqueue.progress import progress, set_progress
from nbqueue.query import jobs
from nbqueue.queue import Queue
from nbqueue.registry import (
    CanceledJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from nbqueue.results import Result
from nbqueue.retry import Retry
from nbqueue.version import __version__
from nbqueue.waiting import wait
from nbqueue.worker import Worker

__all__ = [
    "AbandonedJobError",
    "CanceledJobRegistry",
    "DeserializationError",
    "FailedJobRegistry",
    "FinishedJobRegistry",
    "InvalidJobOperation",
    "InvalidOptionError",
    "Job",
    "JobStatus",
    "JobTimeoutException",
    "JobsFailedError",
    "NbqueueError",
    "NoSuchJobError",
    "Queue",
    "Result",
    "Retry",
    "ScheduledJobRegistry",
    "SerializationError",
    "StartedJobRegistry",
    "WaitTimeoutError",
    "Worker",
    "__version__",
    "connect",
    "get_current_job",
    "jobs",
    "load_ipython_extension",
    "monitor",
    "progress",
    "send_stop_job_command",
    "set_progress",
    "wait",
]


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%%enqueue`` magic; run by ``%load_ext nbqueue``."""
    from nbqueue.jupyter.magics import load_ipython_extension as load

    load(ipython)


def monitor(connection: Any = None, limit: int = 20) -> Any:
    """Return a live view of queues, workers and recent jobs, with Stop, Requeue and Cancel; needs ipywidgets."""
    from nbqueue.jupyter.monitor import monitor as make_monitor

    return make_monitor(connection, limit=limit)

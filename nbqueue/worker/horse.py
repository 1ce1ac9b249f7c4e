"""The work horse: a persistent child process of the worker that runs one job at a time.

It reads the job's payload, runs the call, records the outcome itself (so a large return value never passes
through the supervising process) and then reports to the supervisor over a pipe.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import signal
import sys
import traceback
import warnings
from multiprocessing.connection import Connection
from typing import Any

import redis

from nbqueue import keys, serialization
from nbqueue.context import _current_job
from nbqueue.errors import DeserializationError, SerializationError
from nbqueue.job import FIELDS, Job
from nbqueue.results import Result
from nbqueue.retry import Retry
from nbqueue.scripts import Scripts
from nbqueue.settings import Settings
from nbqueue.worker import display
from nbqueue.worker.capture import CapturedStream, OutputCapture
from nbqueue.worker.failures import RETRY_FIELDS, failure_outcome, returned_retry_outcome
from nbqueue.worker.outcome import Execution, Outcome, record

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# The payload, the retry counters and every field a Job handle shows, read with one HMGET.
_JOB_FIELDS = ("payload", *dict.fromkeys((*FIELDS, *RETRY_FIELDS)))


def main(
    pipe: Connection,
    supervisor_end: Connection,
    pool_class: type,
    pool_kwargs: dict[str, Any],
    worker_name: str,
    settings: Settings,
) -> None:
    """Run jobs sent by the supervisor until it sends None or the pipe closes."""
    supervisor_end.close()
    _die_with_parent()
    # Its own process group, so that killing the horse also kills processes the job started, and a Ctrl-C
    # in the worker's terminal reaches only the supervisor, which decides what happens to the running job.
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    connection = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool_class, **pool_kwargs))
    scripts = Scripts(connection)
    capture = OutputCapture(connection)
    display.install()
    while True:
        try:
            execution: Execution | None = pipe.recv()
        except (EOFError, OSError):
            return
        if execution is None:
            return
        report = run(connection, scripts, capture, execution, worker_name, settings)
        pipe.send(report)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the supervisor dies, so that no job runs unsupervised."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) is not available; the horse relies on its pipe closing")
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os._exit(1)


def run(
    connection: redis.Redis,
    scripts: Scripts,
    capture: OutputCapture,
    execution: Execution,
    worker_name: str,
    settings: Settings,
) -> dict[str, Any]:
    """Run one execution and record its outcome; return the report for the supervisor."""
    values = connection.hmget(keys.job(execution.job_id), _JOB_FIELDS)
    fields = dict(zip(_JOB_FIELDS, values))
    if fields["payload"] is None:
        return {"job_id": execution.job_id, "type": None, "recorded": False, "exc_string": "the job was deleted"}

    capture.begin(execution.job_id)
    try:
        outcome = _execute(connection, capture, execution, fields, settings)
    finally:
        capture.end()
    recorded = record(
        connection,
        scripts,
        execution,
        outcome,
        worker_name=worker_name,
        result_ttl_s=int(fields["result_ttl"] or 500),
        failure_ttl_s=int(fields["failure_ttl"] or -1),
    )
    return {
        "job_id": execution.job_id,
        "type": outcome.type.value,
        "recorded": recorded,
        "exc_string": outcome.exc_string,
        "retry_delay_s": outcome.retry_delay_s,
    }


def _execute(
    connection: redis.Redis, capture: OutputCapture, execution: Execution, fields: dict[str, Any], settings: Settings
) -> Outcome:
    try:
        func, args, kwargs = serialization.loads(
            fields["payload"], secret_key=settings.secret_key, what=f"payload of job {execution.job_id!r}"
        )
        if isinstance(func, str):
            func = _import_function(func)
    except DeserializationError as exc:
        return Outcome(Result.Type.FAILED, exc_string=f"{DeserializationError.__module__}.DeserializationError: {exc}")
    except Exception as exc:
        return Outcome(Result.Type.FAILED, exc_string=_format_exception(exc))

    del fields["payload"]
    job = Job(execution.job_id, connection)
    job._set_fields([fields[name] for name in FIELDS])
    token = _current_job.set(job)
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = CapturedStream(capture, "stdout", stdout)
    sys.stderr = CapturedStream(capture, "stderr", stderr)
    display.set_capture(capture)
    display.patch_loaded_modules()
    try:
        # catch_warnings() also resets the "shown once" registries, so each job shows its own warnings.
        with warnings.catch_warnings():
            value = func(*args, **kwargs)
    except BaseException as exc:  # a job's SystemExit or KeyboardInterrupt is a failure of that job, too
        return failure_outcome(fields, _format_exception(exc))
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        display.set_capture(None)
        _current_job.reset(token)

    if isinstance(value, Retry):
        return returned_retry_outcome(fields, value)
    if value is None:
        return Outcome(Result.Type.SUCCESSFUL)
    try:
        payload = serialization.dumps(
            value, max_bytes=settings.max_payload_bytes, secret_key=settings.secret_key, what="return value"
        )
    except SerializationError as exc:
        return Outcome(
            Result.Type.FAILED,
            exc_string=f"nbqueue.errors.SerializationError: The job returned a {type(value).__qualname__} "
            f"that cannot be stored: {exc}",
        )
    return Outcome(Result.Type.SUCCESSFUL, value_payload=payload)


def _import_function(path: str) -> Any:
    module_name, _, attribute = path.rpartition(".")
    module = importlib.import_module(module_name)
    return getattr(module, attribute)


def _format_exception(exc: BaseException) -> str:
    """Format a traceback without the horse's own frame, so that it starts in the job's code."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code is _execute.__code__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))

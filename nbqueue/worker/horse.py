"""The work horse: a persistent child process of the worker that runs its jobs one at a time.

The supervisor sends jobs ahead of time, so the horse always has the next one at hand. Messages from the
supervisor: ``("run", Execution)``, ``("skip", job_id)`` (a job stopped before it ran), ``("drain",)``
(warm shutdown: run nothing more) and ``None`` (exit). Messages to it: ``("done", Report)`` after each
run and ``("skipped", job_id)`` for each job not run. The horse reports outcomes and the supervisor
records them in batches; a return value too large to pass through the pipe is recorded by the horse.
"""

from __future__ import annotations

import collections
import ctypes
import importlib
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import redis

from nbqueue import environment, keys, serialization
from nbqueue.context import _current_job
from nbqueue.errors import DeserializationError, SerializationError
from nbqueue.job import FIELDS, Job
from nbqueue.results import Result
from nbqueue.retry import Retry
from nbqueue.scripts import Scripts
from nbqueue.settings import Settings
from nbqueue.worker import display
from nbqueue.worker.capture import CapturedStream, OutputCapture
from nbqueue.worker.failures import failure_outcome, returned_retry_outcome
from nbqueue.worker.outcome import Execution, Outcome, Record, record_outcomes

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: Largest payload or return value passed through the pipe; larger ones go straight to and from Redis.
INLINE_LIMIT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Report:
    """The horse's report to the supervisor on one run."""

    job_id: str
    outcome: Outcome | None  # None: the job was deleted before it ran
    started_at: float
    ended_at: float
    wrote_output: bool
    #: True when the horse recorded the outcome itself (a large return value).
    recorded: bool


def main(
    pipe: Connection,
    supervisor_end: Connection,
    pool_class: type,
    pool_kwargs: dict[str, Any],
    worker_name: str,
    settings: Settings,
    strict_env: bool = False,
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
    runner = _Runner(connection, Scripts(connection), OutputCapture(connection), worker_name, settings, strict_env)
    display.install()

    waiting: collections.deque[Execution] = collections.deque()
    skipped: set[str] = set()
    draining = False
    while True:
        try:
            if not waiting:
                message = pipe.recv()
            elif pipe.poll():
                message = pipe.recv()
            else:
                message = ()
        except (EOFError, OSError):
            return
        if message is None:
            return
        if message:
            kind = message[0]
            if kind == "run":
                waiting.append(message[1])
            elif kind == "skip":
                skipped.add(message[1])
            elif kind == "drain":
                draining = True
            continue

        execution = waiting.popleft()
        if draining or execution.job_id in skipped:
            skipped.discard(execution.job_id)
            pipe.send(("skipped", execution.job_id))
            continue
        # With nothing else to run, the horse records the outcome itself, one hop sooner; otherwise the
        # supervisor records outcomes in batches.
        pipe.send(("done", runner.run(execution, record_now=not waiting)))


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


class _Runner:
    """Runs one execution at a time with its output captured."""

    def __init__(
        self,
        connection: redis.Redis,
        scripts: Scripts,
        capture: OutputCapture,
        worker_name: str,
        settings: Settings,
        strict_env: bool = False,
    ):
        self.connection = connection
        self.scripts = scripts
        self.capture = capture
        self.worker_name = worker_name
        self.settings = settings
        self.strict_env = strict_env

    def run(self, execution: Execution, record_now: bool = False) -> Report:
        """Run one job; record its outcome here when ``record_now`` or when its value is too large to pass on."""
        started_at = time.time()
        if execution.payload is None:
            execution.payload = self.connection.hget(keys.job(execution.job_id), "payload")
            if execution.payload is None:
                return Report(execution.job_id, None, started_at, time.time(), False, False)

        self.capture.begin(execution.job_id)
        try:
            outcome = self._execute(execution)
        finally:
            wrote_output = self.capture.end()
        ended_at = time.time()

        large = isinstance(outcome.value_payload, list)
        if not (record_now or large):
            return Report(execution.job_id, outcome, started_at, ended_at, wrote_output, False)
        record = Record(execution, outcome, self.worker_name, started_at, ended_at, wrote_output)
        record_outcomes(self.connection, self.scripts, [record])
        # The supervisor needs the outcome for its log and retry timer, not the value.
        summary = Outcome(outcome.type, exc_string=outcome.exc_string, retry_delay_s=outcome.retry_delay_s)
        return Report(execution.job_id, summary, started_at, ended_at, wrote_output, True)

    def _execute(self, execution: Execution) -> Outcome:
        settings = self.settings
        # Only this frame keeps the payload, so it is freed as soon as the call is unpickled.
        payload, execution.payload = execution.payload, None
        what = f"payload of job {execution.job_id!r}"
        try:
            header, body = serialization.read_envelope(payload, secret_key=settings.secret_key, what=what)
        except DeserializationError as exc:
            return Outcome(Result.Type.FAILED, exc_string=f"{DeserializationError.__module__}.DeserializationError: {exc}")

        differences = environment.compare_imports(header.get("modules"))
        if differences and self.strict_env:
            return self._reject_environment(execution.job_id, differences)
        if differences:
            table = environment.format_table(differences, execution.job_id)
            log.warning("Job %s runs with other distribution versions than its submitter's:\n%s", execution.job_id, table)
            self.capture.write_stream("stderr", "Warning: " + table)

        try:
            func, args, kwargs = serialization.unpickle_call(header, body, what=what)
            if isinstance(func, str):
                func = _import_function(func)
        except DeserializationError as exc:
            text = f"{DeserializationError.__module__}.DeserializationError: {exc}"
            return Outcome(Result.Type.FAILED, exc_string=text + self._missing_modules_note(execution.job_id, differences))
        except Exception as exc:
            text = _format_exception(exc)
            return Outcome(Result.Type.FAILED, exc_string=text + self._missing_modules_note(execution.job_id, differences))
        del payload, body

        job = Job(execution.job_id, self.connection)
        job._set_fields([execution.fields.get(name) for name in FIELDS])
        token = _current_job.set(job)
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout = CapturedStream(self.capture, "stdout", stdout)
        sys.stderr = CapturedStream(self.capture, "stderr", stderr)
        display.set_capture(self.capture)
        display.patch_loaded_modules()
        try:
            # catch_warnings() also resets the "shown once" registries, so each job shows its own warnings.
            with warnings.catch_warnings():
                value = func(*args, **kwargs)
        except BaseException as exc:  # a job's SystemExit or KeyboardInterrupt is a failure of that job, too
            return failure_outcome(execution.fields, _format_exception(exc))
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            display.set_capture(None)
            _current_job.reset(token)

        if isinstance(value, Retry):
            return returned_retry_outcome(execution.fields, value)
        if value is None:
            return Outcome(Result.Type.SUCCESSFUL)
        try:
            parts = serialization.dumps(
                value, max_bytes=settings.max_payload_bytes, secret_key=settings.secret_key, what="return value",
                join=False,
            )
            # A large value stays in parts, which the horse sends to Redis without joining them.
            value_payload = parts if sum(len(part) for part in parts) > INLINE_LIMIT_BYTES else b"".join(parts)
        except SerializationError as exc:
            return Outcome(
                Result.Type.FAILED,
                exc_string=f"nbqueue.errors.SerializationError: The job returned a {type(value).__qualname__} "
                f"that cannot be stored: {exc}",
            )
        return Outcome(Result.Type.SUCCESSFUL, value_payload=value_payload)

    def _reject_environment(self, job_id: str, differences: list[environment.Difference]) -> Outcome:
        """Return the FAILED outcome of a job that this ``--strict-env`` worker does not run."""
        missing = [difference.module for difference in differences if difference.missing]
        if missing:
            reason = f"lacks modules that the job imports ({', '.join(missing)})"
        else:
            reason = "has other major or minor versions of the job's distributions"
        return Outcome(
            Result.Type.FAILED,
            exc_string=f"{environment.EnvironmentMismatchError.__module__}.EnvironmentMismatchError: Job {job_id} was "
            f"rejected because worker {self.worker_name} runs with --strict-env and {reason}. Install the versions of the submitting environment, or start the worker without "
            f"--strict-env.\n\n{environment.format_table(differences, job_id)}",
        )

    def _missing_modules_note(self, job_id: str, differences: list[environment.Difference]) -> str:
        """Return the lines to add to an unpickling failure that names the job's modules missing here."""
        missing = [difference.module for difference in differences if difference.missing]
        if not missing:
            return ""
        return (
            f"\nModules missing on worker {self.worker_name}: {', '.join(missing)}. Install them where the worker "
            f"runs.\n\n{environment.format_table(differences, job_id)}"
        )


def _import_function(path: str) -> Any:
    module_name, _, attribute = path.rpartition(".")
    module = importlib.import_module(module_name)
    return getattr(module, attribute)


def _format_exception(exc: BaseException) -> str:
    """Format a traceback without the horse's own frame, so that it starts in the job's code.

    A failed notebook cell has no useful Python traceback in the horse: its message carries the kernel's.
    """
    from nbqueue.notebooks import NotebookCellError

    if isinstance(exc, NotebookCellError):
        return f"{NotebookCellError.__module__}.{NotebookCellError.__qualname__}: {exc}"
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code is _Runner._execute.__code__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))

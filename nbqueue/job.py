"""Jobs: a function call stored in Redis, with its options, state and results."""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import Generator, Iterable
from datetime import datetime, timezone
from typing import Any

import redis

from nbqueue import keys, serialization
from nbqueue.connection import blocking_client, connect
from nbqueue.errors import InvalidOptionError, NoSuchJobError
from nbqueue.notebooks import EXECUTED_NOTEBOOK_FIELD, RUN_NOTEBOOK_FUNC
from nbqueue.results import DISCARDED_MARKER, MAX_RESULTS, Result, decode_entries
from nbqueue.scripts import scripts_for
from nbqueue.settings import load_settings

#: Maximum time of one blocking read while waiting for a result, so that Ctrl-C is seen within about a second.
WAIT_CHUNK_S = 1.0
#: Extra seconds a blocking read may take beyond its block time before it counts as a lost connection.
WAIT_GRACE_S = 1.0
#: Maximum length of a job id, in characters.
MAX_JOB_ID_LENGTH = 65536


class JobStatus(str, enum.Enum):
    """The state of a job, stored in its hash's ``status`` field."""

    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    SCHEDULED = "scheduled"
    STOPPED = "stopped"
    CANCELED = "canceled"

    def __str__(self) -> str:
        return self.value


# Fields read by Job.fetch and refresh, status, queue and worker first (the FETCH script relies on it);
# the payload is left out because it can be large.
FIELDS = (
    "status", "queue", "worker", "func", "description", "created_at", "enqueued_at", "started_at", "ended_at",
    "timeout", "result_ttl", "failure_ttl", "ttl", "meta", "retries_left", "execution", "tags",
    "progress_done", "progress_total", "progress_message", "progress_at",
    "notebook_path", "cell_id", "cell_source_hash",
)


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` if it is a usable id, else raise :class:`InvalidOptionError`."""
    if not isinstance(job_id, str):
        raise InvalidOptionError(f"job_id={job_id!r} is invalid: a job id must be a str, got {type(job_id).__name__}")
    if not job_id:
        raise InvalidOptionError("job_id='' is invalid: a job id must not be empty")
    if len(job_id) > MAX_JOB_ID_LENGTH:
        raise InvalidOptionError(f"job_id of {len(job_id):,} characters is too long: the limit is {MAX_JOB_ID_LENGTH:,}")
    try:
        job_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidOptionError(f"job_id={job_id!r} is invalid: it is not valid Unicode text ({exc.reason})") from exc
    return job_id


class Job:
    """A handle on one job in Redis. Create jobs with :meth:`Queue.enqueue`; load them with :meth:`fetch`."""

    def __init__(self, id: str, connection: redis.Redis | str | None = None):
        self.id = validate_job_id(id)
        self.connection = connect(connection)
        self._fields: dict[str, bytes] = {}
        self._meta: dict[str, Any] | None = None
        self._cached_result: Result | None = None

    # Loading

    @classmethod
    def fetch(cls, id: str, connection: redis.Redis | str | None = None) -> Job:
        """Load the job with this id; raise :class:`NoSuchJobError` if there is none."""
        job = cls(id, connection)
        job.refresh()
        return job

    @classmethod
    def fetch_many(cls, job_ids: Iterable[str], connection: redis.Redis | str | None = None) -> list[Job | None]:
        """Load several jobs in one round trip; missing jobs are None, in the same order."""
        client = connect(connection)
        jobs = [cls(job_id, client) for job_id in job_ids]
        fetch = scripts_for(client).fetch
        pipe = client.pipeline(transaction=False)
        for job in jobs:
            fetch(keys=[keys.job(job.id)], args=[keys.PREFIX, job.id, *FIELDS], client=pipe)
        loaded: list[Job | None] = []
        for job, values in zip(jobs, pipe.execute()):
            if values[0] is None:
                loaded.append(None)
            else:
                job._set_fields(values)
                loaded.append(job)
        return loaded

    def refresh(self) -> None:
        """Reload the job's fields from Redis."""
        values = scripts_for(self.connection).fetch(keys=[keys.job(self.id)], args=[keys.PREFIX, self.id, *FIELDS])
        if values[0] is None:
            raise NoSuchJobError(f"No job with id {self.id!r}: it was never created, was deleted, or has expired")
        self._set_fields(values)

    def _set_fields(self, values: list[bytes | None]) -> None:
        self._fields = {name: value for name, value in zip(FIELDS, values) if value is not None}
        self._meta = None

    def _text(self, name: str) -> str | None:
        value = self._fields.get(name)
        return value.decode() if value is not None else None

    def _time(self, name: str) -> datetime | None:
        value = self._fields.get(name)
        return datetime.fromtimestamp(float(value), tz=timezone.utc) if value is not None else None

    def _number(self, name: str) -> float | None:
        value = self._fields.get(name)
        return float(value) if value is not None else None

    # Fields

    @property
    def origin(self) -> str:
        """Name of the queue the job was enqueued on."""
        return self._text("queue") or ""

    @property
    def func_name(self) -> str:
        """Qualified name of the job's function."""
        return self._text("func") or ""

    @property
    def description(self) -> str:
        """Human-readable summary of the call."""
        return self._text("description") or self.func_name

    @property
    def timeout(self) -> float | None:
        """Seconds the job may run before its work horse is killed; -1 for no limit."""
        return self._number("timeout")

    @property
    def result_ttl(self) -> int | None:
        """Seconds a finished job and its results are kept; -1 forever, 0 not at all."""
        value = self._number("result_ttl")
        return int(value) if value is not None else None

    @property
    def failure_ttl(self) -> int | None:
        """Seconds a failed job and its results are kept; -1 forever."""
        value = self._number("failure_ttl")
        return int(value) if value is not None else None

    @property
    def ttl(self) -> int | None:
        """Seconds the job may wait in its queue before it expires unrun; None for no limit."""
        value = self._number("ttl")
        return int(value) if value is not None else None

    @property
    def retries_left(self) -> int | None:
        """How many more runs an exception may lead to."""
        value = self._number("retries_left")
        return int(value) if value is not None else None

    @property
    def notebook_path(self) -> str | None:
        """Path of the notebook the job was enqueued from (``JPY_SESSION_NAME``), or None."""
        return self._text("notebook_path")

    @property
    def cell_id(self) -> str | None:
        """Id of the notebook cell the job was enqueued from, when the front end sent it; else None."""
        return self._text("cell_id")

    @property
    def cell_source_hash(self) -> str | None:
        """``sha256:`` and the hex digest of the source of the cell the job was enqueued from, or None."""
        return self._text("cell_source_hash")

    @property
    def is_notebook_job(self) -> bool:
        """True for a job created by :meth:`Queue.enqueue_notebook`."""
        return self.func_name == RUN_NOTEBOOK_FUNC

    def executed_notebook(self) -> Any:
        """Return a notebook job's executed notebook, or None while there is none.

        After a SUCCESSFUL run this is the return value. After a cell failed it is the notebook as far as
        it ran, kept in the job's hash until the job expires. It is an nbformat NotebookNode when nbformat
        is installed, else a dict of the notebook's JSON.
        """
        result = self.latest_result()
        if result is not None and result.type == Result.Type.SUCCESSFUL:
            return result.return_value
        raw = self.connection.hget(keys.job(self.id), EXECUTED_NOTEBOOK_FIELD)
        if raw is None:
            return None
        notebook = json.loads(raw)
        try:
            import nbformat
        except ImportError:
            return notebook
        return nbformat.from_dict(notebook)

    @property
    def tags(self) -> list[str]:
        """Tags to find the job by; jobs enqueued from a notebook carry the notebook's tag."""
        raw = self._fields.get("tags")
        return json.loads(raw) if raw else []

    @property
    def progress(self) -> tuple[float, float | None, str | None] | None:
        """The latest progress the job reported: (done, total or None, message or None), or None."""
        done = self._number("progress_done")
        if done is None:
            return None
        return done, self._number("progress_total"), self._text("progress_message")

    @property
    def created_at(self) -> datetime | None:
        return self._time("created_at")

    @property
    def enqueued_at(self) -> datetime | None:
        return self._time("enqueued_at")

    @property
    def started_at(self) -> datetime | None:
        """When the latest execution started, by the worker's clock."""
        return self._time("started_at")

    @property
    def ended_at(self) -> datetime | None:
        """When the latest execution ended, by the worker's clock."""
        return self._time("ended_at")

    @property
    def worker_name(self) -> str | None:
        """Name of the worker that ran the latest execution."""
        return self._text("worker")

    @property
    def meta(self) -> dict[str, Any]:
        """Free-form data kept with the job; change it, then call :meth:`save_meta`."""
        if self._meta is None:
            raw = self._fields.get("meta")
            self._meta = (
                serialization.loads(raw, secret_key=load_settings().secret_key, what=f"meta of job {self.id!r}")
                if raw
                else {}
            )
        return self._meta

    def save_meta(self) -> None:
        """Write :attr:`meta` to Redis, leaving every other field as it is."""
        settings = load_settings()
        data = serialization.dumps(
            self.meta, max_bytes=settings.max_payload_bytes, secret_key=settings.secret_key, what="job meta"
        )
        self.connection.hset(keys.job(self.id), "meta", data)
        self._fields["meta"] = data

    # State

    def get_status(self, refresh: bool = True) -> JobStatus:
        """Return the job's status, read from Redis unless ``refresh`` is False."""
        if refresh:
            raw = scripts_for(self.connection).get_status(keys=[keys.job(self.id)], args=[keys.PREFIX, self.id])
            if raw is None:
                raise NoSuchJobError(f"No job with id {self.id!r}: it was never created, was deleted, or has expired")
            self._fields["status"] = raw
        return JobStatus(self._text("status"))

    @property
    def is_finished(self) -> bool:
        return self.get_status() == JobStatus.FINISHED

    @property
    def is_failed(self) -> bool:
        return self.get_status() == JobStatus.FAILED

    @property
    def is_queued(self) -> bool:
        return self.get_status() == JobStatus.QUEUED

    @property
    def is_started(self) -> bool:
        return self.get_status() == JobStatus.STARTED

    def exists(self) -> bool:
        return bool(self.connection.exists(keys.job(self.id)))

    # Results

    def results(self) -> list[Result]:
        """Return the job's results, newest first: one per execution, at most the 10 latest."""
        entries = self.connection.xrevrange(keys.results(self.id), count=MAX_RESULTS)
        return decode_entries(self.id, entries)

    def latest_result(self, timeout: float | None = None) -> Result | None:
        """Return the newest result, or None.

        With ``timeout`` (seconds, float allowed), wait up to that long for a first result when there is none
        yet. The wait returns None as soon as the job is gone, including a job run with ``result_ttl=0``.
        """
        if timeout is None or timeout == 0:
            result = self._newest(self.connection.xrevrange(keys.results(self.id), count=1))
        else:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
                raise InvalidOptionError(f"timeout={timeout!r} is invalid: give a number of seconds >= 0")
            from nbqueue.feedback import wait_feedback

            with wait_feedback([self], float(timeout)):
                result = self._wait_for_result(float(timeout))
        # return_value() reuses it, so a large value is not downloaded twice.
        self._cached_result = result
        return result

    def _newest(self, entries: list) -> Result | None:
        results = decode_entries(self.id, entries)
        return results[0] if results else None

    def _wait_for_result(self, timeout_s: float) -> Result | None:
        """Block until a result exists, the job is gone, or ``timeout_s`` passes.

        Lost connections (a Redis restart, a killed client connection, a paused server) are retried with
        back-off until the deadline; the last error is raised if Redis is still unreachable then. One read
        blocks for at most ``WAIT_CHUNK_S`` plus ``WAIT_GRACE_S``, which bounds how late the call returns.
        """
        deadline = time.monotonic() + timeout_s
        waiter = blocking_client(self.connection, WAIT_CHUNK_S + WAIT_GRACE_S)
        results_key, job_key = keys.results(self.id), keys.job(self.id)
        # A job this handle has loaded or created is known to exist, so the first read may block at once.
        # Otherwise the first round only looks, so a result or a missing job returns without blocking.
        first = not self._fields
        delay_s = 0.05
        while True:
            remaining_s = deadline - time.monotonic()
            block_ms = max(1, int(min(remaining_s, WAIT_CHUNK_S) * 1000))
            pipe = waiter.pipeline(transaction=False)
            pipe.xrevrange(results_key, count=1)
            pipe.exists(job_key)
            if not first:
                pipe.xread({results_key: "0-0"}, count=1, block=block_ms)
            try:
                newest, job_exists, *arrived = pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() + delay_s >= deadline:
                    raise
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 1.0)
                continue
            delay_s = 0.05
            first = False
            if not newest and arrived and arrived[0]:
                # The stream was empty when this round began, so the entry XREAD returned is the job's first
                # result: use it rather than reading the stream (and a large value) again.
                streams = arrived[0]
                newest = next(iter(streams.values())) if isinstance(streams, dict) else streams[0][1]
            if newest:
                if newest[0][1].get(b"type") == DISCARDED_MARKER:
                    return None
                return self._newest(newest)
            if not job_exists or time.monotonic() >= deadline:
                return None

    async def wait_async(self, timeout: float | None = None) -> Result | None:
        """Like ``latest_result(timeout)``, without blocking the event loop; None waits without a limit.

        The wait runs in a thread in chunks of about a second, so cancelling the task ends it promptly.
        """
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0):
            raise InvalidOptionError(f"timeout={timeout!r} is invalid: give a number of seconds >= 0, or None")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            chunk_s = WAIT_CHUNK_S if deadline is None else max(0.0, min(WAIT_CHUNK_S, deadline - time.monotonic()))
            result = await asyncio.to_thread(self.latest_result, chunk_s or None)
            if result is not None:
                return result
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if not await asyncio.to_thread(self.exists):
                return None

    def __await__(self) -> Generator[Any, None, Result | None]:
        """``await job`` waits, without a limit and without blocking the event loop, for the newest result."""
        return self.wait_async().__await__()

    def return_value(self, refresh: bool = False) -> Any:
        """Return the latest result's value if that result is SUCCESSFUL, else None."""
        if refresh or self._cached_result is None:
            self._cached_result = self.latest_result()
        result = self._cached_result
        if result is None or result.type != Result.Type.SUCCESSFUL:
            return None
        return result.return_value

    # Lifecycle

    def stop(self) -> None:
        """Kill the running job on its worker; it records STOPPED and is not retried."""
        from nbqueue.commands import send_stop_job_command

        send_stop_job_command(self.connection, self.id)

    def cancel(self) -> None:
        """Remove a queued or scheduled job from its queue into the canceled registry."""
        from nbqueue.commands import cancel_job

        cancel_job(self.connection, self.id, self._queue_name())
        self._fields["status"] = JobStatus.CANCELED.value.encode()

    def requeue(self, at_front: bool = False) -> Job:
        """Put a failed, stopped or canceled job back on its queue; return the job."""
        from nbqueue.commands import requeue_job

        requeue_job(self.connection, self.id, self._queue_name(), at_front=at_front)
        self._fields["status"] = JobStatus.QUEUED.value.encode()
        return self

    def delete(self) -> None:
        """Delete the job, its results and its entries in its queue and registries."""
        from nbqueue.commands import delete_job

        delete_job(self.connection, self.id, self._queue_name())

    def _queue_name(self) -> str:
        if "queue" not in self._fields:
            self.refresh()
        return self.origin

    # Display

    def __repr__(self) -> str:
        status = self._text("status") or "unknown"
        return f"Job({self.id!r}, status={status!r}, queue={self.origin!r})"

    def _repr_html_(self) -> str:
        from nbqueue.jupyter.html import job_html

        return job_html(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from nbqueue.jupyter.display import job_mimebundle

        return job_mimebundle(self, include=include, exclude=exclude)

    def widget(self) -> Any:
        """Return a live ipywidgets view of the job (needs ipywidgets, in a Jupyter kernel)."""
        from nbqueue.jupyter.widgets import JobWidget

        return JobWidget(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

"""Queues: named lists of job ids in Redis, and the ``enqueue`` family that creates jobs."""

from __future__ import annotations

import json
import os
import reprlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis

from nbqueue import keys, serialization
from nbqueue.connection import connect
from nbqueue.durations import (
    DEFAULT_FAILURE_TTL_S,
    DEFAULT_JOB_TIMEOUT_S,
    DEFAULT_RESULT_TTL_S,
    parse_duration,
    parse_job_timeout,
    parse_ttl,
)
from nbqueue.errors import InvalidOptionError
from nbqueue.job import Job, JobStatus, validate_job_id
from nbqueue.provenance import collect_provenance
from nbqueue.registry import (
    CanceledJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from nbqueue.retry import Retry
from nbqueue.session import session_tag
from nbqueue.settings import Settings, load_settings
from nbqueue.wire import execute_packed, pack_command
from nbqueue.waiting import wait

#: Keyword arguments of ``enqueue`` that are options, not arguments of the function.
ENQUEUE_OPTIONS = frozenset(
    {"job_timeout", "result_ttl", "failure_ttl", "ttl", "retry", "job_id", "description", "meta", "at_front", "tags"}
)
#: How long a tag's index of job ids lives after its last job was added, in seconds (one year).
TAG_INDEX_TTL_S = 365 * 24 * 3600


@dataclass
class EnqueueData:
    """One call prepared by :meth:`Queue.prepare_data` for :meth:`Queue.enqueue_many`."""

    func: Callable[..., Any] | str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


class Queue:
    """A named queue of jobs. ``connection=None`` resolves ``NBQUEUE_REDIS_URL``, else the embedded server."""

    def __init__(
        self,
        name: str = "default",
        connection: redis.Redis | str | None = None,
        default_timeout: float | str | None = None,
    ):
        if not isinstance(name, str) or not name:
            raise InvalidOptionError(f"Queue name {name!r} is invalid: use a non-empty str")
        self.name = name
        self.connection = connect(connection)
        self.default_timeout = parse_job_timeout(default_timeout, "default_timeout")
        self.key = keys.queue(name)
        self._registered = False

    # Creating jobs

    def enqueue(self, f: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Job:
        """Create a job that calls ``f(*args, **kwargs)`` on a worker, and put it at the end of the queue.

        Options (taken out of ``kwargs``): ``job_timeout``, ``result_ttl``, ``failure_ttl``, ``ttl``, ``retry``,
        ``job_id``, ``description``, ``meta``, ``at_front``, ``tags`` (strs to find the job by with
        :func:`nbqueue.jobs`; jobs enqueued from a notebook also get the notebook's tag). Use :meth:`enqueue_call` for a function whose own
        keyword arguments have these names.
        """
        options = {name: kwargs.pop(name) for name in list(kwargs) if name in ENQUEUE_OPTIONS}
        return self.enqueue_call(f, args=args, kwargs=kwargs, **options)

    def enqueue_call(
        self,
        func: Callable[..., Any] | str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Job:
        """Create a job from explicit ``args`` and ``kwargs``; every other keyword is an option."""
        return self.enqueue_many([self.prepare_data(func, args, kwargs, **options)])[0]

    @staticmethod
    def prepare_data(
        func: Callable[..., Any] | str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EnqueueData:
        """Describe one call for :meth:`enqueue_many`."""
        unknown = sorted(set(options) - ENQUEUE_OPTIONS)
        if unknown:
            raise InvalidOptionError(
                f"Unknown enqueue option {unknown[0]!r}: the options are {', '.join(sorted(ENQUEUE_OPTIONS))}"
            )
        return EnqueueData(func, tuple(args), dict(kwargs or {}), options)

    def enqueue_at(self, when: datetime, f: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Job:
        """Like :meth:`enqueue`, but the job waits in the scheduled registry until ``when``.

        A naive ``when`` is taken as local time. Workers move due jobs to the queue (see the scheduler).
        """
        if not isinstance(when, datetime):
            raise InvalidOptionError(f"when={when!r} is invalid: pass a datetime")
        options = {name: kwargs.pop(name) for name in list(kwargs) if name in ENQUEUE_OPTIONS}
        return self.enqueue_many([self.prepare_data(f, args, kwargs, **options)], scheduled_at=when.timestamp())[0]

    def enqueue_in(self, delay: timedelta | float | str, f: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Job:
        """Like :meth:`enqueue`, but the job runs after ``delay`` (a timedelta, seconds, or a string like "10m")."""
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else parse_duration(delay, "delay")
        if seconds < 0:
            raise InvalidOptionError(f"delay={delay!r} is invalid: use a delay >= 0")
        options = {name: kwargs.pop(name) for name in list(kwargs) if name in ENQUEUE_OPTIONS}
        return self.enqueue_many([self.prepare_data(f, args, kwargs, **options)], scheduled_at=time.time() + seconds)[0]

    def enqueue_notebook(
        self,
        path: str | os.PathLike[str],
        parameters: dict[str, Any] | None = None,
        kernel_name: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Job:
        """Create a job that executes the notebook at ``path`` on a worker, with nbclient.

        The notebook is read now and travels in the payload. ``parameters`` are assigned in a new cell after
        the cell tagged ``parameters``, or at the top without one; values must be Python literals.
        ``kernel_name`` defaults to the notebook's kernelspec. The kernel runs in ``cwd`` (default: the
        notebook's folder) when that folder exists on the worker. ``options`` are those of :meth:`enqueue`;
        ``job_timeout`` also stops the kernel and the processes it started.

        The job's return value is the executed notebook; a failing cell records FAILED, and
        :meth:`Job.executed_notebook` returns the notebook as far as it ran.
        """
        from nbqueue.notebooks import notebook_description, read_notebook, run_notebook, validate_parameters

        notebook = read_notebook(path)
        checked = validate_parameters(parameters)
        folder = os.path.abspath(cwd if cwd is not None else os.path.dirname(os.path.abspath(path)))
        options.setdefault("description", notebook_description(path, checked))
        call_kwargs = {"notebook": notebook, "parameters": checked, "kernel_name": kernel_name, "cwd": folder}
        return self.enqueue_call(run_notebook, kwargs=call_kwargs, **options)

    def enqueue_many(self, job_datas: Iterable[EnqueueData], *, scheduled_at: float | None = None) -> list[Job]:
        """Create several jobs in one round trip. Every call is checked and pickled before anything is written."""
        settings = load_settings()
        datas = list(job_datas)
        payloads = _pickle_calls(datas, settings)
        prepared = [self._build(data, settings, payload) for data, payload in zip(datas, payloads)]

        # Every job hash is written before any id reaches the queue, so a worker never takes an id
        # whose job it cannot read. Commands are packed by hand: redis-py's pipeline costs more CPU
        # than the round trip here.
        commands: list[list[Any]] = []
        if not self._registered:
            commands.append(pack_command("SADD", keys.QUEUES, self.name))
        now = time.time()
        front: list[str] = []
        back: list[str] = []
        for job_id, fields, ttl, at_front in prepared:
            job_key = keys.job(job_id)
            if scheduled_at is not None:
                fields["status"] = JobStatus.SCHEDULED.value
            commands.append(pack_command("HSET", job_key, *[item for pair in fields.items() for item in pair]))
            if ttl is not None and ttl > 0:
                commands.append(pack_command("EXPIRE", job_key, ttl))
            for tag in json.loads(fields.get("tags", "[]")):
                commands.append(pack_command("ZADD", keys.tag(tag), now, job_id))
                commands.append(pack_command("EXPIRE", keys.tag(tag), TAG_INDEX_TTL_S))
            if scheduled_at is not None:
                commands.append(pack_command("ZADD", keys.scheduled(self.name), scheduled_at, job_id))
            elif at_front:
                front.append(job_id)
            else:
                back.append(job_id)
        if front:
            # LPUSH puts its last argument first: reversed, the jobs keep their order at the head.
            commands.append(pack_command("LPUSH", self.key, *reversed(front)))
        if back:
            commands.append(pack_command("RPUSH", self.key, *back))
        if scheduled_at is not None:
            # Wakes one idle worker to move the jobs when they are due; LTRIM keeps the list short.
            commands.append(pack_command("LPUSH", keys.SCHEDULER_WAKE, "1"))
            commands.append(pack_command("LTRIM", keys.SCHEDULER_WAKE, 0, 0))
        for reply in execute_packed(self.connection, commands, len(commands)):
            if isinstance(reply, redis.ResponseError):
                raise reply
        self._registered = True
        jobs = []
        for job_id, fields, _, _ in prepared:
            job = Job(job_id, self.connection)
            job._fields = {name: _to_bytes(value) for name, value in fields.items() if name != "payload"}
            jobs.append(job)
        return jobs

    def map(
        self, f: Callable[..., Any] | str, iterable: Iterable[Any], *, timeout: float | None = None, **options: Any
    ) -> list[Any]:
        """Run ``f(item)`` as one job per item, wait for all of them, and return their values in input order.

        The jobs are enqueued in one round trip; ``options`` are the options of :meth:`enqueue` and apply to
        every job. The wait is :func:`nbqueue.wait`: it shows one progress bar for all jobs, waits up to
        ``timeout`` seconds (None: no limit), and raises :class:`JobsFailedError` if any job failed or
        :class:`WaitTimeoutError` if the timeout passed; both carry the values and the jobs. To get the jobs
        without waiting, call ``enqueue_many([Queue.prepare_data(f, (item,), **options) for item in items])``.
        """
        jobs = self.enqueue_many([self.prepare_data(f, (item,), None, **options) for item in iterable])
        return wait(jobs, timeout)

    def _build(self, data: EnqueueData, settings, payload: bytes) -> tuple[str, dict[str, Any], int | None, bool]:
        options = data.options
        job_id = validate_job_id(options["job_id"]) if options.get("job_id") is not None else uuid.uuid4().hex
        timeout = parse_job_timeout(options.get("job_timeout"))
        if timeout is None:
            timeout = self.default_timeout if self.default_timeout is not None else DEFAULT_JOB_TIMEOUT_S
        result_ttl = parse_ttl(options.get("result_ttl"), "result_ttl")
        failure_ttl = parse_ttl(options.get("failure_ttl"), "failure_ttl")
        ttl = parse_ttl(options.get("ttl"), "ttl", allow_zero=False)
        retry = options.get("retry")
        if retry is not None and not isinstance(retry, Retry):
            raise InvalidOptionError(f"retry={retry!r} is invalid: pass a Retry(max=..., interval=...)")
        meta = options.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise InvalidOptionError(f"meta={meta!r} is invalid: pass a dict")
        func = data.func
        func_name = func if isinstance(func, str) else _qualified_name(func)
        now = repr(time.time())
        fields: dict[str, Any] = {
            "status": JobStatus.QUEUED.value,
            "queue": self.name,
            "func": func_name,
            "description": options.get("description") or _describe_call(func_name, data.args, data.kwargs),
            "created_at": now,
            "enqueued_at": now,
            "timeout": repr(timeout),
            "result_ttl": str(result_ttl if result_ttl is not None else DEFAULT_RESULT_TTL_S),
            "failure_ttl": str(failure_ttl if failure_ttl is not None else DEFAULT_FAILURE_TTL_S),
            "payload": payload,
        }
        if ttl is not None and ttl > 0:
            fields["ttl"] = str(ttl)
        if retry is not None:
            fields["retries_left"] = str(retry.max)
            fields["retry_intervals"] = json.dumps(retry.intervals)
        tags = _validate_tags(options.get("tags"))
        session = session_tag(settings)
        if session is not None and session not in tags:
            tags.append(session)
        if tags:
            fields["tags"] = json.dumps(tags)
        fields.update(collect_provenance(settings))
        if meta:
            fields["meta"] = serialization.dumps(
                meta, max_bytes=settings.max_payload_bytes, secret_key=settings.secret_key, what="job meta"
            )
        return job_id, fields, ttl, bool(options.get("at_front"))

    # Reading

    def __len__(self) -> int:
        return self.count

    @property
    def count(self) -> int:
        """Number of jobs waiting in the queue."""
        return self.connection.llen(self.key)

    @property
    def job_ids(self) -> list[str]:
        """Ids of the waiting jobs, head first."""
        return [raw.decode() for raw in self.connection.lrange(self.key, 0, -1)]

    @property
    def jobs(self) -> list[Job]:
        """The waiting jobs, head first; ids whose job has expired are left out."""
        return [job for job in Job.fetch_many(self.job_ids, self.connection) if job is not None]

    def fetch_job(self, job_id: str) -> Job:
        return Job.fetch(job_id, self.connection)

    def empty(self) -> int:
        """Delete every waiting job and its data; return how many were removed."""
        ids = self.connection.lrange(self.key, 0, -1)
        pipe = self.connection.pipeline(transaction=True)
        pipe.delete(self.key)
        for raw in ids:
            job_id = raw.decode()
            pipe.delete(keys.job(job_id), keys.results(job_id), keys.output(job_id))
        pipe.execute()
        return len(ids)

    @property
    def started_job_registry(self) -> StartedJobRegistry:
        return StartedJobRegistry(queue=self)

    @property
    def finished_job_registry(self) -> FinishedJobRegistry:
        return FinishedJobRegistry(queue=self)

    @property
    def failed_job_registry(self) -> FailedJobRegistry:
        return FailedJobRegistry(queue=self)

    @property
    def scheduled_job_registry(self) -> ScheduledJobRegistry:
        return ScheduledJobRegistry(queue=self)

    @property
    def canceled_job_registry(self) -> CanceledJobRegistry:
        return CanceledJobRegistry(queue=self)

    @classmethod
    def all(cls, connection: redis.Redis | str | None = None) -> list[Queue]:
        """Return every queue that ever had a job, sorted by name."""
        client = connect(connection)
        return [cls(raw.decode(), client) for raw in sorted(client.smembers(keys.QUEUES))]

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"


def _pickle_calls(datas: list[EnqueueData], settings: Settings) -> list[bytes]:
    """Pickle each call, pickling a function once for a run of calls to the same function."""
    for data in datas:
        func = data.func
        if not callable(func) and not (isinstance(func, str) and "." in func):
            raise InvalidOptionError(
                f"{func!r} is not callable: pass a function, or its import path as a 'module.function' string"
            )
    payloads: list[bytes] = []
    start = 0
    while start < len(datas):
        end = start + 1
        while end < len(datas) and datas[end].func is datas[start].func:
            end += 1
        payloads += serialization.dumps_calls(
            datas[start].func, [(data.args, data.kwargs) for data in datas[start:end]],
            max_bytes=settings.max_payload_bytes, secret_key=settings.secret_key,
        )
        start = end
    return payloads


def _validate_tags(tags: object) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, (list, tuple, set, frozenset)):
        raise InvalidOptionError(f"tags={tags!r} is invalid: pass a list of strs")
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise InvalidOptionError(f"tags={tags!r} is invalid: each tag must be a non-empty str")
    return list(dict.fromkeys(tags))


def _qualified_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or ""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__qualname__
    return f"{module}.{name}" if module and module != "builtins" else name


def _describe_call(func_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [_short_repr(arg) for arg in args] + [f"{name}={_short_repr(value)}" for name, value in kwargs.items()]
    return f"{func_name}({', '.join(parts)})"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


def _short_repr(value: Any, limit: int = 60) -> str:
    # Large text and binary values are cut before repr(), which would otherwise copy all of them.
    if isinstance(value, (bytes, bytearray, str)) and len(value) > limit:
        value = value[:limit]
    try:
        text = _REPR.repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()

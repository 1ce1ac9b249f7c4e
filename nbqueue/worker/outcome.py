"""Recording outcomes of executions: their Results, the jobs' new status, registries and key TTLs."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from nbqueue import keys
from nbqueue.durations import DEFAULT_RESULT_TTL_S
from nbqueue.job import JobStatus
from nbqueue.results import Result, encode_fields
from nbqueue.scripts import Scripts
from nbqueue.wire import execute_packed, pack_command

log = logging.getLogger(__name__)

#: How long the worker keeps trying to record outcomes while Redis is unreachable, in seconds.
RECORD_RETRY_S = 60.0


@dataclass
class Execution:
    """One job taken by this worker, with the job fields read when it was taken."""

    job_id: str
    queue: str
    timeout_s: float
    func_name: str
    #: Job hash fields by name (raw bytes, None when absent).
    fields: dict[str, bytes | None] = field(default_factory=dict)
    #: The pickled call, or None when it is too large to pass around and the work horse reads it itself.
    payload: bytes | None = None
    #: When the job started running (epoch seconds); None while it waits in its work horse's batch.
    started_at: float | None = None

    @property
    def deadline(self) -> float | None:
        """Epoch second after which the run is killed, or None without a timeout or before the run."""
        if self.timeout_s < 0 or self.started_at is None:
            return None
        return self.started_at + self.timeout_s

    def ttl_field(self, name: str, default: int) -> int:
        raw = self.fields.get(name)
        return int(raw) if raw is not None else default


@dataclass(frozen=True)
class Outcome:
    """The product of an execution (result type, error, value, retry), ready to be recorded."""

    type: Result.Type
    exc_string: str | None = None
    #: The pickled return value: bytes, or the buffers of a large one, sent to Redis without joining.
    value_payload: bytes | list[bytes] | None = None
    #: For a retry: the delay in seconds before the next run (0 puts it back on the queue at once).
    retry_delay_s: float | None = None
    #: Job fields to update with the outcome, such as the retry counters.
    job_fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Record:
    """An outcome with the facts of its run, as passed to :func:`record_outcomes`."""

    execution: Execution
    outcome: Outcome
    worker_name: str
    started_at: float
    ended_at: float
    wrote_output: bool = False


def record_arguments(record: Record) -> list[object]:
    """Return one record's arguments for the FINISH script."""
    execution, outcome = record.execution, record.outcome
    failure_ttl = execution.ttl_field("failure_ttl", -1)
    requeue, target, score = "0", "", ""
    if outcome.type == Result.Type.SUCCESSFUL:
        status, ttl, target = JobStatus.FINISHED, execution.ttl_field("result_ttl", DEFAULT_RESULT_TTL_S), "finished"
    elif outcome.type == Result.Type.RETRIED and outcome.retry_delay_s is not None:
        # The job lives on for its next run: keep it (and its results) as long as a failure would be kept.
        status, ttl = JobStatus.QUEUED, failure_ttl or -1
        if outcome.retry_delay_s > 0:
            status, target, score = JobStatus.SCHEDULED, "scheduled", repr(record.ended_at + outcome.retry_delay_s)
        else:
            requeue = "1"
    elif outcome.type == Result.Type.STOPPED:
        status, ttl, target = JobStatus.STOPPED, failure_ttl, "failed"
    else:
        status, ttl, target = JobStatus.FAILED, failure_ttl, "failed"

    job_fields: list[object] = [
        "started_at", repr(record.started_at), "ended_at", repr(record.ended_at), "worker", record.worker_name,
    ]
    for name, value in outcome.job_fields:
        job_fields += [name, value]
    result_fields = encode_fields(
        outcome.type,
        worker_name=record.worker_name,
        started_at=record.started_at,
        ended_at=record.ended_at,
        exc_string=outcome.exc_string,
        return_value_payload=outcome.value_payload,
    )
    return [
        execution.job_id, execution.queue, status.value, ttl, target, score, requeue,
        "1" if record.wrote_output else "0",
        len(job_fields) // 2, *job_fields,
        len(result_fields) // 2, *result_fields,
    ]


def _call_finish(connection: redis.Redis, scripts: Scripts, args: list[object]) -> list[int]:
    """Run the FINISH script; a value in parts (a large return value) is sent without being joined."""
    if not any(isinstance(arg, list) for arg in args):
        return scripts.finish(args=args)
    command = pack_command("EVALSHA", scripts.finish.sha, 0, *args)
    (reply,) = execute_packed(connection, [command], 1)
    if isinstance(reply, redis.exceptions.NoScriptError) or (
        isinstance(reply, redis.ResponseError) and str(reply).startswith("NOSCRIPT")
    ):
        connection.script_load(scripts.finish.script)
        (reply,) = execute_packed(connection, [command], 1)
    if isinstance(reply, Exception):
        raise reply
    return reply


def record_outcomes(connection: redis.Redis, scripts: Scripts, records: Sequence[Record]) -> list[bool]:
    """Record outcomes in one script call; return, for each, False if its job was no longer this run's.

    Retries while Redis is unreachable, for up to ``RECORD_RETRY_S`` seconds.
    """
    if not records:
        return []
    args: list[object] = [keys.PREFIX, repr(time.time()), len(records)]
    for record in records:
        args += record_arguments(record)
    deadline = time.monotonic() + RECORD_RETRY_S
    delay_s = 0.1
    while True:
        try:
            return [bool(flag) for flag in _call_finish(connection, scripts, args)]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Cannot record the outcome of %d jobs, retrying in %.1fs: %s", len(records), delay_s, exc)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)

"""Recording the outcome of one execution: its Result, the job's new status, registries and key TTLs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis

from nbqueue import keys
from nbqueue.job import JobStatus
from nbqueue.results import Result, encode_fields
from nbqueue.scripts import Scripts

log = logging.getLogger(__name__)

#: How long a work horse or the supervisor keeps trying to record an outcome while Redis is unreachable.
RECORD_RETRY_S = 60.0


@dataclass
class Execution:
    """One run of a job on this worker."""

    job_id: str
    queue: str
    execution_id: str
    timeout_s: float
    func_name: str
    started_at: float

    @property
    def deadline(self) -> float | None:
        """Epoch second after which the run is killed, or None without a timeout."""
        return None if self.timeout_s < 0 else self.started_at + self.timeout_s


@dataclass(frozen=True)
class Outcome:
    """What an execution produced, ready to be recorded."""

    type: Result.Type
    exc_string: str | None = None
    value_payload: bytes | None = None
    #: For a retry: the delay in seconds before the next run (0 puts it back on the queue at once).
    retry_delay_s: float | None = None
    #: Job fields to update with the outcome, such as the retry counters.
    job_fields: tuple[tuple[str, str], ...] = ()


def record(
    connection: redis.Redis,
    scripts: Scripts,
    execution: Execution,
    outcome: Outcome,
    *,
    worker_name: str,
    result_ttl_s: int,
    failure_ttl_s: int,
    ended_at: float | None = None,
) -> bool:
    """Record ``outcome`` for ``execution``; return False if the job's outcome was already recorded elsewhere.

    Retries the write while Redis is unreachable, for up to ``RECORD_RETRY_S`` seconds.
    """
    ended_at = time.time() if ended_at is None else ended_at
    fields = encode_fields(
        outcome.type,
        worker_name=worker_name,
        started_at=execution.started_at,
        ended_at=ended_at,
        exc_string=outcome.exc_string,
        return_value_payload=outcome.value_payload,
    )
    target, score, requeue = "", "", ""
    if outcome.type == Result.Type.SUCCESSFUL:
        status, ttl, target = JobStatus.FINISHED, result_ttl_s, keys.finished(execution.queue)
    elif outcome.type == Result.Type.RETRIED and outcome.retry_delay_s is not None:
        status, ttl = JobStatus.QUEUED, failure_ttl_s or -1
        if outcome.retry_delay_s > 0:
            status, target, score = JobStatus.SCHEDULED, keys.scheduled(execution.queue), repr(ended_at + outcome.retry_delay_s)
        else:
            requeue = keys.queue(execution.queue)
    elif outcome.type == Result.Type.STOPPED:
        status, ttl, target = JobStatus.STOPPED, failure_ttl_s, keys.failed(execution.queue)
    else:
        status, ttl, target = JobStatus.FAILED, failure_ttl_s, keys.failed(execution.queue)

    extra: list[str] = []
    for name, value in outcome.job_fields:
        extra += [name, value]
    args = [
        execution.job_id, execution.execution_id, status.value, ttl, repr(ended_at), score, requeue,
        len(outcome.job_fields), *extra, *fields,
    ]
    job_keys = [
        keys.job(execution.job_id), keys.results(execution.job_id), keys.started(execution.queue), target,
        keys.output(execution.job_id),
    ]
    deadline = time.monotonic() + RECORD_RETRY_S
    delay_s = 0.1
    while True:
        try:
            return bool(scripts.finish(keys=job_keys, args=args))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Cannot record the outcome of job %s, retrying in %.1fs: %s", execution.job_id, delay_s, exc)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)

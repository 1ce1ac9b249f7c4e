"""Periodic work of every worker: heartbeats, moving due scheduled jobs, and failing abandoned jobs."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

import redis

from nbqueue import keys
from nbqueue.errors import AbandonedJobError
from nbqueue.results import Result
from nbqueue.scripts import Scripts
from nbqueue.worker.failures import RETRY_FIELDS, failure_outcome
from nbqueue.worker.outcome import Execution, Record, record_outcomes

log = logging.getLogger("nbqueue.worker")

#: Seconds between heartbeats of a worker holding jobs: its key's expiry and its jobs' leases are renewed.
HEARTBEAT_INTERVAL_S = 10.0
#: Seconds between heartbeats of an idle worker, which has no leases to renew.
IDLE_HEARTBEAT_INTERVAL_S = 20.0
#: Seconds a worker's key lives after its last heartbeat.
WORKER_TTL_S = 60
#: Seconds after its last heartbeat that a running job counts as abandoned.
STARTED_LEASE_S = 30.0
#: Seconds between two looks for abandoned jobs. A job is failed or retried at most
#: STARTED_LEASE_S + MAINTENANCE_INTERVAL_S (50 s) after its worker's last heartbeat.
MAINTENANCE_INTERVAL_S = 20.0
#: Maximum time between two moves of due scheduled jobs, in seconds. A worker moves them sooner when it
#: has learned that a job is due sooner: from its own delayed retries, from the earliest due time the last move saw,
#: and when enqueue_at() or enqueue_in() pushes to the scheduler wake-up list.
SCHEDULER_INTERVAL_S = 60.0
#: Milliseconds the lock on moving due jobs is held at most.
SCHEDULER_LOCK_MS = 2000
#: Due jobs moved per queue and call.
SCHEDULER_BATCH = 1000

_ABANDONED_FIELDS = ("status", "worker", "started_at", "func", "timeout", "result_ttl", "failure_ttl")


def send_heartbeat(
    connection: redis.Redis,
    worker_name: str,
    running: Sequence[Execution],
    held: Sequence[Execution],
    counters: dict[str, int],
) -> None:
    """Renew the worker key and the leases of the jobs it holds (running or waiting in a work horse)."""
    now = time.time()
    pipe = connection.pipeline(transaction=False)
    # The name and the set entry are written again so that a worker survives Redis losing its data.
    pipe.sadd(keys.WORKERS, worker_name)
    pipe.hset(keys.worker(worker_name), mapping={
        "name": worker_name,
        "last_heartbeat": repr(now),
        "state": "busy" if running else "idle",
        "current_jobs": json.dumps([execution.job_id for execution in running]),
        **counters,
    })
    pipe.expire(keys.worker(worker_name), WORKER_TTL_S)
    leases: dict[str, dict[str, float]] = {}
    for execution in held:
        leases.setdefault(execution.queue, {})[execution.job_id] = now + STARTED_LEASE_S
    for queue, members in leases.items():
        pipe.zadd(keys.started(queue), members, xx=True)
    pipe.execute()


def enqueue_due_jobs(scripts: Scripts, worker_name: str, queue_names: Sequence[str]) -> tuple[int, float | None]:
    """Move due scheduled jobs of ``queue_names`` to their queues.

    Returns the number moved and the epoch second of the next move to make: the earliest remaining due
    time, the moment another worker's lock lapses, or None when nothing is scheduled.
    """
    now = time.time()
    moved, earliest, retry_ms = scripts.enqueue_due(
        keys=[keys.SCHEDULER_LOCK],
        args=[keys.PREFIX, worker_name, SCHEDULER_LOCK_MS, repr(now), SCHEDULER_BATCH, *queue_names],
    )
    if int(retry_ms) > 0:
        return int(moved), now + int(retry_ms) / 1000
    return int(moved), float(earliest) if earliest else None


def fail_abandoned_jobs(connection: redis.Redis, scripts: Scripts, worker_name: str) -> int:
    """Record FAILED (or a retry) for every running job, on any queue, whose lease has lapsed.

    A lease lapses when the worker running the job stopped sending heartbeats: it was killed, lost its
    host, or lost Redis for longer than the lease. Returns the number of jobs handled.
    """
    now = time.time()
    queue_names = [raw.decode() for raw in connection.smembers(keys.QUEUES)]
    pipe = connection.pipeline(transaction=False)
    for name in queue_names:
        pipe.zrangebyscore(keys.started(name), "-inf", now)
    handled = 0
    for name, expired in zip(queue_names, pipe.execute()):
        for raw_id in expired:
            if _fail_abandoned(connection, scripts, worker_name, name, raw_id.decode(), now):
                handled += 1
    return handled


def _fail_abandoned(
    connection: redis.Redis, scripts: Scripts, worker_name: str, queue: str, job_id: str, now: float
) -> bool:
    names = (*_ABANDONED_FIELDS, *RETRY_FIELDS)
    pipe = connection.pipeline(transaction=False)
    pipe.hmget(keys.job(job_id), names)
    pipe.hget(keys.HOLDERS, job_id)
    values, holder = pipe.execute()
    fields = dict(zip(names, values))
    if fields["status"] is None:
        # The job expired or was deleted without its registry entry being removed: drop the entry.
        connection.zrem(keys.started(queue), job_id)
        connection.hdel(keys.HOLDERS, job_id)
        return False
    owner = (holder or fields["worker"] or b"unknown").decode()
    execution = Execution(
        job_id=job_id,
        queue=queue,
        timeout_s=float(fields["timeout"] or -1),
        func_name=(fields["func"] or b"").decode(),
        fields=fields,
    )
    exc_string = (
        f"{AbandonedJobError.__module__}.AbandonedJobError: Worker {owner} stopped sending heartbeats while it "
        f"held the job; worker {worker_name} found the job abandoned"
    )
    outcome = failure_outcome(fields, exc_string)
    started_at = float(fields["started_at"]) if fields["started_at"] else now
    (recorded,) = record_outcomes(connection, scripts, [Record(execution, outcome, owner, started_at, now, True)])
    if recorded:
        if outcome.type == Result.Type.RETRIED:
            log.warning("Job %s abandoned by worker %s: queue=%s, retried in %.1fs", job_id, owner, queue, outcome.retry_delay_s or 0)
        else:
            log.error("Job %s abandoned by worker %s: queue=%s, recorded as failed", job_id, owner, queue)
    return recorded

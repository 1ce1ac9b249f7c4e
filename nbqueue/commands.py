"""Operations on a job's lifecycle from outside the worker: stop, cancel, requeue, delete."""

from __future__ import annotations

import json
import time

import redis

from nbqueue import keys
from nbqueue.connection import connect
from nbqueue.errors import InvalidJobOperation, NoSuchJobError
from nbqueue.scripts import scripts_for

#: Seconds a command waits in a worker's command list before it is dropped (the worker is gone).
COMMAND_TTL_S = 60


def send_stop_job_command(connection: redis.Redis | str | None, job_id: str) -> None:
    """Ask the worker running ``job_id`` to kill it; the job then records a STOPPED result.

    Raises :class:`NoSuchJobError` for an unknown job and :class:`InvalidJobOperation` for a job that is
    not running.
    """
    client = connect(connection)
    status = scripts_for(client).get_status(keys=[keys.job(job_id)], args=[keys.PREFIX, job_id])
    if status is None:
        raise NoSuchJobError(f"No job with id {job_id!r}: it was never created, was deleted, or has expired")
    if status != b"started":
        raise InvalidJobOperation(
            f"Job {job_id!r} is not running (status {status.decode()}): only a started job can be stopped; "
            f"use job.cancel() for a queued or scheduled job"
        )
    worker = client.hget(keys.HOLDERS, job_id)
    if worker is None:
        raise InvalidJobOperation(f"Job {job_id!r} just ended: there is nothing left to stop")
    command = json.dumps({"command": "stop-job", "job_id": job_id})
    pipe = client.pipeline(transaction=False)
    pipe.rpush(keys.worker_commands(worker.decode()), command)
    pipe.expire(keys.worker_commands(worker.decode()), COMMAND_TTL_S)
    pipe.execute()


def cancel_job(connection: redis.Redis, job_id: str, queue: str) -> None:
    """Remove a queued or scheduled job from its queue into the canceled registry."""
    before = scripts_for(connection).cancel(
        keys=[keys.job(job_id), keys.queue(queue), keys.scheduled(queue), keys.canceled(queue), keys.started(queue)],
        args=[job_id, repr(time.time())],
    )
    if before is None:
        raise NoSuchJobError(f"No job with id {job_id!r}: it was never created, was deleted, or has expired")
    if before not in (b"queued", b"scheduled"):
        raise InvalidJobOperation(
            f"Job {job_id!r} cannot be canceled (status {before.decode()}): only queued or scheduled jobs can; "
            f"use job.stop() for a running job"
        )


def requeue_job(connection: redis.Redis, job_id: str, queue: str, at_front: bool = False) -> None:
    """Put a failed, stopped or canceled job back on its queue."""
    before = scripts_for(connection).requeue(
        keys=[keys.job(job_id), keys.queue(queue), keys.failed(queue), keys.canceled(queue), keys.results(job_id)],
        args=[job_id, repr(time.time()), "1" if at_front else "0"],
    )
    if before is None:
        raise NoSuchJobError(f"No job with id {job_id!r}: it was never created, was deleted, or has expired")
    if before not in (b"failed", b"stopped", b"canceled"):
        raise InvalidJobOperation(
            f"Job {job_id!r} cannot be requeued (status {before.decode()}): only failed, stopped or canceled jobs can"
        )


def delete_job(connection: redis.Redis, job_id: str, queue: str) -> None:
    """Delete a job, its results and its place in its queue and registries."""
    pipe = connection.pipeline(transaction=True)
    pipe.delete(keys.job(job_id), keys.results(job_id), keys.output(job_id))
    pipe.lrem(keys.queue(queue), 0, job_id)
    for registry_key in (keys.started, keys.finished, keys.failed, keys.scheduled, keys.canceled):
        pipe.zrem(registry_key(queue), job_id)
    pipe.execute()

"""Finding jobs again: by notebook session tag, queue and status."""

from __future__ import annotations

import redis

from nbqueue import keys
from nbqueue.connection import connect
from nbqueue.job import Job, JobStatus
from nbqueue.session import session_tag
from nbqueue.settings import load_settings

#: Tag value meaning "the notebook this process runs".
CURRENT_SESSION = "__session__"


def jobs(
    queue: str | None = None,
    status: JobStatus | str | None = None,
    tag: str | None = CURRENT_SESSION,
    limit: int = 50,
    connection: redis.Redis | str | None = None,
) -> list[Job]:
    """Return jobs newest first, at most ``limit``, filtered by queue, status and tag.

    By default ``tag`` is the current notebook's tag, so after a kernel restart ``nbqueue.jobs()`` lists
    the jobs this notebook submitted. Pass ``tag=None`` for jobs with any tag or none, from the queues'
    lists and registries.
    """
    client = connect(connection)
    if tag == CURRENT_SESSION:
        tag = session_tag(load_settings())
    wanted_status = JobStatus(status) if status is not None else None

    if tag is not None:
        ids = [raw.decode() for raw in client.zrevrange(keys.tag(tag), 0, -1)]
    else:
        ids = _ids_from_queues(client, queue)
    found: list[Job] = []
    missing: list[str] = []
    # Fetch in pages, since filters may drop many ids.
    for start in range(0, len(ids), 200):
        page = ids[start : start + 200]
        for job_id, job in zip(page, Job.fetch_many(page, client)):
            if job is None:
                missing.append(job_id)
                continue
            if queue is not None and job.origin != queue:
                continue
            if wanted_status is not None and job.get_status(refresh=False) != wanted_status:
                continue
            found.append(job)
            if len(found) >= limit:
                break
        if len(found) >= limit:
            break
    if tag is not None and missing:
        client.zrem(keys.tag(tag), *missing)  # expired or deleted jobs
    return found


def _ids_from_queues(client: redis.Redis, queue: str | None) -> list[str]:
    names = [queue] if queue is not None else sorted(raw.decode() for raw in client.smembers(keys.QUEUES))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.lrange(keys.queue(name), 0, -1)
        for registry in (keys.started, keys.scheduled, keys.finished, keys.failed, keys.canceled):
            pipe.zrange(registry(name), 0, -1)
    ids = dict.fromkeys(raw.decode() for group in pipe.execute() for raw in group)
    jobs_found = [job for job in Job.fetch_many(list(ids), client) if job is not None]
    jobs_found.sort(key=lambda job: job.enqueued_at.timestamp() if job.enqueued_at else 0.0, reverse=True)
    return [job.id for job in jobs_found]

"""Every Redis key name nbqueue uses, in one place.

Job ids and queue names are arbitrary text; they are encoded as UTF-8 and appended to a fixed prefix, so
any character, ``:`` included, is safe in them.
"""

from __future__ import annotations

PREFIX = "nbqueue:"

#: Set of the names of all queues that ever had a job.
QUEUES = PREFIX + "queues"
#: Set of the names of live workers.
WORKERS = PREFIX + "workers"
#: Hash from the id of each job a worker has taken (and not yet recorded) to that worker's name.
HOLDERS = PREFIX + "holders"


def job(job_id: str) -> str:
    """Hash of one job's fields (status, payload, options, times)."""
    return f"{PREFIX}job:{job_id}"


def results(job_id: str) -> str:
    """Stream of one job's results, newest last, trimmed to the 10 latest."""
    return f"{PREFIX}results:{job_id}"


def output(job_id: str) -> str:
    """Stream of one job's captured stdout, stderr and displayed objects, oldest first, bounded."""
    return f"{PREFIX}output:{job_id}"


def tag(name: str) -> str:
    """Sorted set of the ids of jobs with a tag, scored by enqueue time."""
    return f"{PREFIX}tag:{name}"


def queue(name: str) -> str:
    """List of the ids of the jobs waiting in a queue, head first."""
    return f"{PREFIX}queue:{name}"


def started(queue_name: str) -> str:
    """Sorted set of running job ids, scored by the time their worker's heartbeat lapses."""
    return f"{PREFIX}started:{queue_name}"


def finished(queue_name: str) -> str:
    """Sorted set of finished job ids, scored by the time they expire (``inf`` for never)."""
    return f"{PREFIX}finished:{queue_name}"


def failed(queue_name: str) -> str:
    """Sorted set of failed job ids, scored by the time they expire (``inf`` for never)."""
    return f"{PREFIX}failed:{queue_name}"


def scheduled(queue_name: str) -> str:
    """Sorted set of job ids waiting to be queued, scored by the time they are due."""
    return f"{PREFIX}scheduled:{queue_name}"


def canceled(queue_name: str) -> str:
    """Sorted set of canceled job ids, scored by the time they were canceled."""
    return f"{PREFIX}canceled:{queue_name}"


def worker(name: str) -> str:
    """Hash of one worker's state, counters and current jobs."""
    return f"{PREFIX}worker:{name}"


def worker_commands(name: str) -> str:
    """List of JSON commands for one worker, such as stopping a job it runs."""
    return f"{PREFIX}worker:{name}:commands"


#: String naming the worker moving due scheduled jobs right now; it expires within seconds.
SCHEDULER_LOCK = PREFIX + "scheduler-lock"
#: List that enqueue_at() and enqueue_in() push to, waking a worker to look at the scheduled registries.
SCHEDULER_WAKE = PREFIX + "scheduler-wake"

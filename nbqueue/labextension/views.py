"""JSON-ready views of queues, workers and jobs for the JupyterLab side panel's REST handlers.

Nothing here imports jupyter_server or tornado, so the views can be called and tested on their own.
Times are epoch seconds (floats); the browser formats them in the user's time zone.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from nbqueue import keys
from nbqueue.errors import InvalidOptionError
from nbqueue.job import Job, JobStatus
from nbqueue.query import jobs as find_jobs
from nbqueue.results import Result

#: Registry and list counts reported per queue, in display order. Stopped jobs live in the failed registry.
QUEUE_STATES = ("queued", "started", "scheduled", "finished", "failed", "canceled")
#: Worker hash fields read for each worker.
WORKER_FIELDS = (
    "state", "current_jobs", "finished", "failed", "stopped", "retried", "last_heartbeat",
    "hostname", "pid", "queues", "concurrency", "birth",
)
#: Largest page of jobs one request may ask for.
MAX_PAGE_SIZE = 500
#: Output stream entries returned with one job, the newest ones; older entries are counted, not sent.
MAX_OUTPUT_ENTRIES = 500
#: Maximum length of the repr of a return value or meta value sent to the browser, in characters.
MAX_REPR_CHARS = 4000
#: Job hash fields that record where a job was submitted from (see nbqueue.provenance), in display order.
PROVENANCE_FIELDS = ("notebook_path", "cell_id", "cell_source_hash")
#: Actions the panel may run on a job, each the name of a :class:`Job` method.
ACTIONS = ("stop", "cancel", "requeue", "delete")

_REGISTRIES = {
    "started": keys.started, "scheduled": keys.scheduled, "finished": keys.finished,
    "failed": keys.failed, "canceled": keys.canceled,
}
# Registries scored by expiry time: members whose score has passed count as gone.
_EXPIRING = frozenset({"finished", "failed"})


def queue_counts(client: redis.Redis) -> list[dict[str, Any]]:
    """Return each queue's name and its number of jobs per state, sorted by name, in two round trips."""
    names = sorted(raw.decode() for raw in client.smembers(keys.QUEUES))
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.llen(keys.queue(name))
        for state, key_for in _REGISTRIES.items():
            if state in _EXPIRING:
                pipe.zcount(key_for(name), f"({now}", "+inf")
            else:
                pipe.zcard(key_for(name))
    replies = iter(pipe.execute())
    return [{"name": name, "counts": {state: next(replies) for state in QUEUE_STATES}} for name in names]


def worker_rows(client: redis.Redis) -> list[dict[str, Any]]:
    """Return one row per live worker, sorted by name, with its heartbeat age in seconds."""
    names = sorted(raw.decode() for raw in client.smembers(keys.WORKERS))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(keys.worker(name), WORKER_FIELDS)
    now = time.time()
    rows = []
    for name, values in zip(names, pipe.execute()):
        if all(value is None for value in values):
            continue  # the worker's hash expired after its name was read
        fields = {field: value.decode(errors="replace") for field, value in zip(WORKER_FIELDS, values) if value}
        last_heartbeat = _float(fields.get("last_heartbeat"))
        rows.append({
            "name": name,
            "state": fields.get("state", ""),
            "current_jobs": _json_list(fields.get("current_jobs")),
            "queues": _json_list(fields.get("queues")),
            "hostname": fields.get("hostname", ""),
            "pid": _int(fields.get("pid")),
            "concurrency": _int(fields.get("concurrency")),
            "birth": _float(fields.get("birth")),
            "finished": _int(fields.get("finished")) or 0,
            "failed": _int(fields.get("failed")) or 0,
            "stopped": _int(fields.get("stopped")) or 0,
            "retried": _int(fields.get("retried")) or 0,
            "last_heartbeat": last_heartbeat,
            "heartbeat_age_s": max(0.0, now - last_heartbeat) if last_heartbeat is not None else None,
        })
    return rows


def job_page(
    client: redis.Redis,
    *,
    queue: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> dict[str, Any]:
    """Return one page of jobs, newest first, filtered by queue, status and tag.

    ``has_more`` is True when a next page exists. Raises :class:`InvalidOptionError` for a status that is
    not a :class:`JobStatus` value or an offset or limit out of range.
    """
    if status is not None and status not in {member.value for member in JobStatus}:
        names = ", ".join(member.value for member in JobStatus)
        raise InvalidOptionError(f"status={status!r} is invalid: use one of {names}")
    if offset < 0:
        raise InvalidOptionError(f"offset={offset} is invalid: use 0 or more")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidOptionError(f"limit={limit} is invalid: use 1 to {MAX_PAGE_SIZE}")

    # NOTE: nbqueue.jobs reads the ids of every job in the matching queues (or tag) and their fields on
    # each call, so a request costs time in proportion to all kept jobs, not to the page size.
    found = find_jobs(queue=queue, status=status, tag=tag, limit=offset + limit + 1, connection=client)
    page = found[offset : offset + limit]
    return {
        "jobs": [job_summary(job) for job in page],
        "offset": offset,
        "limit": limit,
        "has_more": len(found) > offset + limit,
    }


def job_summary(job: Job) -> dict[str, Any]:
    """Return the fields of a job that the jobs table shows."""
    progress = job.progress
    return {
        "id": job.id,
        "status": job.get_status(refresh=False).value,
        "queue": job.origin,
        "func": job.func_name,
        "description": job.description,
        "worker": job.worker_name,
        "tags": job.tags,
        "enqueued_at": _epoch(job.enqueued_at),
        "started_at": _epoch(job.started_at),
        "ended_at": _epoch(job.ended_at),
        "progress": None if progress is None else {
            "done": progress[0], "total": progress[1], "message": progress[2],
        },
    }


def job_detail(client: redis.Redis, job_id: str) -> dict[str, Any]:
    """Return everything the job detail view shows: fields, result history, output and traceback.

    Raises :class:`NoSuchJobError` when the job does not exist.
    """
    job = Job.fetch(job_id, connection=client)
    results = job.results()
    pipe = client.pipeline(transaction=False)
    pipe.xrevrange(keys.output(job_id), count=MAX_OUTPUT_ENTRIES)
    pipe.xlen(keys.output(job_id))
    pipe.hmget(keys.job(job_id), PROVENANCE_FIELDS)
    output_entries, output_length, provenance = pipe.execute()

    traceback = next(
        (result.exc_string for result in results if result.exc_string and result.type != Result.Type.SUCCESSFUL),
        None,
    )
    return {
        **job_summary(job),
        "created_at": _epoch(job.created_at),
        "timeout": job.timeout,
        "result_ttl": job.result_ttl,
        "failure_ttl": job.failure_ttl,
        "ttl": job.ttl,
        "retries_left": job.retries_left,
        "meta": _meta_repr(job),
        "results": [_result_row(result) for result in results],
        "traceback": traceback,
        "output": [_output_entry(fields) for _, fields in reversed(output_entries)],
        "output_omitted": max(0, output_length - len(output_entries)),
        "provenance": _provenance(provenance),
    }


def run_action(client: redis.Redis, job_id: str, action: str) -> dict[str, Any]:
    """Run ``stop``, ``cancel``, ``requeue`` or ``delete`` on a job and return what was done.

    Raises :class:`NoSuchJobError` for a missing job, :class:`InvalidJobOperation` when the job's state
    does not allow the action, and :class:`InvalidOptionError` for an unknown action.
    """
    if action not in ACTIONS:
        raise InvalidOptionError(f"action={action!r} is invalid: use one of {', '.join(ACTIONS)}")
    job = Job.fetch(job_id, connection=client)
    getattr(job, action)()
    if action == "delete":
        return {"id": job_id, "action": action, "status": None}
    # A stop takes effect when the worker has killed the job, so its status may still read "started".
    return {"id": job_id, "action": action, "status": job.get_status().value}


def _result_row(result: Result) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": result.id,
        "type": result.type.name,
        "created_at": _epoch(result.created_at),
        "started_at": _epoch(result.started_at),
        "ended_at": _epoch(result.ended_at),
        "duration_s": result.duration_s,
        "worker": result.worker_name,
        "exc_string": result.exc_string,
        "return_value": None,
        "return_value_error": None,
    }
    if result.type == Result.Type.SUCCESSFUL:
        # Unpickling runs the job's code in this process, as job.return_value() does in a kernel, and checks
        # the HMAC signature first when NBQUEUE_SECRET_KEY is set.
        try:
            row["return_value"] = _short_repr(result.return_value)
        except Exception as exc:  # noqa: BLE001 - any unpickling error is shown to the user, not raised
            row["return_value_error"] = f"{type(exc).__name__}: {exc}"
    return row


def _output_entry(fields: dict[bytes, bytes]) -> dict[str, Any]:
    kind = fields.get(b"kind", b"").decode()
    if kind == "stream":
        return {
            "kind": "stream",
            "name": fields.get(b"name", b"stdout").decode(),
            "text": fields.get(b"text", b"").decode(errors="replace"),
        }
    try:
        data = json.loads(fields.get(b"data", b"{}"))
    except ValueError:
        data = {}
    # Only plain text and images go to the browser: HTML and JavaScript from a job are not rendered there.
    sent = {mime: value for mime, value in data.items() if mime in ("text/plain", "image/png", "image/jpeg")}
    return {"kind": "display", "data": sent}


def _meta_repr(job: Job) -> dict[str, str] | str | None:
    try:
        meta = job.meta
    except Exception as exc:  # noqa: BLE001 - unreadable meta is reported, the rest of the job still shows
        return f"<meta could not be read: {type(exc).__name__}: {exc}>"
    return {str(name): _short_repr(value) for name, value in meta.items()} if meta else None


def _provenance(values: list[bytes | None]) -> dict[str, str] | None:
    fields = {name: value.decode(errors="replace") for name, value in zip(PROVENANCE_FIELDS, values) if value}
    return fields or None


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not break the view
        text = f"<{type(value).__name__}: repr failed: {exc}>"
    return text if len(text) <= MAX_REPR_CHARS else text[: MAX_REPR_CHARS - 3] + "..."


def _epoch(value: Any) -> float | None:
    return value.timestamp() if value is not None else None


def _float(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def _int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def _json_list(raw: str | None) -> list[Any]:
    try:
        value = json.loads(raw) if raw else []
    except ValueError:
        return []
    return value if isinstance(value, list) else []

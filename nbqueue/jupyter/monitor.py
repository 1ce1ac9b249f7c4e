"""A live dashboard of queues, workers and recent jobs, with Stop, Requeue and Cancel on a selected job.

The monitor reads Redis on each tick of the widget refresher, in three pipelined round trips: the names
of queues and workers, then counts, worker hashes and candidate job ids, then the fields of those jobs.
"""

from __future__ import annotations

import html
import json
import threading
import time
from datetime import datetime, timezone
from typing import Any

import ipywidgets
import redis
from traitlets import Dict, List, Unicode

from nbqueue import keys
from nbqueue.connection import connect
from nbqueue.errors import NbqueueError
from nbqueue.job import Job
from nbqueue.jupyter.refresher import get_refresher

#: Job states counted per queue, in the order shown.
COUNTED_STATES = ("queued", "started", "scheduled", "finished", "failed", "canceled")
#: Worker hash fields shown, in this order.
WORKER_FIELDS = ("state", "current_jobs", "finished", "failed", "last_heartbeat")
#: Job fields shown in the list of recent jobs.
JOB_FIELDS = ("status", "queue", "description", "func", "enqueued_at", "started_at", "ended_at")

_REGISTRY_KEYS = {
    "started": keys.started, "scheduled": keys.scheduled, "finished": keys.finished,
    "failed": keys.failed, "canceled": keys.canceled,
}
# Registries scored by expiry time, whose members past that time are gone for readers.
_EXPIRING = frozenset({"finished", "failed"})


class Monitor(ipywidgets.VBox):
    """A live view of every queue, worker and recent job on one Redis server."""

    queues = Dict(help="Counts per queue: queue name to a dict of COUNTED_STATES to numbers of jobs.")
    workers = List(Dict(), help="One dict per worker: name, then the WORKER_FIELDS, current_jobs as a list.")
    jobs = List(Dict(), help="Recent jobs, newest first: id, status, queue, description and times (epoch s).")
    message = Unicode(help="Outcome of the latest button action, or ''.")

    def __init__(self, connection: redis.Redis | str | None = None, limit: int = 20, **kwargs: Any):
        self.connection = connect(connection)
        self.limit = limit
        self._actions_lock = threading.Lock()

        self.queues_html = ipywidgets.HTML()
        self.workers_html = ipywidgets.HTML()
        self.jobs_select = ipywidgets.Select(options=[], rows=8, layout={"width": "95%"})
        self.stop_button = ipywidgets.Button(description="Stop", icon="stop", tooltip="Kill the selected running job")
        self.requeue_button = ipywidgets.Button(description="Requeue", icon="redo",
                                                tooltip="Put the selected failed, stopped or canceled job back")
        self.cancel_button = ipywidgets.Button(description="Cancel", icon="times",
                                               tooltip="Remove the selected queued or scheduled job from its queue")
        self.message_html = ipywidgets.HTML()
        for child, name in ((self.queues_html, "queues"), (self.workers_html, "workers"),
                            (self.jobs_select, "jobs"), (self.message_html, "message")):
            child.add_class(f"nbqueue-monitor-{name}")

        self.stop_button.on_click(self._on_stop)
        self.requeue_button.on_click(self._on_requeue)
        self.cancel_button.on_click(self._on_cancel)

        super().__init__(
            children=[
                ipywidgets.HTML("<b>Queues</b>"), self.queues_html,
                ipywidgets.HTML("<b>Workers</b>"), self.workers_html,
                ipywidgets.HTML("<b>Recent jobs</b>"), self.jobs_select,
                ipywidgets.HBox([self.stop_button, self.requeue_button, self.cancel_button, self.message_html]),
            ],
            **kwargs,
        )
        self.add_class("nbqueue-monitor")
        self.poll()
        get_refresher().register_polled(self)

    # Reading

    def poll(self) -> bool:
        """Read queues, workers and recent jobs from Redis and update the widget; return True if anything changed."""
        pipe = self.connection.pipeline(transaction=False)
        pipe.smembers(keys.QUEUES)
        pipe.smembers(keys.WORKERS)
        queue_names, worker_names = (sorted(raw.decode() for raw in group) for group in pipe.execute())

        now = time.time()
        pipe = self.connection.pipeline(transaction=False)
        for name in queue_names:
            pipe.llen(keys.queue(name))
            for state, key_for in _REGISTRY_KEYS.items():
                if state in _EXPIRING:
                    pipe.zcount(key_for(name), f"({now}", "+inf")
                else:
                    pipe.zcard(key_for(name))
        for name in worker_names:
            pipe.hmget(keys.worker(name), WORKER_FIELDS)
        for name in queue_names:
            pipe.lrange(keys.queue(name), -self.limit, -1)
            for key_for in _REGISTRY_KEYS.values():
                pipe.zrevrange(key_for(name), 0, self.limit - 1)
        replies = iter(pipe.execute())

        queues = {name: dict(zip(COUNTED_STATES, (next(replies) for _ in COUNTED_STATES))) for name in queue_names}
        worker_rows = [_worker_row(name, next(replies)) for name in worker_names]
        workers = [row for row in worker_rows if row is not None]
        candidate_ids: dict[str, None] = {}
        for _ in queue_names:
            for _ in range(1 + len(_REGISTRY_KEYS)):
                candidate_ids.update(dict.fromkeys(raw.decode() for raw in next(replies)))
        jobs = self._read_jobs(list(candidate_ids))

        changed = (queues, workers, jobs) != (self.queues, self.workers, self.jobs)
        if changed:
            self._show(queues, workers, jobs)
        return changed

    def _read_jobs(self, job_ids: list[str]) -> list[dict[str, Any]]:
        if not job_ids:
            return []
        pipe = self.connection.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(keys.job(job_id), JOB_FIELDS)
        rows = []
        for job_id, values in zip(job_ids, pipe.execute()):
            if values[0] is None:
                continue
            fields = {name: value.decode(errors="replace") for name, value in zip(JOB_FIELDS, values) if value}
            rows.append({
                "id": job_id,
                "status": fields["status"],
                "queue": fields.get("queue", ""),
                "description": fields.get("description") or fields.get("func", ""),
                **{name: float(fields[name]) if name in fields else None
                   for name in ("enqueued_at", "started_at", "ended_at")},
            })
        rows.sort(key=lambda row: max(row["enqueued_at"] or 0, row["started_at"] or 0, row["ended_at"] or 0),
                  reverse=True)
        return rows[: self.limit]

    # Rendering

    def _show(self, queues: dict[str, dict[str, int]], workers: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> None:
        # The list of jobs to select from changes first, so that code watching the traits below can
        # select any job they list.
        selected = self.jobs_select.value
        self.jobs_select.options = [(_job_label(job), job["id"]) for job in jobs]
        if selected in {job["id"] for job in jobs}:
            self.jobs_select.value = selected
        self.queues_html.value = _queues_html(queues)
        self.workers_html.value = _workers_html(workers)
        with self.hold_sync():
            self.queues, self.workers, self.jobs = queues, workers, jobs

    # Actions

    def _on_stop(self, _button: Any) -> None:
        self._act("stop", lambda job: job.stop(), "Stop requested for")

    def _on_requeue(self, _button: Any) -> None:
        self._act("requeue", lambda job: job.requeue(), "Requeued")

    def _on_cancel(self, _button: Any) -> None:
        self._act("cancel", lambda job: job.cancel(), "Canceled")

    def _act(self, action: str, call: Any, done_message: str) -> None:
        job_id = self.jobs_select.value
        with self._actions_lock:
            if not job_id:
                self.message = f"Select a job in the list to {action} it."
            else:
                try:
                    call(Job(job_id, self.connection))
                except (NbqueueError, redis.RedisError) as exc:
                    self.message = f"Could not {action} job {job_id}: {exc}"
                else:
                    self.message = f"{done_message} job {job_id}."
        self.message_html.value = html.escape(self.message)
        get_refresher().wake()


def monitor(connection: redis.Redis | str | None = None, limit: int = 20) -> Monitor:
    """Return a live monitor of the queues, workers and ``limit`` most recent jobs on the Redis server."""
    return Monitor(connection, limit=limit)


def _worker_row(name: str, values: list[bytes | None]) -> dict[str, Any] | None:
    if all(value is None for value in values):
        return None  # the worker's key expired after its name was read
    fields = {field: value.decode(errors="replace") for field, value in zip(WORKER_FIELDS, values) if value is not None}
    try:
        current_jobs = json.loads(fields.get("current_jobs", "[]"))
    except ValueError:
        current_jobs = []
    return {
        "name": name,
        "state": fields.get("state", ""),
        "current_jobs": current_jobs,
        "finished": int(fields.get("finished", 0)),
        "failed": int(fields.get("failed", 0)),
        "last_heartbeat": float(fields["last_heartbeat"]) if "last_heartbeat" in fields else None,
    }


def _queues_html(queues: dict[str, dict[str, int]]) -> str:
    if not queues:
        return '<span style="color:#757575">No queues yet.</span>'
    header = "".join(f'<th style="text-align:right;padding:0 6px">{state}</th>' for state in COUNTED_STATES)
    rows = "".join(
        f'<tr><td style="text-align:left"><code>{html.escape(name)}</code></td>'
        + "".join(f'<td style="text-align:right;padding:0 6px">{counts[state]}</td>' for state in COUNTED_STATES)
        + "</tr>"
        for name, counts in queues.items()
    )
    return f'<table><tr><th style="text-align:left">queue</th>{header}</tr>{rows}</table>'


def _workers_html(workers: list[dict[str, Any]]) -> str:
    if not workers:
        return '<span style="color:#757575">No workers running.</span>'
    rows = []
    for worker in workers:
        beat = worker["last_heartbeat"]
        beat_text = datetime.fromtimestamp(beat, tz=timezone.utc).strftime("%H:%M:%S UTC") if beat else ""
        rows.append(
            f'<tr><td style="text-align:left"><code>{html.escape(worker["name"])}</code></td>'
            f'<td style="text-align:left">{html.escape(worker["state"])}</td>'
            f'<td style="text-align:left">{html.escape(", ".join(map(str, worker["current_jobs"])))}</td>'
            f'<td style="text-align:right">{worker["finished"]}</td><td style="text-align:right">{worker["failed"]}</td>'
            f'<td style="text-align:left">{beat_text}</td></tr>'
        )
    return (
        '<table><tr><th style="text-align:left">worker</th><th style="text-align:left">state</th>'
        '<th style="text-align:left">current jobs</th><th>finished</th><th>failed</th>'
        f'<th style="text-align:left">last heartbeat</th></tr>{"".join(rows)}</table>'
    )


def _job_label(job: dict[str, Any]) -> str:
    return f"[{job['status']}] {job['id']}  {job['queue']}  {job['description'][:60]}"


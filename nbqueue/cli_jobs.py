"""``nbqueue info``, ``requeue``, ``empty`` and ``stop``: look at and act on queues and jobs."""

from __future__ import annotations

import json
import time

import click
import redis

from nbqueue import keys
from nbqueue.connection import connect
from nbqueue.errors import NbqueueError
from nbqueue.job import Job
from nbqueue.queue import Queue

url_option = click.option(
    "--url", envvar="NBQUEUE_REDIS_URL", help="Redis URL (default: NBQUEUE_REDIS_URL, else the embedded server)."
)


def _connect(url: str | None) -> redis.Redis:
    try:
        return connect(url)
    except NbqueueError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@url_option
@click.argument("job_id", required=False)
def info(url: str | None, job_id: str | None) -> None:
    """Show queues with their job counts per state, and workers with their state and current jobs.

    With JOB_ID, show that job instead: its state, its latest result, and where it was submitted from.
    """
    connection = _connect(url)
    if job_id is not None:
        _show_job(connection, job_id)
        return
    queues = Queue.all(connection)
    click.echo(f"{'queue':<20} {'queued':>7} {'started':>8} {'scheduled':>10} {'finished':>9} {'failed':>7} {'canceled':>9}")
    for queue in queues:
        click.echo(
            f"{queue.name:<20} {queue.count:>7} {len(queue.started_job_registry):>8} "
            f"{len(queue.scheduled_job_registry):>10} {len(queue.finished_job_registry):>9} "
            f"{len(queue.failed_job_registry):>7} {len(queue.canceled_job_registry):>9}"
        )
    if not queues:
        click.echo("(no queues)")

    click.echo()
    names = sorted(raw.decode() for raw in connection.smembers(keys.WORKERS))
    pipe = connection.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.worker(name))
    click.echo(f"{'worker':<30} {'state':<6} {'finished':>9} {'failed':>7} {'heartbeat':>10}  current jobs")
    shown = 0
    for name, fields in zip(names, pipe.execute()):
        if not fields:
            continue  # the worker's key expired: it died without unregistering
        shown += 1
        state = fields.get(b"state", b"?").decode()
        age_s = time.time() - float(fields.get(b"last_heartbeat", b"0"))
        current = ", ".join(json.loads(fields.get(b"current_jobs", b"[]"))) or "-"
        click.echo(
            f"{name:<30} {state:<6} {int(fields.get(b'finished', 0)):>9} {int(fields.get(b'failed', 0)):>7} "
            f"{age_s:>9.0f}s  {current}"
        )
    if not shown:
        click.echo("(no workers)")


def _show_job(connection: redis.Redis, job_id: str) -> None:
    try:
        job = Job.fetch(job_id, connection)
        result = job.latest_result()
    except NbqueueError as exc:
        raise click.ClickException(str(exc)) from exc
    rows = [
        ("job", job.id),
        ("status", job.get_status(refresh=False).value),
        ("queue", job.origin),
        ("description", job.description),
        ("worker", job.worker_name),
        ("enqueued at", job.enqueued_at.isoformat() if job.enqueued_at else None),
        ("ended at", job.ended_at.isoformat() if job.ended_at else None),
        ("notebook", job.notebook_path),
        ("cell id", job.cell_id),
        ("cell source", job.cell_source_hash),
        ("result", result.type.name if result is not None else None),
    ]
    for label, value in rows:
        if value is not None:
            click.echo(f"{label + ':':<13}{value}")
    if job.is_notebook_job and result is not None:
        click.echo(f"{'notebook out:':<13}nbqueue fetch {job.id} -o OUT.ipynb")
    if result is not None and result.exc_string:
        click.echo()
        click.echo(result.exc_string.rstrip())


@click.command()
@url_option
@click.option("--all", "all_jobs", is_flag=True, help="Requeue every failed job.")
@click.option("--queue", "-q", "queue_names", multiple=True, help="With --all: only these queues.")
@click.argument("job_ids", nargs=-1)
def requeue(url: str | None, all_jobs: bool, queue_names: tuple[str, ...], job_ids: tuple[str, ...]) -> None:
    """Put failed or stopped jobs back on their queues: JOB_IDs, or --all."""
    if all_jobs == bool(job_ids):
        raise click.UsageError("Give job ids or --all, not both and not neither")
    connection = _connect(url)
    ids = list(job_ids)
    if all_jobs:
        queues = [Queue(name, connection) for name in queue_names] or Queue.all(connection)
        for queue in queues:
            ids += queue.failed_job_registry.get_job_ids()
    failures = 0
    for job_id in ids:
        try:
            Job.fetch(job_id, connection).requeue()
            click.echo(f"Requeued {job_id}")
        except NbqueueError as exc:
            failures += 1
            click.echo(f"Not requeued: {exc}", err=True)
    click.echo(f"{len(ids) - failures} of {len(ids)} jobs requeued")
    if failures:
        raise SystemExit(1)


@click.command()
@url_option
@click.argument("queue_name")
def empty(url: str | None, queue_name: str) -> None:
    """Delete every job waiting in QUEUE_NAME."""
    removed = Queue(queue_name, _connect(url)).empty()
    click.echo(f"Removed {removed} jobs from queue {queue_name}")


@click.command()
@url_option
@click.argument("job_id")
def stop(url: str | None, job_id: str) -> None:
    """Kill the running job JOB_ID on its worker; it records a STOPPED result."""
    try:
        Job.fetch(job_id, _connect(url)).stop()
    except NbqueueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Stop requested for job {job_id}")

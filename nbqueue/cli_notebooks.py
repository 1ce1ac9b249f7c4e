"""``nbqueue submit`` and ``nbqueue fetch``: run a notebook as a job and download the executed notebook."""

from __future__ import annotations

import json
from pathlib import Path

import click

from nbqueue.cli_jobs import _connect, url_option
from nbqueue.errors import NbqueueError
from nbqueue.job import Job
from nbqueue.notebooks import parse_parameter
from nbqueue.queue import Queue
from nbqueue.results import Result


@click.command()
@url_option
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--parameter", "-p", "parameters", multiple=True, metavar="NAME=VALUE",
    help="Set a parameter; VALUE is read as a Python literal if it is one, else as a str. Repeatable.",
)
@click.option("--queue", "-q", "queue_name", default="default", show_default=True, help="Queue to put the job on.")
@click.option("--timeout", "-t", "job_timeout", help='Job timeout: seconds, or a string like "10m"; -1 for none.')
@click.option("--kernel", "kernel_name", help="Kernel name (default: the notebook's kernelspec, else python3).")
@click.option("--cwd", help="Folder the kernel runs in on the worker (default: the notebook's folder).")
def submit(
    url: str | None,
    notebook: str,
    parameters: tuple[str, ...],
    queue_name: str,
    job_timeout: str | None,
    kernel_name: str | None,
    cwd: str | None,
) -> None:
    """Run NOTEBOOK as a job on a worker and print the job id."""
    try:
        values = dict(parse_parameter(text) for text in parameters)
        job = Queue(queue_name, _connect(url)).enqueue_notebook(
            notebook, parameters=values, kernel_name=kernel_name, cwd=cwd, job_timeout=job_timeout
        )
    except NbqueueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(job.id)


@click.command()
@url_option
@click.argument("job_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="File to write (default: JOB_ID.ipynb).")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0, help="Seconds to wait for the job to end.")
def fetch(url: str | None, job_id: str, output: str | None, wait_s: float) -> None:
    """Write the executed notebook of notebook job JOB_ID to a file.

    After a failed cell, the notebook as far as it ran is written, and the exit status is 1.
    """
    try:
        job = Job.fetch(job_id, _connect(url))
        if not job.is_notebook_job:
            raise click.ClickException(f"Job {job_id} is not a notebook job: its function is {job.func_name}")
        result = job.latest_result(timeout=wait_s) if wait_s else job.latest_result()
        notebook = job.executed_notebook()
    except NbqueueError as exc:
        raise click.ClickException(str(exc)) from exc
    if notebook is None:
        status = job.get_status()
        raise click.ClickException(
            f"Job {job_id} has no executed notebook yet (status {status}): wait for it with --wait SECONDS"
        )

    path = Path(output or f"{job_id}.ipynb")
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if result is not None and result.type == Result.Type.SUCCESSFUL:
        click.echo(f"Wrote the executed notebook of job {job_id} to {path}")
        return
    click.echo(f"Job {job_id} failed; wrote the notebook as far as it ran to {path}", err=True)
    if result is not None and result.exc_string:
        click.echo(result.exc_string.splitlines()[0], err=True)
    raise SystemExit(1)


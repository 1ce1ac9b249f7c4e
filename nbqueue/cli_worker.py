"""``nbqueue worker``: run jobs from queues."""

from __future__ import annotations

import logging
import sys

import click

from nbqueue.connection import connect
from nbqueue.errors import NbqueueError


@click.command()
@click.argument("queues", nargs=-1)
@click.option("--url", envvar="NBQUEUE_REDIS_URL", help="Redis URL (default: NBQUEUE_REDIS_URL, else the embedded server).")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty instead of waiting for jobs.")
@click.option("--name", help="Worker name, unique on the Redis server (default: HOSTNAME.PID).")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=1, show_default=True, help="Jobs run at the same time.")
@click.option(
    "--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), default="INFO",
    show_default=True, help="Lowest level of log lines printed.",
)
@click.option(
    "--strict-env", is_flag=True,
    help="Reject (FAILED) jobs that import a distribution missing here or installed at another major or minor "
    "version, instead of running them with a warning in their output.",
)
def worker(
    queues: tuple[str, ...], url: str | None, burst: bool, name: str | None, concurrency: int, log_level: str,
    strict_env: bool,
) -> None:
    """Run jobs from QUEUES (default: "default"), the queues listed first served first."""
    from nbqueue.worker import Worker

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        Worker(
            list(queues) or ["default"], connection=connect(url), name=name, concurrency=concurrency,
            strict_env=strict_env,
        ).work(burst=burst)
    except NbqueueError as exc:
        raise click.ClickException(str(exc)) from exc

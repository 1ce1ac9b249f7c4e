"""The ``nbqueue`` command."""

from __future__ import annotations

import sys

import click
import redis

from nbqueue.cli_jobs import empty, info, requeue, stop
from nbqueue.cli_notebooks import fetch, submit
from nbqueue.cli_server import server
from nbqueue.cli_worker import worker
from nbqueue.errors import NbqueueError
from nbqueue.version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nbqueue")
def cli() -> None:
    """Run notebook functions on background workers through Redis."""


for command in (empty, fetch, info, requeue, server, stop, submit, worker):
    cli.add_command(command)


def main() -> None:
    try:
        cli(prog_name="nbqueue")
    except (NbqueueError, redis.RedisError, OSError) as exc:
        # Errors a command did not turn into a message itself: one line, no traceback.
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)

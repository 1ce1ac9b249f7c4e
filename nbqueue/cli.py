"""The ``nbqueue`` command."""

from __future__ import annotations

import click

from nbqueue.cli_jobs import empty, info, requeue, stop
from nbqueue.cli_notebooks import fetch, submit
from nbqueue.cli_server import server
from nbqueue.cli_worker import worker
from nbqueue.version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nbqueue")
def cli() -> None:
    """Run notebook functions on background workers through Redis."""


for command in (empty, fetch, info, requeue, server, stop, submit, worker):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="nbqueue")

"""The ``nbqueue`` command."""

from __future__ import annotations

import click

from nbqueue.cli_server import server
from nbqueue.cli_worker import worker
from nbqueue.version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nbqueue")
def cli() -> None:
    """Run notebook functions on background workers through Redis."""


cli.add_command(server)
cli.add_command(worker)


def main() -> None:
    cli(prog_name="nbqueue")

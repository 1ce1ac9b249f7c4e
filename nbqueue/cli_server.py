"""``nbqueue server``: start, stop and inspect the embedded Redis server of this machine."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from nbqueue.embedded import ServerInfo, ensure_server, server_status, stop_server
from nbqueue.errors import NbqueueError
from nbqueue.settings import Settings, load_settings

T = TypeVar("T")

NOT_RUNNING = "Embedded Redis server not running: start it with `nbqueue server start`"


@click.group()
def server() -> None:
    """Manage the embedded Redis server that nbqueue starts on this machine."""


@server.command()
def start() -> None:
    """Start the embedded server, or reuse the one already running."""
    click.echo(_format_running(_call(ensure_server)))


@server.command()
def stop() -> None:
    """Shut the embedded server down, writing its data to disk first."""
    if _call(stop_server):
        click.echo("Embedded Redis server stopped")
    else:
        click.echo("Embedded Redis server was not running")


@server.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Print whether the embedded server is running. The exit code is 0 if it is, 1 if not."""
    info = _call(server_status)
    if info is None:
        click.echo(NOT_RUNNING)
        ctx.exit(1)
    click.echo(_format_running(info))


@server.command()
@click.option("--start", "start_server", is_flag=True, help="Start the embedded server if it is not running.")
def url(start_server: bool) -> None:
    """Print the embedded server's URL, password included.

    Use it on this machine as `nbqueue worker --url "$(nbqueue server url)"`.
    """
    info = _call(ensure_server) if start_server else _call(server_status)
    if info is None:
        raise click.ClickException(f"{NOT_RUNNING}, or pass --start")
    click.echo(info.url)


def _format_running(info: ServerInfo) -> str:
    return f"Embedded Redis server running: pid {info.pid}, port {info.port}, data {info.data_dir}"


def _call(function: Callable[[Settings], T]) -> T:
    """Run ``function`` with the settings. Show an nbqueue error as a one-line message with exit code 1."""
    try:
        return function(load_settings())
    except NbqueueError as error:
        raise click.ClickException(str(error)) from error

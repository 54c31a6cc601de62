"""The ``adnify`` command line: a thin layer over the Python API."""

from __future__ import annotations

import os
import sys

import typer

from ..errors import AdnifyError
from . import convert as _convert

app = typer.Typer(
    name="adnify",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Turn timm models into adaptive depth networks: one network, 2^N depths, switched at run time.",
)
_convert.register(app)


def _version(show: bool) -> None:
    if show:
        from .. import __version__

        typer.echo(f"adnify {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", help="Show the version and exit.", callback=_version,
                                 is_eager=True),
) -> None:
    """Turn timm models into adaptive depth networks: one network, 2^N depths, switched at run time."""

for _name in ("train", "report"):  # commands added by later modules, when present
    try:
        __import__(f"{__name__}.{_name}", fromlist=["register"]).register(app)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{_name}":
            raise


def main() -> None:
    """Console-script entry point: user errors become one red line on stderr and exit code 1."""
    try:
        app()
    except (AdnifyError, FileExistsError, PermissionError) as e:
        if os.environ.get("ADNIFY_DEBUG"):
            raise
        from rich.console import Console

        message = str(e)
        if "Original Traceback" in message:  # raised in a DataLoader worker: keep the error's own line
            message = message.strip().splitlines()[-1].partition(": ")[2] or message
        Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

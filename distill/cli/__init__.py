"""The `distill` command line.

Each command lives in its own module with a `register(app)` function, registered under the
`distill.commands` entry-point group (pyproject.toml); `index` and `runtime` register theirs the
same way, so `distill` imports neither. Command modules import their heavy dependencies inside
the command bodies, so `distill --help` and light commands start fast. A registration that is
missing or broken stops the CLI with a one-line error (exit 2); it never drops a command.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

HELP = "Agent run logs -> evidence -> scores -> datasets, index and receipts."


def build_app() -> typer.Typer:
    """A typer app with every registered command (raises PluginError when one cannot load)."""
    from distill.plugins import registered_commands

    app = typer.Typer(
        name="distill", help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
    )

    @app.callback(invoke_without_command=True)
    def _root(
        ctx: typer.Context,
        version: bool = typer.Option(False, "--version", help="print the version and exit", is_eager=True),
    ) -> None:
        """Agent run logs -> evidence -> scores -> datasets, index and receipts."""
        if version:
            from distill import __version__

            typer.echo(f"distill {__version__}")
            raise typer.Exit(0)
        if ctx.invoked_subcommand is None:
            typer.echo(ctx.get_help())
            raise typer.Exit(0)

    for _, register in registered_commands():
        register(app)
    return app


def __getattr__(name: str) -> Any:
    """`from distill.cli import app` builds the app on first use (PEP 562), so importing the
    package never fails on a broken registration; building it does, loudly."""
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# OpenBLAS starts a thread per core when numpy loads, and each spins a while before it sleeps:
# ~0.08 s CPU in every process (a run's, each stage worker's) for matrix products distill never
# asks of it. Set before anything imports numpy; a value the user set is kept.
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    os.environ.setdefault(*BLAS_THREADS)  # the stage workers inherit it
    from distill.command import run_app
    from distill.errors import PluginError

    try:
        app = build_app()
    except PluginError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
    run_app(app)

"""The `distill` command line. Each command lives in its own module and imports its heavy
dependencies inside the command body, so `distill --help` and light commands start fast."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="distill",
    help="Agent run logs -> evidence -> scores -> datasets, index and receipts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Agent run logs -> evidence -> scores -> datasets, index and receipts."""


def _register() -> None:
    from distill.cli import init_cmd

    init_cmd.register(app)
    for module_name in (
        "distill.cli.collect_cmd",
        "distill.cli.score_cmd",
        "distill.cli.export_cmd",
        "distill.cli.run_cmd",
        "distill.cli.receipts_cmd",
        "distill.cli.index_cmd",
    ):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # command not built yet
            raise
        module.register(app)


_register()


def main() -> None:
    app()

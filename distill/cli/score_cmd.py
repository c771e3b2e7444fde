"""`distill score`: evidence -> scored runs."""

from __future__ import annotations

from typing import Annotated

import typer

from distill.command import JsonOption, RootOption, console, emit_json, handle_errors, open_workspace


def register(app: typer.Typer) -> None:
    @app.command("score")
    @handle_errors
    def score(
        root: RootOption = None,
        json_out: JsonOption = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="count, write nothing")] = False,
    ) -> None:
        """Score every evidence row (accepted / partially_accepted / rejected / needs_human_review)."""
        from distill.cli.report_table import category_table, flow_table
        from distill.score import run_score

        ws, settings = open_workspace(root)
        if dry_run:
            report = run_score(ws, settings, dry_run=True)
        else:
            with ws.exclusive("score"):
                report = run_score(ws, settings)
        if json_out:
            emit_json(report)
        else:
            console().print(flow_table(report))
            console().print(category_table(report))

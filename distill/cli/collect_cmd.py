"""`distill collect`: source streams -> evidence."""

from __future__ import annotations

from typing import Annotated

import typer

from distill.command import JsonOption, RootOption, console, emit_json, handle_errors, open_workspace


def register(app: typer.Typer) -> None:
    @app.command("collect")
    @handle_errors
    def collect(
        root: RootOption = None,
        json_out: JsonOption = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="count, write nothing")] = False,
    ) -> None:
        """Turn every source stream under ROOT/_kb into evidence rows (bad rows -> quarantine)."""
        from distill.cli.report_table import flow_table, shown_notes
        from distill.collect import run_collect

        ws, settings = open_workspace(root, sources=True)
        if dry_run:
            report = run_collect(ws, settings, dry_run=True)
        else:
            with ws.exclusive("collect"):
                report = run_collect(ws, settings)
        if json_out:
            emit_json(report)
        else:
            console().print(flow_table(report))
            for line in shown_notes(report.notes):
                console().print(line)
            console().print(f"quarantine: {ws.quarantine_path('collect')}")

"""`distill audit`: block a change whose claims the code does not back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from distill.command import JsonOption, RootOption, console, emit_json, handle_errors, open_workspace
from distill.errors import UsageError
from distill.jsonl import utf16_problem, write_named_file


MAX_MESSAGE_BYTES = 1_048_576  # GitHub caps a PR body at 65,536 characters


def register(app: typer.Typer) -> None:
    @app.command("audit")
    @handle_errors
    def audit_command(
        revision_range: Annotated[str, typer.Option("--range", help="the change: BASE..HEAD, or BASE...HEAD from their merge base (a pull request)")],
        repo: Annotated[Path, typer.Option("--repo", help="the git repository (default: the current directory)")] = Path("."),
        message_file: Annotated[Path | None, typer.Option("--message-file", help="claims from this file (a PR body) instead of the commit messages")] = None,
        sarif_file: Annotated[Path | None, typer.Option("--sarif", help="write SARIF 2.1.0 here")] = None,
        markdown_file: Annotated[Path | None, typer.Option("--markdown", help="write a markdown comment body here")] = None,
        model: Annotated[bool, typer.Option("--model", help="also ask the model (\\[runtime] backend, the local Qwen by default) for gaps")] = False,
        backend: Annotated[str | None, typer.Option("--backend", help="backend of the model pass (default: \\[runtime] backend)")] = None,
        no_record: Annotated[bool, typer.Option("--no-record", help="write nothing to _kb/ (no lessons, no audits row)")] = False,
        root: RootOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """Check BASE..HEAD against the claims in its messages; exit 0 pass, 1 block, 2 usage."""
        from distill import __version__
        from audit.report import markdown, sarif
        from audit.run import audit

        # recording needs a workspace (_kb/ takes the lessons and the audits row); a check alone does not
        ws, settings = open_workspace(root, sources=not no_record)
        message = None
        if message_file is not None:
            try:
                with message_file.open("rb") as fh:  # a pipe works too (--message-file /dev/stdin)
                    data = fh.read(MAX_MESSAGE_BYTES + 1)
            except OSError as exc:
                raise UsageError(f"--message-file {message_file}: {exc.strerror or exc}") from None
            if len(data) > MAX_MESSAGE_BYTES:  # read whole, /dev/zero or a runaway pipe would fill memory
                raise UsageError(f"--message-file {message_file}: longer than {MAX_MESSAGE_BYTES:,} bytes; "
                                 "a PR body or commit message is far shorter")
            problem = utf16_problem(data)  # decoded leniently below, it would read as no claims at all
            if problem is not None:
                raise UsageError(f"--message-file {message_file}: {problem}")
            message = data.decode("utf-8", errors="replace")
        if backend is not None and backend not in ("auto", "ollama", "openai", "llamacpp"):
            raise UsageError(f"--backend {backend!r}: one of auto, ollama, openai, llamacpp")
        report = audit(ws, settings, repo, revision_range, message=message, use_model=model, backend=backend,
                       record=not no_record)
        if sarif_file is not None:
            write_named_file(sarif_file, (json.dumps(sarif(report, __version__), indent=2) + "\n").encode())
        if markdown_file is not None:
            write_named_file(markdown_file, markdown(report).encode())
        if json_out:
            emit_json(report)
        else:
            out = console()
            style = {"block": "bold red", "warn": "yellow", "pass": "green"}[report.verdict]
            out.print(Text.assemble(("audit: ", "bold"), (report.verdict, style),
                                    f" — {report.range}, {len(report.files)} files, {len(report.claims)} claims, "
                                    f"{len(report.findings)} findings"))
            for f in sorted(report.findings, key=lambda f: -f.severity.rank):
                where = f" {f.path}" + (f":{f.line}" if f.line else "") if f.path else ""
                out.print(Text(f"  {f.severity.value:5s} {f.check}{where}: {f.title} — {f.found}"))
            for note in report.notes:
                out.print(Text(f"  note: {note}"))
        if report.exit_code:
            raise typer.Exit(report.exit_code)

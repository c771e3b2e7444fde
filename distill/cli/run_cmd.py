"""`distill run`: the whole pipeline under one run id, with receipts, resume, drift and summary.md."""

from __future__ import annotations

import re
import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from distill.command import JsonOption, RootOption, console, emit_json, err_console, handle_errors, open_workspace
from distill.errors import DistillError, UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_INTERVAL_S = 365 * 86400
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """'30s', '15m', '1h', '1h30m' or plain seconds ('90') -> seconds (at least 1)."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    else:
        parts = _PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise UsageError(f"--every {text!r}: use a duration such as 30s, 15m, 1h or 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds < 1:
        raise UsageError(f"--every {text!r}: the interval must be at least 1s")
    if seconds > MAX_INTERVAL_S:  # past this the next run's time overflows the clock (a traceback before)
        raise UsageError(f"--every {text!r}: the interval must be at most 365d")
    return seconds


class _Progress:
    """Prints one line per stage as the pipeline reports it, with a spinner while one runs."""

    def __init__(self) -> None:
        self.out = console()
        self.status: Any = None

    def close(self) -> None:
        """Stop the spinner (also when a stage was interrupted)."""
        if self.status is not None:
            self.status.stop()
            self.status = None

    def __call__(self, kind: str, stage: str, detail: str) -> None:
        if kind == "start":
            self.status = self.out.status(Text.assemble((stage, "bold"), f" running ({detail})"))
            self.status.start()
            return
        self.close()
        style = {"done": "green", "skip": "cyan", "fail": "bold red", "not_run": "yellow", "unavailable": "dim"}.get(kind, "")
        self.out.print(Text.assemble((f"{kind:>11}", style), f" {stage:<18} {detail}"))


def print_result(result: Any) -> None:
    from distill.cli.report_table import shown_notes

    summary, drift = result.summary, result.drift
    table = Table(title=f"run {summary.run_id}", show_lines=False, pad_edge=False)
    table.add_column("stage", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("ok", no_wrap=True)
    for col in ("in", "written", "dedup", "quar", "skip"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("content", no_wrap=True)
    for s in summary.stages:
        t = s.totals
        passed: str | Text = "-" if s.passed is None else ("yes" if s.passed else Text("no", style="bold red"))
        table.add_row(
            s.stage, s.status, passed, str(t.rows_in), str(t.written), str(t.deduped), str(t.quarantined),
            str(t.skipped), (s.content_hash or "-")[:8],
        )
    out = console()
    out.print(table)
    for receipt in result.receipts:
        for line in shown_notes(receipt.notes):
            out.print(line)
    if summary.stopped_by:
        out.print(Text.assemble((f"stopped by {summary.stopped_by.stage}:", "bold red"), f" {summary.stopped_by.reason}"))
    color = {"ok": "green", "warn": "yellow", "alert": "bold red"}[drift.severity]
    out.print(Text.assemble(f"drift vs {drift.previous_run_id or 'nothing (first run)'}: ", (drift.severity, color)))
    for flag in drift.flags[:20]:
        out.print(f"  {flag.severity}: {flag.message}", highlight=False)
    if len(drift.flags) > 20:
        out.print(f"  ... {len(drift.flags) - 20} more in drift.json")
    out.print(f"summary: {result.summary_md}", highlight=False)


def _report_skipped(exc: DistillError | OSError, *, json_out: bool) -> int:
    """A periodic run that could not start or finish, in one line (and one JSON line under
    --json); returns its exit code."""
    from distill.command import os_error_message

    message = os_error_message(exc) if isinstance(exc, OSError) else str(exc)
    code = exc.exit_code if isinstance(exc, DistillError) else 2
    err_console().print(Text.assemble(("error: ", "bold red"), message, " (this run skipped)"))
    if json_out:
        from distill.jsonl import dumps

        sys.stdout.write(dumps({"error": message, "exit_code": code}).decode() + "\n")
        sys.stdout.flush()
    return code


def _wait(interval: float, started: float, code: int) -> None:
    wait = max(0.0, interval - (time.monotonic() - started))
    err_console().print(f"next run in {wait:.0f}s (Ctrl-C or SIGTERM to stop)")
    try:
        time.sleep(wait)
    except KeyboardInterrupt:
        # between runs nothing is in progress: a clean stop with the last run's exit code
        err_console().print("stopped")
        raise typer.Exit(code) from None


def _result_json(result: Any) -> dict[str, Any]:
    return {
        "summary": result.summary.model_dump(mode="json"),
        "drift": result.drift.model_dump(mode="json"),
        "summary_md": str(result.summary_md),
        "exit_code": result.exit_code,
    }


def register(app: typer.Typer) -> None:
    @app.command("run")
    @handle_errors
    def run(
        force: Annotated[bool, typer.Option("--force", help="rerun every stage even when nothing changed")] = False,
        continue_on_failure: Annotated[
            bool, typer.Option("--continue-on-failure", help="run later stages even after a stage fails")
        ] = False,
        no_index: Annotated[bool, typer.Option("--no-index", help="leave out the index stage")] = False,
        every: Annotated[
            str | None, typer.Option("--every", help="repeat in the foreground at this interval (30s, 15m, 1h; a bare number is seconds)")
        ] = None,
        root: RootOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """Run collect, score, the exports and the index with receipts; exit 1 when a stage fails.

        With --every, Ctrl-C or SIGTERM stops it: between runs with the last run's exit code, during a
        stage by abandoning that stage (exit 130 / 143; its outputs are crash-safe, the lock is
        released, and the next run resumes). A run that cannot start or finish (another command
        holds the workspace, a full disk, a settings file edited into an error) is reported in
        one line and the next one comes at its time."""
        from distill.pipeline import execute_run

        interval = parse_duration(every) if every is not None else None  # '' is refused, not one run
        opened: tuple[Any, Any] | None = open_workspace(root, sources=True)  # a first one that fails is an error
        code = 0
        while True:
            started = time.monotonic()
            progress = None if json_out else _Progress()
            try:
                try:
                    # a later run picks up config edits made in between
                    ws, settings = opened if opened is not None else open_workspace(root, sources=True)
                    opened = None
                    result = execute_run(
                        ws,
                        settings,
                        force=force,
                        continue_on_failure=continue_on_failure,
                        include_index=not no_index,
                        on_event=progress,
                    )
                finally:
                    if progress is not None:
                        progress.close()
            except (DistillError, OSError) as exc:
                if interval is None:
                    raise
                # one periodic run lost, not the loop: `distill run --every` died when a manual
                # `distill export` held the workspace at its tick
                code = _report_skipped(exc, json_out=json_out)
                _wait(interval, started, code)
                continue
            code = result.exit_code
            if json_out and interval is not None:
                # one JSON document per line, so a script can follow a repeating run
                from distill.jsonl import dumps

                sys.stdout.write(dumps(_result_json(result)).decode() + "\n")
                sys.stdout.flush()
            elif json_out:
                emit_json(_result_json(result))
            else:
                print_result(result)
            if interval is None:
                raise typer.Exit(code)
            _wait(interval, started, code)

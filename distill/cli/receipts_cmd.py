"""`distill receipts`: print a run's summary (the latest by default), one stage's receipt, or the list of runs."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from distill.command import JsonOption, RootOption, console, emit_json, handle_errors, open_workspace
from distill.errors import UsageError


def register(app: typer.Typer) -> None:
    @app.command("receipts")
    @handle_errors
    def receipts(
        run_id: Annotated[str | None, typer.Option("--run-id", help="the run to show")] = None,
        latest: Annotated[bool, typer.Option("--latest", help="show the latest run (the default)")] = False,
        stage: Annotated[str | None, typer.Option("--stage", help="show this stage's receipt instead")] = None,
        list_runs: Annotated[bool, typer.Option("--list", help="list the runs under ROOT/reports")] = False,
        root: RootOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """Print a run's summary (default: the latest run)."""
        from distill.cli.run_cmd import print_result
        from distill.pipeline import RunResult
        from distill.receipts import latest_run_id, load_receipt, load_summary, receipt_path, run_dir, run_ids
        from distill.records.receipts import DriftReport

        if run_id and latest:
            raise UsageError("give --run-id or --latest, not both")
        if run_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", run_id):
            raise UsageError(f"--run-id {run_id!r} is not a run id (see `distill receipts --list`)")
        if stage is not None and not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", stage):
            raise UsageError(f"--stage {stage!r} is not a stage name (e.g. collect, score, export-sft, index)")
        ws, _ = open_workspace(root)
        if list_runs:
            rows = []
            for rid in run_ids(ws):
                s = load_summary(ws, rid)
                rows.append(
                    {
                        "run_id": rid,
                        "readable": s is not None,
                        "overall_passed": s.overall_passed if s else None,
                        "drift_severity": s.drift_severity if s else None,
                        "stages": {x.stage: x.status for x in s.stages} if s else {},
                    }
                )
            if json_out:
                emit_json(rows)
                return
            table = Table(title=f"runs under {ws.reports_dir}")
            for col in ("run_id", "passed", "drift", "ran", "skipped"):
                table.add_column(col)
            for r in rows:
                st = r["stages"]
                table.add_row(
                    r["run_id"],
                    "?" if r["overall_passed"] is None else str(r["overall_passed"]).lower(),
                    r["drift_severity"] or "?",
                    str(sum(v == "ran" for v in st.values())),
                    str(sum(v == "skipped" for v in st.values())),
                )
            console().print(table)
            return
        chosen = run_id or latest_run_id(ws)
        if chosen is None:
            unreadable = run_ids(ws)
            if unreadable:
                raise UsageError(
                    f"no run under {ws.reports_dir} has a readable summary ({len(unreadable)} run director"
                    f"{'y' if len(unreadable) == 1 else 'ies'}, newest {unreadable[0]}: edited or corrupted?)"
                )
            raise UsageError(f"no runs under {ws.reports_dir} yet (run `distill run --root {ws.root}`)")
        if stage is not None:
            path = receipt_path(ws, chosen, stage)
            if not path.exists():
                raise UsageError(f"run {chosen} has no receipt for stage {stage!r} ({path})")
            receipt = load_receipt(path)
            if receipt is None:
                raise UsageError(f"{path} does not pass the StageReceipt schema (edited or corrupted?)")
            if json_out:
                emit_json(receipt)
                return
            out = console()
            out.print(Text.assemble((stage, "bold"), f" in run {chosen}: {receipt.status}, passed={receipt.passed}"))
            out.print(f"content hash {receipt.content_hash}")
            for label, digests in (("inputs", receipt.inputs), ("outputs", receipt.outputs)):
                out.print(f"{label}:")
                for d in digests:
                    out.print(f"  {d.path}  {d.bytes} B  records={d.records}  {d.sha256[:12]}", highlight=False)
            for err in receipt.validation.errors:
                out.print(Text.assemble(("error", "red"), f" {err}"))
            for reason in receipt.resume.reasons:
                out.print(f"resume: {reason}", highlight=False)
            return
        summary = load_summary(ws, chosen)
        if summary is None:
            raise UsageError(f"run {chosen!r} has no readable summary under {run_dir(ws, chosen)}")
        drift_path = run_dir(ws, chosen) / "drift.json"
        try:
            drift = DriftReport.model_validate_json(drift_path.read_bytes())
        except (OSError, ValueError):
            raise UsageError(f"{drift_path} is missing or unreadable") from None
        result = RunResult(
            summary=summary, drift=drift, run_dir=run_dir(ws, chosen), summary_md=run_dir(ws, chosen) / "summary.md", receipts=[]
        )
        if json_out:
            emit_json({"summary": summary.model_dump(mode="json"), "drift": drift.model_dump(mode="json"), "summary_md": str(result.summary_md)})
        else:
            print_result(result)

"""`distill export {rag,sft,preference,all}`: datasets behind the contamination firewall."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from distill.command import JsonOption, RootOption, console, emit_json, err_console, handle_errors, open_workspace
from distill.config import Settings
from distill.errors import ValidationFailed
from distill.records.stage import StageReport
from distill.workspace import Workspace


class Which(StrEnum):
    RAG = "rag"
    SFT = "sft"
    PREFERENCE = "preference"
    ALL = "all"


class Fmt(StrEnum):
    NATIVE = "native"
    TRL = "trl"
    OPENAI = "openai"


def export_table(reports: list[StageReport]) -> Table:
    """One line per exporter: read / exported / deduped / quarantined (by reason)."""
    dry = any(r.dry_run for r in reports)
    table = Table(title="export" + (" (dry run: nothing written)" if dry else ""))
    for col in ("exporter", "read", "exported", "deduped", "quarantined", "quarantined by reason"):
        table.add_column(col, justify="left" if col in ("exporter", "quarantined by reason") else "right")
    for r in reports:
        t = r.totals
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(t.by_reason.items())) or "-"
        table.add_row(r.stage.removeprefix("export-"), str(t.rows_in), str(t.written), str(t.deduped),
                      str(t.quarantined), reasons)
    return table


def run_exports(root, which: str, *, fmt: str, include_review: bool, include_partial: bool,
                dry_run: bool, rebuild: bool = False) -> list[StageReport]:
    from distill.export import KINDS, run_export
    from distill.export.gates import Firewall

    ws, settings = open_workspace(root)
    kinds = list(KINDS) if which == "all" else [which]
    firewall = Firewall.from_settings(ws.root, settings.export,
                                      prefilter_cache=None if dry_run else ws.secret_prefilter_path)

    def run_all() -> list[StageReport]:
        return [
            run_export(ws, settings, kind, include_review=include_review, include_partial=include_partial,  # type: ignore[arg-type]
                       fmt=fmt, dry_run=dry_run, firewall=firewall, rebuild=rebuild)
            for kind in kinds
        ]

    if dry_run:
        return run_all()
    with ws.exclusive("export"):
        reports = run_all()
        _vouch(ws, settings, reports)
        return reports


def _vouch(ws: Workspace, settings: Settings, reports: list[StageReport]) -> None:
    """Record what each clean export left on disk, so that the next `distill run` takes it as
    distill's writing (`--include-review`, `--rebuild` and the rest change what the run would have
    written) instead of stopping every run on a file modified outside it. An export the firewall
    refused vouches for nothing: a row added by hand must not pass as distill's."""
    from distill.export.stage import ExportStage
    from distill.firewall import ExportKind
    from distill.receipts import DigestCache, digest_paths, vouch_outputs

    cache = DigestCache.load(ws.digest_cache_path, clock=ws.clock_path)
    for report in reports:
        if report.violations or not report.balanced:
            continue
        stage = ExportStage(ExportKind(report.stage.removeprefix("export-")))
        outputs = [d for d in digest_paths(ws, stage.outputs(ws, settings), cache) if stage.tracks(d.path)]
        vouch_outputs(ws, stage.name, outputs)
    cache.save(ws.digest_cache_path)


def register(app: typer.Typer) -> None:
    @app.command("export")
    @handle_errors
    def export(
        which: Annotated[Which, typer.Argument(help="rag | sft | preference | all")],
        fmt: Annotated[Fmt, typer.Option("--format", help="native (the dataset files) | trl | openai views")] = Fmt.NATIVE,
        include_review: Annotated[bool, typer.Option("--include-review", help="RAG: ship needs_human_review rows")] = False,
        include_partial: Annotated[bool, typer.Option("--include-partial", help="SFT: ship partially_accepted rows")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="compute and report, write nothing")] = False,
        rebuild: Annotated[bool, typer.Option(
            "--rebuild", help="write the dataset anew from the current scores instead of appending (drops rows "
                              "shipped earlier whose runs are now unsafe; the removed ids are reported)")] = False,
        root: RootOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """Export RAG / SFT / preference datasets; every dropped row goes to quarantine with a reason."""
        reports = run_exports(root, which.value, fmt=fmt.value, include_review=include_review,
                              include_partial=include_partial, dry_run=dry_run, rebuild=rebuild)
        if json_out:
            emit_json([r.model_dump(mode="json") for r in reports])
        else:
            out = console()
            out.print(export_table(reports))
            for r in reports:
                for note in r.notes:
                    out.print(Text.assemble((f"{r.stage}:", "dim"), f" {note}"))
        problems = [f"{r.stage}: {v.message()}" for r in reports for v in r.violations]
        problems += [f"{r.stage}: counts do not balance" for r in reports if not r.balanced and not r.violations]
        if problems:
            for p in problems:
                err_console().print(Text.assemble(("firewall:", "bold red"), f" {p}"))
            raise ValidationFailed(f"{len(problems)} firewall validation failure(s)")

"""The export stages of `distill run`: scored runs -> rag / sft / preference datasets, then the
dataset card over all three."""

from __future__ import annotations

from pathlib import Path

from distill.config import Settings
from distill.export.formats import FORMATS, view_paths
from distill.export.verify import native_path
from distill.firewall import ExportKind
from distill.fold_cache import FoldCache
from distill.receipts import count_categories
from distill.records.receipts import FileDigest
from distill.records.stage import StageReport
from distill.stage import Stage, existing, files_under
from distill.workspace import Workspace, iter_partition_files

CARD_NAME = "README.md"
RUN_ORDER: tuple[ExportKind, ...] = (ExportKind.RAG, ExportKind.SFT, ExportKind.PREFERENCE)


def _category_of(kind: ExportKind, row: dict[str, object]) -> object:
    if kind is ExportKind.RAG:
        return row.get("success_score")
    if kind is ExportKind.SFT:
        return row.get("quality_score")
    return f"{row.get('chosen_category')}>{row.get('rejected_category')}"


class ExportStage(Stage):
    """One dataset behind the contamination firewall, with its quarantine, every trainer view (TRL,
    OpenAI) and the dataset card: all outputs the run rebuilds and verifies, so a view made by hand
    with `distill export --format` is the same file the next run expects."""

    config_sections = ("export",)

    def __init__(self, kind: ExportKind) -> None:
        self.kind = kind
        self.name = f"export-{kind.value}"
        # the three datasets read nothing of each other: `distill run` may run them side by side
        # (distill.stage_workers); the card that describes all three is its own stage
        self.after = ("score",)

    def inputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        benchmarks = [ws.absolute(str(p)) for p in settings.export.benchmark_files]
        return iter_partition_files(ws.evidence_dir) + iter_partition_files(ws.scored_dir) + benchmarks

    def input_trees(self, ws: Workspace, settings: Settings) -> list[Path]:
        root = settings.export.repo_root
        return [ws.absolute(str(root))] if root is not None else []

    def outputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        return files_under(ws.exports_dir / self.kind.value) + existing(ws.quarantine_path(self.kind.value))

    def caches(self, ws: Workspace) -> list[Path]:
        return [ws.verified_path(self.kind.value), ws.scored_index_path, ws.export_checkpoint_path(self.kind.value),
                ws.quarantine_tally_path(self.kind.value),
                ws.passed_gates_path(self.kind.value), ws.kept_decisions_path(self.kind.value),
                *(ws.view_state_path(self.kind.value, fmt) for fmt in FORMATS[1:] if view_paths(ws, self.kind.value, fmt))]

    def tracks(self, path: str) -> bool:
        return path != f"exports/{CARD_NAME}"  # the card stage's (a receipt of an older version listed it here)

    def run(self, ws: Workspace, settings: Settings) -> StageReport:
        from distill.export.run import run_export

        return run_export(ws, settings, self.kind, all_views=True, card=False)

    def output_categories(self, ws: Workspace, outputs: list[FileDigest],
                          folds: FoldCache | None = None) -> dict[str, int]:
        native = ws.relative(native_path(ws, self.kind))
        return count_categories(ws, outputs, lambda row: _category_of(self.kind, row), under=native,
                                fold=f"export-{self.kind.value}", folds=folds)


class CardStage(Stage):
    """exports/README.md, the dataset card (row counts per file, quarantine reasons): written once
    all three exports are done, from what they left on disk, so it never describes one half-written."""

    name = "export-card"
    after = tuple(f"export-{kind.value}" for kind in RUN_ORDER)

    def inputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        exports = [p for kind in RUN_ORDER for p in files_under(ws.exports_dir / kind.value)]
        return exports + existing(*(ws.quarantine_path(kind.value) for kind in RUN_ORDER))

    def outputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        return existing(ws.exports_dir / CARD_NAME)

    def run(self, ws: Workspace, settings: Settings) -> StageReport:
        from distill.export.card import write_card

        report = StageReport(stage=self.name, inputs=[ws.relative(p) for p in self.inputs(ws, settings)])
        report.outputs = [ws.relative(write_card(ws))]
        return report.finalize()


def export_stages() -> list[Stage]:
    """The `distill.stages` entry point: one stage per export kind, then the dataset card."""
    return [*(ExportStage(kind) for kind in RUN_ORDER), CardStage()]

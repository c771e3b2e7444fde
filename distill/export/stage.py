"""The three export stages of `distill run`: scored runs -> rag / sft / preference datasets."""

from __future__ import annotations

from pathlib import Path

from distill.config import Settings
from distill.export.verify import native_path
from distill.firewall import ExportKind
from distill.receipts import count_categories
from distill.records.receipts import FileDigest
from distill.records.stage import StageReport
from distill.stage import Stage, existing, files_under
from distill.workspace import Workspace, iter_partition_files

CARD_NAME = "README.md"
CARD_OWNER = ExportKind.PREFERENCE
"""Every export rewrites the dataset card from all three exports; it belongs to the one that
runs after the other two, so they do not see it "modified" by their successors, and the card a
run leaves is written once both are done."""
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
        # the card owner runs after the others; RAG and SFT read nothing of each other, so
        # `distill run` may run them side by side (distill.stage_workers)
        others = tuple(f"export-{k.value}" for k in RUN_ORDER if k is not CARD_OWNER)
        self.after = ("score",) + (others if kind is CARD_OWNER else ())

    def inputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        benchmarks = [ws.absolute(str(p)) for p in settings.export.benchmark_files]
        return iter_partition_files(ws.evidence_dir) + iter_partition_files(ws.scored_dir) + benchmarks

    def input_trees(self, ws: Workspace, settings: Settings) -> list[Path]:
        root = settings.export.repo_root
        return [ws.absolute(str(root))] if root is not None else []

    def outputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        found = files_under(ws.exports_dir / self.kind.value)
        extra = [ws.quarantine_path(self.kind.value)]
        if self.kind is CARD_OWNER:
            extra.append(ws.exports_dir / CARD_NAME)
        return found + existing(*extra)

    def caches(self, ws: Workspace) -> list[Path]:
        return [ws.verified_path(self.kind.value), ws.scored_index_path, ws.export_checkpoint_path(self.kind.value)]

    def tracks(self, path: str) -> bool:
        return path != f"exports/{CARD_NAME}" or self.kind is CARD_OWNER

    def run(self, ws: Workspace, settings: Settings) -> StageReport:
        from distill.export.run import run_export

        return run_export(ws, settings, self.kind, all_views=True)

    def output_categories(self, ws: Workspace, outputs: list[FileDigest]) -> dict[str, int]:
        native = ws.relative(native_path(ws, self.kind))
        return count_categories(ws, outputs, lambda row: _category_of(self.kind, row), under=native,
                                fold=f"export-{self.kind.value}")


def export_stages() -> list[Stage]:
    """The `distill.stages` entry point: one stage per export kind."""
    return [ExportStage(kind) for kind in RUN_ORDER]

"""The workspace layout (docs/DESIGN.md, "The workspace"): every path a stage reads or writes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

STAGES_WITH_QUARANTINE = ("collect", "score", "rag", "sft", "preference")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, root: Path | str | None = None) -> Workspace:
        """--root, else $DISTILL_ROOT, else the current directory."""
        chosen = root if root is not None else os.environ.get("DISTILL_ROOT") or Path.cwd()
        return cls(Path(chosen).expanduser().resolve())

    # inputs
    @property
    def kb_dir(self) -> Path:
        return self.root / "_kb"

    @property
    def replay_log(self) -> Path:
        return self.kb_dir / "replay_runs.jsonl"

    @property
    def config_path(self) -> Path:
        return self.root / "distill.toml"

    # stage outputs
    @property
    def evidence_dir(self) -> Path:
        return self.root / "evidence"

    @property
    def scored_dir(self) -> Path:
        return self.root / "scored-runs"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def rag_path(self) -> Path:
        return self.exports_dir / "rag" / "playbooks.jsonl"

    @property
    def sft_path(self) -> Path:
        return self.exports_dir / "sft" / "instruction_response.jsonl"

    @property
    def preference_path(self) -> Path:
        return self.exports_dir / "preference" / "chosen_rejected.jsonl"

    def quarantine_path(self, stage: str) -> Path:
        return self.exports_dir / "quarantine" / f"{stage}.jsonl"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def relative(self, path: Path) -> str:
        """Path as stored in provenance: relative to the root when inside it, POSIX style."""
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return path.resolve().as_posix()

    def absolute(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.root / p


def partition_path(base: Path, created_at: datetime, source: str) -> Path:
    """base/YYYY/MM/DD/<source>.jsonl, by the record's own created_at (UTC)."""
    return base / f"{created_at:%Y}" / f"{created_at:%m}" / f"{created_at:%d}" / f"{source}.jsonl"


def iter_partition_files(base: Path) -> list[Path]:
    """Every partition file under base, in a stable (sorted) order."""
    if not base.exists():
        return []
    return sorted(p for p in base.glob("*/*/*/*.jsonl") if p.is_file())

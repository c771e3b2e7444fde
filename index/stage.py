"""The `index` stage of `distill run`: keep ROOT/index in step with the RAG export.

Registered under the `distill.stages` entry point. Light to import: chromadb,
sentence-transformers and bm25s load only when the stage runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from distill.config import Settings
from distill.errors import DistillError
from distill.records.stage import StageReport
from distill.stage import Stage, existing
from distill.workspace import Workspace

TRACKED = ("manifest.json", "bm25")
"""The Chroma store's own files change when it is merely opened (and live on a server with
--chroma-url); the manifest (model, settings, a content hash per id) is the deterministic account
of what it holds, next to the BM25 folder."""
NEEDS = ("chromadb", "sentence_transformers", "bm25s")


class IndexStage(Stage):
    name = "index"
    after = ("export-rag",)
    config_sections = ("index",)
    packages = ("distill", "index")

    def unavailable(self) -> str | None:
        missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
        if missing:
            return f"{', '.join(missing)} not installed (pip install 'distill[index]')"
        return None

    def check_usable(self, ws: Workspace, settings: Settings) -> None:
        from index.manifest import IndexPaths, load_manifest
        from index.store import HnswParams

        try:
            manifest = load_manifest(IndexPaths(ws.index_dir).manifest, docs=False)
        except DistillError:
            return  # an unreadable manifest is the stage's failure (the other stages still run)
        if manifest is not None:
            cfg = settings.index
            manifest.check_update(HnswParams.from_settings(cfg), cfg.chroma_url, cfg.collection)

    def inputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        return existing(ws.rag_path)

    def outputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        return existing(*(ws.index_dir / name for name in TRACKED))

    def tracks(self, path: str) -> bool:
        return not path.startswith("index/") or path in {f"index/{name}" for name in TRACKED}

    def rerun_reason(self, ws: Workspace, settings: Settings) -> str | None:
        # the Chroma files are not tracked, so a deleted embedded store would let the stage skip
        # on an unchanged manifest
        if settings.index.chroma_url is None and not (ws.index_dir / "chroma").is_dir():
            return "the embedded Chroma store (index/chroma) is missing"
        return None

    def run(self, ws: Workspace, settings: Settings) -> StageReport:
        from index.build import run_index

        return run_index(ws, settings).stage_report

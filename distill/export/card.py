"""The dataset card: exports/README.md with YAML front matter the `datasets` library reads.

Generated from what is on disk (row counts per file, quarantine reasons per stage), never
from the wall clock, so it is byte-identical when the exports are.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.export.formats import FORMATS, view_paths
from distill.fold_cache import FoldCache
from distill.jsonl import write_atomic
from distill.receipts import LINES_FOLD, QUARANTINE_REASON_FOLD, DigestCache, quarantine_reason
from distill.workspace import Workspace

KINDS = ("rag", "sft", "preference")
_ABOUT = {
    "rag": "retrieval playbooks (accepted and partially accepted runs; unreviewed only on opt-in)",
    "sft": "instruction -> response rows from accepted runs (partially accepted only on opt-in)",
    "preference": "chosen/rejected pairs from the same task (or the same file across sources) with a category gap",
}


def count_rows(path: Path, folds: FoldCache | None = None, digests: DigestCache | None = None) -> int:
    """`digests`: what the run's receipts know of the file, so that its lines, already counted
    by their line check, are taken from there without reading the file (the fold cache matches
    a whole-file sha256)."""
    if not path.exists():
        return 0
    sha256 = digests.sha256_of(path) if digests is not None else None
    return (folds or FoldCache()).tally(path, LINES_FOLD, sha256=sha256).nonblank


def _dataset_files(ws: Workspace, kind: str, fmt: str) -> list[tuple[str, Path]]:
    """(config suffix, path) for the data files of a view (sidecars excluded)."""
    paths = view_paths(ws, kind, fmt)
    return [(name, p) for name, p in paths.items() if name != "provenance"]


def quarantine_summary(ws: Workspace, folds: FoldCache | None = None,
                       digests: DigestCache | None = None) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        path = ws.quarantine_path(kind)
        if path.exists():
            sha256 = digests.sha256_of(path) if digests is not None else None
            counts = (folds or FoldCache()).tally(path, QUARANTINE_REASON_FOLD, quarantine_reason, sha256=sha256).values
            out[kind] = dict(sorted(counts.items()))
    return out


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def render_card(ws: Workspace, folds: FoldCache | None = None, digests: DigestCache | None = None) -> str:
    """`folds`: counts kept from an earlier card, so only what was appended since is re-read;
    `digests`: the workspace's file digests (a file the receipts just checked is not read)."""
    configs: list[tuple[str, str, int]] = []  # (config name, path relative to exports/, rows)
    for kind in KINDS:
        for fmt in FORMATS:
            for name, path in _dataset_files(ws, kind, fmt):
                if not path.exists():
                    continue
                config = kind if fmt == "native" else f"{kind}_{fmt}" + ("" if name in ("dpo", "chat", "preference")
                                                                         else f"_{name}")
                rel = path.relative_to(ws.exports_dir).as_posix()
                configs.append((config, rel, count_rows(path, folds, digests)))
    quarantine = quarantine_summary(ws, folds, digests)

    lines = ["---", "pretty_name: distill exports", "tags:", "- distill", "- agent-logs", "configs:"]
    for config, rel, _ in configs:
        lines += [f"- config_name: {config}", "  data_files:", "  - split: train", f"    path: {_yaml_str(rel)}"]
    if not configs:
        lines[-1] = "configs: []"
    lines += ["---", "", "# distill exports", ""]
    lines += [
        "Datasets built by `distill export` from scored agent runs, behind the contamination firewall:",
        "rejected and unreviewed runs never reach SFT, rejected runs never reach RAG, and rows carrying",
        "a credential, citing files missing from the repository, or overlapping benchmark tasks are",
        "quarantined with a reason instead of shipped. Every row traces to its source line",
        "(`source_file`, `line_offset`, `sig_hash`); the TRL/OpenAI views keep provenance in a",
        "`provenance.jsonl` sidecar, line for line.",
        "",
        "## Files",
        "",
        "| config | file | rows |",
        "|---|---|---:|",
    ]
    lines += [f"| {c} | `{rel}` | {n} |" for c, rel, n in configs]
    lines += ["", "## What each dataset holds", ""]
    lines += [f"- **{k}**: {_ABOUT[k]}" for k in KINDS]
    lines += ["", "## Quarantine", "", "| stage | reason | rows |", "|---|---|---:|"]
    for stage, reasons in quarantine.items():
        if not reasons:
            lines.append(f"| {stage} | (none) | 0 |")
        for reason, n in reasons.items():
            lines.append(f"| {stage} | {reason} | {n} |")
    lines += ["", "Quarantined rows are in `quarantine/<stage>.jsonl`, each with its reason, errors and source reference.", ""]
    return "\n".join(lines)


def write_card(ws: Workspace) -> Path:
    path = ws.exports_dir / "README.md"
    folds = FoldCache.load(ws.fold_cache_path)
    # `distill run` saves its digests after each stage's receipt: the card, its last stage, finds
    # every export file it counts there (a standalone export's card finds its own files changed)
    digests = DigestCache.load(ws.digest_cache_path)
    write_atomic(path, render_card(ws, folds, digests).encode("utf-8"))
    folds.save()
    return path

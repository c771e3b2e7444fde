"""The declarative field-mapping adapter, configured through ROOT/distill.toml."""

from __future__ import annotations

import json
from pathlib import Path

from distill.config import load_settings
from distill.records import Category, EvidenceRecord, QuarantineReason, QuarantineRecord, ScoreClass
from distill.score_rules import score_evidence
from distill.sources.registry import discover_sources
from distill.workspace import Workspace

TOML = """
[[sources]]
name = "lint_bot"
path = "lint_bot/*.jsonl"
role = "reviewer"
score_class = "A"
natural_key = ["run", "file"]
task_id = "meta.task"
text = "comment"
instruction = "prompt"
created_at = "when"
model_name = "bot.model"
source_files = "file"
markers = ["outcome", "meta.severity"]
metadata = ["bot.version"]
verdict = "outcome"
verdict_map = { merged = "accepted", amended = "partially_accepted", closed = "rejected" }

[[sources]]
name = "chat_logs"
path = "chat.jsonl"
task_id = "conversation"
text = "reply"
"""

ROWS = [
    {"run": 1, "file": "a.py", "meta": {"task": "lint:a.py", "severity": "low"}, "comment": "Ensure imports are sorted.",
     "prompt": "Lint a.py", "when": "2026-03-01T10:00:00Z", "bot": {"model": "ruff-llm", "version": "2"}, "outcome": "merged"},
    {"run": 2, "file": "a.py", "meta": {"task": "lint:a.py"}, "comment": "Rename everything.",
     "when": "2026-03-02T10:00:00Z", "outcome": "closed"},
    {"run": 3, "file": "b.py", "meta": {"task": "lint:b.py"}, "comment": "Split the module.",
     "when": "2026-03-03T10:00:00Z", "outcome": "stale"},
    {"run": 4, "file": "b.py", "comment": "no task here", "when": "2026-03-03T10:00:00Z"},
    {"run": 5, "file": "b.py", "meta": {"task": "lint:b.py"}, "comment": "", "when": "2026-03-03T10:00:00Z"},
    {"run": 6, "file": "b.py", "meta": {"task": "lint:b.py"}, "comment": "late", "outcome": "merged"},
]


def _workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path.resolve())
    (ws.kb_dir / "lint_bot").mkdir(parents=True)
    (ws.kb_dir / "lint_bot" / "day1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (ws.kb_dir / "chat.jsonl").write_text(json.dumps({"conversation": 7, "reply": "hi", "created_at": 1767964836}) + "\n")
    ws.config_path.write_text(TOML)
    return ws


def test_mapping_from_distill_toml(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    settings = load_settings(ws.root)
    sources = {s.name: s for s in discover_sources(ws, settings)}
    items = list(sources["lint_bot"].read(ws, settings))
    assert len(items) == len(ROWS)
    first = items[0]
    assert isinstance(first, EvidenceRecord)
    assert first.run_id == "lint_bot:1:a.py" and first.task_id == "lint:a.py"
    assert first.score_class is ScoreClass.VERDICT
    assert first.model_role.value == "reviewer" and first.model_name == "ruff-llm"
    assert first.instruction == "Lint a.py" and first.source_files == ["a.py"]
    assert first.markers == {"outcome": "merged", "meta.severity": "low"}
    assert first.metadata["bot.version"] == "2" and first.metadata["adapter"] == "mapping"
    reasons = [i.reason for i in items[3:]]
    assert reasons == [QuarantineReason.MISSING_FIELD, QuarantineReason.EMPTY_TEXT, QuarantineReason.MISSING_TIMESTAMP]


def test_mapping_verdict_rule_scores(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    settings = load_settings(ws.root)
    sources = {s.name: s for s in discover_sources(ws, settings)}
    evidence = [i for i in sources["lint_bot"].read(ws, settings) if isinstance(i, EvidenceRecord)]
    cats = [score_evidence(e, settings.score).category for e in evidence]
    assert cats == [Category.ACCEPTED, Category.REJECTED, Category.NEEDS_HUMAN_REVIEW]


def test_mapping_without_rule_needs_review(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    settings = load_settings(ws.root)
    sources = {s.name: s for s in discover_sources(ws, settings)}
    [item] = list(sources["chat_logs"].read(ws, settings))
    assert not isinstance(item, QuarantineRecord)
    assert item.task_id == "7" and item.run_id.startswith("chat_logs:sig-")
    verdict = score_evidence(item, settings.score)
    assert verdict.category is Category.NEEDS_HUMAN_REVIEW and "verdict" in verdict.reasons[0]

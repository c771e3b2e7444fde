"""Two small real stages for pipeline tests: they read and write real files in a temp workspace,
so every resume/failure path of `distill run` is exercised in milliseconds."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from distill.config import Settings as _Settings
from distill.jsonl import iter_json, write_jsonl_atomic
from distill.receipts import count_categories
from distill.records.stage import StageReport
from distill.stage import Stage
from distill.workspace import Workspace



def _upper(ws: Workspace, settings: _Settings, *, miscount: bool = False, stamp: bool = False) -> StageReport:
    """_kb/in.jsonl -> out/upper.jsonl (text upper-cased); rows without text are quarantined."""
    src = ws.kb_dir / "in.jsonl"
    report = StageReport(stage="upper", inputs=[ws.relative(src)])
    rows, bad = [], []
    counts = report.source("in")
    for row in iter_json(src):
        text = row.get("text") if isinstance(row, dict) else None
        if not text:
            counts.bump("quarantined", reason="empty_text")
            bad.append({"row": row, "reason": "empty_text"})
            if miscount:
                counts.quarantined += 1  # a buggy stage: counts one row twice
            continue
        counts.bump("written", category=row.get("category", "accepted"))
        out = {"text": text.upper(), "category": row.get("category", "accepted")}
        if stamp:
            out["written_at"] = datetime.now(UTC).isoformat()  # nondeterministic on purpose
        rows.append(out)
    target = ws.root / "out" / "upper.jsonl"
    write_jsonl_atomic(target, rows)
    write_jsonl_atomic(ws.quarantine_path("upper"), bad)
    report.outputs = [ws.relative(target), ws.relative(ws.quarantine_path("upper"))]
    return report.finalize()


def _count(ws: Workspace, settings: _Settings) -> StageReport:
    """out/upper.jsonl -> out/count.jsonl, one row per category."""
    src = ws.root / "out" / "upper.jsonl"
    report = StageReport(stage="count", inputs=[ws.relative(src)])
    cats: dict[str, int] = {}
    counts = report.source("upper")
    for row in iter_json(src):
        counts.bump("written", category=row["category"])
        cats[row["category"]] = cats.get(row["category"], 0) + 1
    target = ws.root / "out" / "count.jsonl"
    write_jsonl_atomic(target, [{"category": k, "n": v} for k, v in sorted(cats.items())])
    report.outputs = [ws.relative(target)]
    return report.finalize()


class _FileStage(Stage):
    """A small real stage: a function over files in the workspace, with the paths it declares."""

    def __init__(self, name: str, run: Callable[..., StageReport], inputs: list[str], outputs: list[str],
                 config_sections: tuple[str, ...], category_file: str | None = None) -> None:
        self.name = name
        self._run = run
        self._inputs = inputs
        self._outputs = outputs
        self.config_sections = config_sections
        self._category_file = category_file

    def inputs(self, ws: Workspace, settings: _Settings) -> list[Path]:
        return [ws.root / p for p in self._inputs]

    def outputs(self, ws: Workspace, settings: _Settings) -> list[Path]:
        return [ws.root / p for p in self._outputs if (ws.root / p).exists()]

    def run(self, ws: Workspace, settings: _Settings) -> StageReport:
        return self._run(ws, settings)

    def output_categories(self, ws: Workspace, outputs: list, folds: Any = None) -> dict[str, int]:
        if self._category_file is None:
            return {}
        return count_categories(ws, outputs, "category", under=self._category_file, folds=folds)


def _stages(upper: Callable[..., StageReport] = _upper) -> list[Stage]:
    return [
        _FileStage("upper", upper, ["_kb/in.jsonl"], ["out/upper.jsonl", "exports/quarantine/upper.jsonl"],
                   ("collect",), category_file="out/upper.jsonl"),
        _FileStage("count", _count, ["out/upper.jsonl"], ["out/count.jsonl"], ("score",)),
    ]


def _lengths(ws: Workspace, settings: _Settings) -> StageReport:
    """_kb/in.jsonl -> out/lengths.jsonl: reads nothing another stage writes (runs beside upper)."""
    src = ws.kb_dir / "in.jsonl"
    report = StageReport(stage="lengths", inputs=[ws.relative(src)])
    counts = report.source("in")
    rows = []
    for row in iter_json(src):
        counts.bump("written", category="measured")
        rows.append({"length": len(str(row.get("text") or ""))})
    target = ws.root / "out" / "lengths.jsonl"
    write_jsonl_atomic(target, rows)
    report.outputs = [ws.relative(target)]
    return report.finalize()


def independent_stages(*extra: Stage) -> list[Stage]:
    """upper and lengths read only the input, so `distill run` may run them side by side."""
    return [
        _FileStage("upper", _upper, ["_kb/in.jsonl"], ["out/upper.jsonl", "exports/quarantine/upper.jsonl"],
                   ("collect",), category_file="out/upper.jsonl"),
        _FileStage("lengths", _lengths, ["_kb/in.jsonl"], ["out/lengths.jsonl"], ("collect",)),
        *extra,
    ]


def worker_stages(events: list[tuple[str, str, str]]) -> list[str]:
    """The stages an event log says started in a worker process."""
    return sorted(stage for kind, stage, detail in events if kind == "start" and "in a worker process" in detail)


@pytest.fixture()
def mini(tmp_path: Path) -> Workspace:
    ws = Workspace.resolve(tmp_path / "ws")
    ws.kb_dir.mkdir(parents=True)
    rows = [{"text": f"row {i}", "category": "accepted" if i % 3 else "partially_accepted"} for i in range(30)]
    rows.append({"text": ""})
    (ws.kb_dir / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ws



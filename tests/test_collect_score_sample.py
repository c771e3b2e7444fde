"""Issue 2 acceptance on the bundled sample workspace, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.cli.init_cmd import init_workspace, sample_kb_dir
from distill.hashing import sig_hash
from distill.jsonl import append_json, iter_json, read_line_at
from distill.records import ScoredRun
from distill.workspace import Workspace, iter_partition_files

runner = CliRunner()


def _cli(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _tree(ws: Workspace) -> dict[str, bytes]:
    files = iter_partition_files(ws.evidence_dir) + iter_partition_files(ws.scored_dir)
    files += sorted((ws.exports_dir / "quarantine").glob("*.jsonl"))
    return {p.relative_to(ws.root).as_posix(): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, Any], dict[str, Any]]:
    root = tmp_path_factory.mktemp("sample")
    init_workspace(root, sample=True)
    collect = _cli("collect", "--root", str(root))
    score = _cli("score", "--root", str(root))
    return Workspace(root), collect, score


def test_counts_balance_per_source(sample: tuple[Workspace, dict[str, Any], dict[str, Any]]) -> None:
    _, collect, score = sample
    for report in (collect, score):
        for name, c in report["by_source"].items():
            assert c["rows_in"] == c["written"] + c["quarantined"] + c["deduped"] + c["skipped"], name
    assert collect["totals"]["rows_in"] >= 1000
    assert score["totals"]["rows_in"] == collect["totals"]["written"]


def test_every_planted_bad_row_is_quarantined_with_its_reason(sample: tuple[Workspace, dict[str, Any], dict[str, Any]]) -> None:
    ws, _, _ = sample
    planted = json.loads((sample_kb_dir().parent / "bad_rows.json").read_text())["bad_rows"]
    quarantined = {(q["source_ref"]["source_file"], q["source_ref"]["line_number"]): q for q in iter_json(ws.quarantine_path("collect"))}
    kinds = set()
    for bad in planted:
        q = quarantined[(f"_kb/{bad['file']}", bad["line_number"])]
        assert q["reason"] == bad["expected_reason"], bad
        assert q["errors"], bad
        kinds.add(bad["expected_reason"])
    assert {"malformed_json", "missing_timestamp", "wrong_type", "empty_text", "invalid_utf8", "line_too_long", "torn_line"} <= kinds
    assert len(quarantined) == len(planted)


def test_second_runs_write_nothing_and_change_no_byte(sample: tuple[Workspace, dict[str, Any], dict[str, Any]]) -> None:
    ws, _, _ = sample
    before = _tree(ws)
    collect = _cli("collect", "--root", str(ws.root))
    score = _cli("score", "--root", str(ws.root))
    assert collect["totals"]["written"] == 0 and score["totals"]["written"] == 0
    assert collect["totals"]["deduped"] == collect["totals"]["rows_in"] - collect["totals"]["quarantined"]
    assert _tree(ws) == before


def test_scored_rows_carry_version_reasons_and_mirror_partitions(sample: tuple[Workspace, dict[str, Any], dict[str, Any]]) -> None:
    ws, _, _ = sample
    ev_files = [p.relative_to(ws.evidence_dir) for p in iter_partition_files(ws.evidence_dir)]
    sc_files = [p.relative_to(ws.scored_dir) for p in iter_partition_files(ws.scored_dir)]
    assert ev_files == sc_files
    rows = [ScoredRun.model_validate(r) for p in iter_partition_files(ws.scored_dir) for r in iter_json(p)]
    assert rows and all(r.scorer_version and r.reasons for r in rows)
    joined = [r for r in rows if r.score_class == "C" and r.joined_parent_run_id]
    orphans = [r for r in rows if r.score_class == "C" and not r.joined_parent_run_id]
    assert joined, "extraction rows with a verdict-bearing parent must join it"
    assert all(r.category == "needs_human_review" for r in orphans)
    ids = {r.evidence_run_id for r in rows}
    assert all(r.joined_parent_run_id in ids for r in joined)


def test_provenance_round_trip(sample: tuple[Workspace, dict[str, Any], dict[str, Any]]) -> None:
    ws, _, _ = sample
    rows = [r for p in iter_partition_files(ws.evidence_dir) for r in iter_json(p)]
    for row in rows[:: max(1, len(rows) // 60)]:
        prov = row["provenance"]
        line = read_line_at(ws.root / prov["source_file"], prov["line_offset"])
        assert sig_hash(json.loads(line)) == prov["sig_hash"]


def test_new_parent_rescores_an_orphan_extraction_row(tmp_path: Path) -> None:
    init_workspace(tmp_path, sample=True)
    _cli("collect", "--root", str(tmp_path))
    _cli("score", "--root", str(tmp_path))
    ws = Workspace(tmp_path)
    scored = [ScoredRun.model_validate(r) for p in iter_partition_files(ws.scored_dir) for r in iter_json(p)]
    orphan = next(r for r in scored if r.score_class == "C" and not r.joined_parent_run_id and r.task_id.startswith("scrum_review:"))
    # A verdict-bearing review of the orphan's file arrives later (accepted on attempt 1).
    template = next(iter_json(ws.kb_dir / "scrum_reviews.jsonl"))
    late = {**template, "review_id": "late-review", "file": orphan.task_id.split(":", 1)[1], "attempt": 1, "accepted": True}
    append_json(ws.kb_dir / "scrum_reviews.jsonl", [late])
    _cli("collect", "--root", str(tmp_path))
    report = _cli("score", "--root", str(tmp_path))
    rescored = {r["evidence_run_id"]: r for p in iter_partition_files(ws.scored_dir) for r in iter_json(p)}
    assert rescored[orphan.evidence_run_id]["joined_parent_run_id"] is not None
    assert report["totals"]["written"] >= 2  # the new audit row and the re-scored orphan


def test_score_removes_the_scored_file_of_an_evidence_partition_that_is_gone(tmp_path: Path) -> None:
    """A mirror partition whose evidence partition was deleted would be stale data; every other
    mirror partition stays as it was."""
    init_workspace(tmp_path, sample=True)
    _cli("collect", "--root", str(tmp_path))
    _cli("score", "--root", str(tmp_path))
    ws = Workspace(tmp_path)
    evidence = iter_partition_files(ws.evidence_dir)
    gone = evidence[len(evidence) // 2]
    gone.unlink()
    stray = ws.scored_dir / "1999" / "01" / "01" / "nobody.jsonl"  # no evidence partition ever
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")
    before = {p: p.read_bytes() for p in iter_partition_files(ws.scored_dir)}
    _cli("score", "--root", str(tmp_path))
    expected = {ws.scored_dir / p.relative_to(ws.evidence_dir) for p in iter_partition_files(ws.evidence_dir)}
    assert set(iter_partition_files(ws.scored_dir)) == expected
    assert ws.scored_dir / gone.relative_to(ws.evidence_dir) not in expected and not stray.exists()
    assert all(before[p] == p.read_bytes() for p in expected)

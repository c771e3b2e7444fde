"""The firewall policy (distill.firewall): one definition of what may ship where, used by the
exporters, the schemas and the re-read of what an export wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from distill.export.verify import verify_export
from distill.firewall import (
    CHOSEN_NEVER,
    NEVER,
    ExportKind,
    ViolationCode,
    allowed_categories,
    refuse_category,
    shippable_categories,
)
from distill.records import Category, QuarantineReason, RagSample, SftSample
from distill.workspace import Workspace

ALL = frozenset(Category)


def test_never_sets_are_the_invariants() -> None:
    assert NEVER[ExportKind.SFT] == {Category.REJECTED, Category.NEEDS_HUMAN_REVIEW}
    assert NEVER[ExportKind.RAG] == {Category.REJECTED}
    assert CHOSEN_NEVER == {Category.REJECTED, Category.NEEDS_HUMAN_REVIEW}


@pytest.mark.parametrize("kind", list(ExportKind))
@pytest.mark.parametrize("include_review", [False, True])
@pytest.mark.parametrize("include_partial", [False, True])
def test_no_flag_ever_lets_a_never_category_through(kind: ExportKind, include_review: bool, include_partial: bool) -> None:
    allowed = allowed_categories(kind, include_review=include_review, include_partial=include_partial)
    assert not allowed & NEVER[kind]
    assert allowed <= shippable_categories(kind)
    for category in ALL:
        refusal = refuse_category(kind, category, include_review=include_review, include_partial=include_partial)
        assert (refusal is None) == (category in allowed)
        if category in NEVER[kind] and kind is not ExportKind.PREFERENCE:
            assert refusal is not None and refusal.reason in (
                QuarantineReason.UNSAFE_RAG_CATEGORY, QuarantineReason.UNSAFE_SFT_CATEGORY
            )


def test_opt_in_flags() -> None:
    assert Category.NEEDS_HUMAN_REVIEW not in allowed_categories(ExportKind.RAG)
    assert Category.NEEDS_HUMAN_REVIEW in allowed_categories(ExportKind.RAG, include_review=True)
    assert Category.PARTIALLY_ACCEPTED not in allowed_categories(ExportKind.SFT)
    assert Category.PARTIALLY_ACCEPTED in allowed_categories(ExportKind.SFT, include_partial=True)
    refusal = refuse_category(ExportKind.SFT, Category.PARTIALLY_ACCEPTED)
    assert refusal is not None and "--include-partial" in refusal.message


@pytest.mark.parametrize("category", list(Category))
def test_schemas_refuse_exactly_what_the_policy_never_ships(category: Category) -> None:
    prov = {"source_file": "_kb/x.jsonl", "line_offset": 0, "line_number": 1, "sig_hash": "a" * 64,
            "recorded_at": "2026-01-01T00:00:00Z"}
    sft = {"id": "s", "instruction": "i", "response": "r", "source_run_id": "x", "quality_score": category.value,
           "created_at": "2026-01-01T00:00:00Z", "provenance": prov}
    rag = {"id": "r", "title": "t", "text": "x", "success_score": category.value, "source_category": "s",
           "source_run_id": "x", "task_id": "t", "created_at": "2026-01-01T00:00:00Z", "provenance": prov}
    for model, row, kind in ((SftSample, sft, ExportKind.SFT), (RagSample, rag, ExportKind.RAG)):
        if category in shippable_categories(kind):
            model.model_validate(row)
        else:
            with pytest.raises(ValidationError):
                model.model_validate(row)


# ------------------------------------------------------------------------ the re-read of an export


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def policy_errors(ws: Workspace, kind: str) -> list[str]:
    """Policy violations (schema violations of these hand-made partial rows left out), grouped by
    code the way a receipt lists them."""
    found = [v for v in verify_export(ws, kind) if v.code is not ViolationCode.SCHEMA]
    by_code: dict[str, list[str]] = {}
    for v in found:
        by_code.setdefault(v.error_code, []).append(v.record_id or "?")
    return [f"{code}: {len(ids)} {', '.join(ids)}" for code, ids in sorted(by_code.items())]



def test_firewall_reread_catches_leaks_by_label_and_by_score(tmp_path: Path) -> None:
    ws = Workspace.resolve(tmp_path)
    _write(ws.scored_dir / "2026" / "01" / "01" / "audits.jsonl", [
        {"evidence_run_id": "ev-ok", "category": "accepted"},
        {"evidence_run_id": "ev-bad", "category": "rejected"},
        {"evidence_run_id": "ev-human", "category": "needs_human_review"},
    ])
    _write(ws.sft_path, [
        {"id": "s1", "quality_score": "accepted", "source_run_id": "ev-ok"},
        {"id": "s2", "quality_score": "accepted", "source_run_id": "ev-human"},  # relabelled
        {"id": "s3", "quality_score": "rejected", "source_run_id": "ev-x"},
    ])
    errors = policy_errors(ws, "sft")
    assert len(errors) == 1 and errors[0].startswith("firewall_sft_category: 2 ")
    assert "s2" in errors[0] and "s3" in errors[0] and "s1" not in errors[0]

    _write(ws.rag_path, [
        {"id": "r1", "success_score": "accepted", "source_run_id": "ev-ok"},
        {"id": "r2", "success_score": "needs_human_review", "source_run_id": "ev-human"},
    ])
    assert policy_errors(ws, "rag") == []
    _write(ws.rag_path, [{"id": "r3", "success_score": "accepted", "source_run_id": "ev-bad"}])
    assert policy_errors(ws, "rag")[0].startswith("firewall_rag_category: 1 ")
    # a label that may ship but is not its run's category: scored again since, or edited by hand
    _write(ws.rag_path, [{"id": "r4", "success_score": "partially_accepted", "source_run_id": "ev-ok"},
                         {"id": "r5", "success_score": "needs_human_review", "source_run_id": "ev-ok"}])
    assert policy_errors(ws, "rag") == ["firewall_rag_stale_label: 2 r4, r5"]

    _write(ws.preference_path, [
        {"id": "p1", "chosen_run_id": "ev-ok", "rejected_run_id": "ev-bad", "chosen": "a", "rejected": "b", "chosen_category": "accepted"},
        {"id": "p2", "chosen_run_id": "ev-ok", "rejected_run_id": "ev-ok", "chosen": "a", "rejected": "b", "chosen_category": "accepted"},
        {"id": "p3", "chosen_run_id": "ev-ok", "rejected_run_id": "ev-bad", "chosen": "same ", "rejected": "same", "chosen_category": "accepted"},
        {"id": "p4", "chosen_run_id": "ev-bad", "rejected_run_id": "ev-ok", "chosen": "a", "rejected": "b", "chosen_category": "accepted"},
    ])
    codes = sorted(e.split(":")[0] for e in policy_errors(ws, "preference"))
    assert codes == ["firewall_preference_chosen_category", "firewall_preference_identical_texts", "firewall_preference_self_pair"]
    _write(ws.preference_path, [
        {"id": "p5", "chosen_run_id": "ev-ok", "rejected_run_id": "ev-bad", "chosen": "a", "rejected": "b",
         "chosen_category": "partially_accepted", "rejected_category": "rejected"},
    ])
    assert policy_errors(ws, "preference") == ["firewall_preference_stale_label: 1 p5"]


def test_firewall_judges_each_evidence_version_by_its_own_score(tmp_path: Path) -> None:
    """A source row edited in place gives the run a second evidence version (new sig_hash)."""
    ws = Workspace.resolve(tmp_path)
    sig_old, sig_new = "a" * 64, "b" * 64
    _write(ws.scored_dir / "2026" / "01" / "01" / "audits.jsonl", [
        {"evidence_run_id": "ev-two", "category": "accepted", "provenance": {"sig_hash": sig_old}},
        {"evidence_run_id": "ev-two", "category": "rejected", "provenance": {"sig_hash": sig_new}},
    ])
    _write(ws.rag_path, [{"id": "r-old", "success_score": "accepted", "source_run_id": "ev-two", "provenance": {"sig_hash": sig_old}}])
    assert policy_errors(ws, "rag") == []
    _write(ws.rag_path, [{"id": "r-new", "success_score": "accepted", "source_run_id": "ev-two", "provenance": {"sig_hash": sig_new}}])
    assert "r-new" in policy_errors(ws, "rag")[0]
    # no version named and the run is ambiguous: judged by its label alone
    _write(ws.rag_path, [{"id": "r-any", "success_score": "accepted", "source_run_id": "ev-two"}])
    assert policy_errors(ws, "rag") == []



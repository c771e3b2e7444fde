"""Source adapters over the bundled sample streams and hand-made rows.

The sample manifest (data/sample/bad_rows.json) says where every bad row was planted and
which quarantine reason it must get; every other line must become evidence.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from distill.config import FieldMapping, Settings, load_settings
from distill.errors import UsageError
from distill.hashing import sig_hash
from distill.jsonl import loads, read_line_at, utf16_problem
from distill.records import EvidenceRecord, QuarantineReason, QuarantineRecord, ReplayRun, ScoreClass
from distill.records.replay import Attempt, ContextBundle, RetrievedItem
from distill.sources.base import RowContext, convert_row, read_jsonl
from distill.sources.registry import BUILTIN_CONVERTERS, SEED_STREAMS, discover_sources
from distill.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
SAMPLE_KB = REPO / "data" / "sample" / "_kb"
MANIFEST = json.loads((REPO / "data" / "sample" / "bad_rows.json").read_text())


@pytest.fixture(scope="module")
def sample_items(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, list[Any]]:
    root = tmp_path_factory.mktemp("ws")
    shutil.copytree(SAMPLE_KB, root / "_kb")
    ws = Workspace(root.resolve())
    settings = load_settings(ws.root)
    items = [item for src in discover_sources(ws, settings) for item in src.read(ws, settings)]
    return ws, items


def test_every_seed_stream_is_a_source_and_has_sample_rows() -> None:
    assert set(SEED_STREAMS) == {
        "scrum_reviews", "observer_reviews", "audits", "contract_analyses", "auto_apply", "outcomes",
        "mode_experiments", "distilled_facts", "distilled_procedures", "distilled_config_hints",
        "observer_escalations", "audit_facts",
    }
    for name in SEED_STREAMS:
        assert MANIFEST["streams"][f"{name}.jsonl"]["good"] > 0
    assert MANIFEST["total_good_rows"] >= 1000


def test_planted_bad_rows_get_their_reason(sample_items: tuple[Workspace, list[Any]]) -> None:
    _, items = sample_items
    quarantined = {
        (q.source_ref.source_file, q.source_ref.line_number): q for q in items if isinstance(q, QuarantineRecord)
    }
    expected = {(f"_kb/{b['file']}", b["line_number"]): b for b in MANIFEST["bad_rows"]}
    assert set(quarantined) == set(expected), "exactly the planted rows are quarantined"
    for key, bad in expected.items():
        q = quarantined[key]
        assert q.reason.value == bad["expected_reason"], (key, q.errors)
        assert q.errors and q.stage == "collect"
    kinds = {b["kind"] for b in MANIFEST["bad_rows"]}
    assert kinds >= {"malformed_json", "missing_timestamp", "wrong_type", "empty_text", "non_utf8",
                     "huge_line", "non_object", "torn_line", "missing_field"}


def test_good_rows_become_evidence(sample_items: tuple[Workspace, list[Any]]) -> None:
    _, items = sample_items
    evidence = [i for i in items if isinstance(i, EvidenceRecord)]
    per_source = Counter(e.source for e in evidence)
    for name in SEED_STREAMS:
        assert per_source[name] == MANIFEST["streams"][f"{name}.jsonl"]["good"], name
    ids = [e.run_id for e in evidence]
    assert len(ids) == len(set(ids)), "run ids are unique"
    assert all(e.run_id.startswith(f"{e.source}:") for e in evidence)
    assert len({e.created_at.strftime("%Y-%m") for e in evidence}) >= 3


def test_provenance_round_trip(sample_items: tuple[Workspace, list[Any]]) -> None:
    ws, items = sample_items
    evidence = [i for i in items if isinstance(i, EvidenceRecord)]
    for e in evidence[::17]:
        line = read_line_at(ws.absolute(e.provenance.source_file), e.provenance.line_offset)
        assert sig_hash(loads(line)) == e.provenance.sig_hash


def test_classes_and_roles(sample_items: tuple[Workspace, list[Any]]) -> None:
    _, items = sample_items
    classes = {(e.source, e.score_class) for e in items if isinstance(e, EvidenceRecord)}
    by_source = dict(classes)
    assert {by_source[s] for s in ("scrum_reviews", "observer_reviews", "audits", "contract_analyses")} == {ScoreClass.VERDICT}
    assert {by_source[s] for s in ("auto_apply", "outcomes", "mode_experiments")} == {ScoreClass.TELEMETRY}
    assert {by_source[s] for s in ("distilled_facts", "distilled_procedures", "distilled_config_hints",
                                   "observer_escalations", "audit_facts")} == {ScoreClass.EXTRACTION}


def test_extraction_rows_share_task_ids_with_parents(sample_items: tuple[Workspace, list[Any]]) -> None:
    _, items = sample_items
    evidence = [i for i in items if isinstance(i, EvidenceRecord)]
    parent_tasks = {e.task_id for e in evidence if e.score_class is not ScoreClass.EXTRACTION}
    run_ids = {e.run_id for e in evidence}
    children = [e for e in evidence if e.score_class is ScoreClass.EXTRACTION]
    matched = sum(1 for c in children if c.task_id in parent_tasks)
    assert 0.85 * len(children) < matched < len(children), "most, not all, extraction rows have a parent task"
    named = [c for c in children if c.parent_run_id]
    assert named and all(c.parent_run_id in run_ids for c in named)


def test_tasks_with_mixed_outcomes_exist(sample_items: tuple[Workspace, list[Any]]) -> None:
    from distill.score_rules import score_evidence

    _, items = sample_items
    score_settings = Settings().score
    cats: dict[str, set[str]] = {}
    for e in items:
        if isinstance(e, EvidenceRecord) and e.score_class is not ScoreClass.EXTRACTION:
            cats.setdefault(e.task_id, set()).add(score_evidence(e, score_settings).category.value)
    assert sum(1 for c in cats.values() if {"accepted", "rejected"} <= c) >= 20


# ------------------------------------------------------------------------ single converters


def ctx(source: str) -> RowContext:
    return RowContext(source, f"_kb/{source}.jsonl", 0, 1, "a" * 64)


def test_scrum_review_shape() -> None:
    row = {"review_id": "sr-1", "file": "a.py", "attempt": 2, "accepted": True, "model": "m",
           "review": "# Review\n- Verify x", "ts": "2026-02-01T00:00:00Z", "matrix_corpora": ["c1"]}
    e = BUILTIN_CONVERTERS["scrum_reviews"](row, ctx("scrum_reviews"))
    assert e.run_id == "scrum_reviews:sr-1" and e.task_id == "scrum_review:a.py"
    assert e.markers == {"attempt": 2, "accepted": True}
    assert e.source_files == ["a.py"] and e.instruction and e.retrieved_context == {"matrix_corpora": ["c1"]}
    no_key = BUILTIN_CONVERTERS["scrum_reviews"]({**row, "review_id": None}, ctx("scrum_reviews"))
    assert no_key.run_id == "scrum_reviews:sig-" + "a" * 16


def test_auto_apply_epoch_ms_and_parent() -> None:
    row = {"apply_id": "ap-1", "source_review": "sr-9", "file": "a.rs", "patch": "--- a\n+++ b", "status": "committed",
           "ts_ms": 1767964836000}
    e = BUILTIN_CONVERTERS["auto_apply"](row, ctx("auto_apply"))
    assert e.created_at == datetime(2026, 1, 9, 13, 20, 36, tzinfo=UTC)
    assert e.parent_run_id == "scrum_reviews:sr-9" and e.markers["status"] == "committed"


def test_mode_experiment_keeps_empty_output() -> None:
    row = {"experiment_id": "mx-1", "task_class": "pr_audit", "file": "a.py", "output": "", "latency_ms": 5,
           "validation_results": {"grounded_fraction": 0.9}, "ts": "2026-02-01T00:00:00Z"}
    e = BUILTIN_CONVERTERS["mode_experiments"](row, ctx("mode_experiments"))
    assert e.text == "" and e.markers["grounded_fraction"] == 0.9 and e.task_id == "mode:pr_audit:a.py"


def test_extraction_origin_sets_task_and_parent() -> None:
    row = {"fact_id": "df-1", "fact": "x", "origin": {"stream": "scrum_reviews", "task": "scrum_review:a.py", "run": "sr-1"},
           "extracted_at": "2026-02-01T00:00:00Z"}
    e = BUILTIN_CONVERTERS["distilled_facts"](row, ctx("distilled_facts"))
    assert e.task_id == "scrum_review:a.py" and e.parent_run_id == "scrum_reviews:sr-1"
    af = BUILTIN_CONVERTERS["audit_facts"]({"fact_id": "f", "phase": 41, "finding": "AF-1", "fact": "y",
                                            "ts": "2026-02-01T00:00:00Z"}, ctx("audit_facts"))
    assert af.task_id == "audit:phase-41" and af.parent_run_id == "audits:AF-1"


def _replay_row(verdict: str = "validated_local") -> dict[str, Any]:
    run = ReplayRun(
        run_id="rr-1", task="Audit the retry path", task_hash="b" * 64, retrieval_mode="hybrid", k=8,
        retrieved=[RetrievedItem(id="rag-1", score=0.9, rank=1, category="accepted")],
        bundle=ContextBundle(validation_steps=["Verify retries stop"]),
        attempts=[Attempt(backend="ollama", model="qwen2.5:7b-instruct", output="done")],
        final_verdict=verdict, final_output="Retries stop after 3 attempts.",
        created_at=datetime(2026, 5, 1, tzinfo=UTC),
    )
    return run.to_json_dict()


def test_replay_run_converter(tmp_path: Path) -> None:
    e = BUILTIN_CONVERTERS["replay_runs"](_replay_row(), ctx("replay_runs"))
    assert e.run_id == "replay_runs:rr-1" and e.task_id == "replay:" + "b" * 16
    assert e.markers == {"final_verdict": "validated_local", "escalated": False, "attempts": 1}
    assert e.instruction == "Audit the retry path" and e.model_name == "qwen2.5:7b-instruct"
    bad = _replay_row()
    del bad["created_at"]
    q = convert_row(bad, ctx("replay_runs"), BUILTIN_CONVERTERS["replay_runs"], excerpt="")
    assert isinstance(q, QuarantineRecord) and q.reason is QuarantineReason.MISSING_TIMESTAMP


def test_replay_runs_file_is_collected(tmp_path: Path) -> None:
    ws = Workspace(tmp_path.resolve())
    ws.kb_dir.mkdir()
    ws.replay_log.write_bytes(json.dumps(_replay_row()).encode() + b"\n")
    sources = {s.name: s for s in discover_sources(ws, Settings())}
    items = list(sources["replay_runs"].read(ws, Settings()))
    assert len(items) == 1 and isinstance(items[0], EvidenceRecord)
    off = Settings.model_validate({"collect": {"include_replay_runs": False}})
    assert "replay_runs" not in {s.name for s in discover_sources(ws, off)}


def test_torn_last_line_and_non_utf8(tmp_path: Path) -> None:
    ws = Workspace(tmp_path.resolve())
    ws.kb_dir.mkdir()
    good = {"fact_id": "f1", "phase": 3, "fact": "ok", "ts": "2026-02-01T00:00:00Z"}
    path = ws.kb_dir / "audit_facts.jsonl"
    path.write_bytes(json.dumps(good).encode() + b"\n" + b'{"fact": "caf\xe9"}\n' + b'{"fact_id": "f2", "pha')
    items = list(read_jsonl(path, source="audit_facts", ws=ws, settings=Settings(),
                            convert=BUILTIN_CONVERTERS["audit_facts"]))
    assert [type(i).__name__ for i in items] == ["EvidenceRecord", "QuarantineRecord", "QuarantineRecord"]
    assert [i.reason for i in items[1:]] == [QuarantineReason.INVALID_UTF8, QuarantineReason.TORN_LINE]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_stream_is_named_as_utf16(tmp_path: Path, encoding: str) -> None:
    """Windows PowerShell's `>` writes UTF-16: every row was 'not JSON: Expecting value' before,
    which names no cause. Every row is still quarantined and counted, now saying what to do."""
    ws = Workspace(tmp_path.resolve())
    ws.kb_dir.mkdir()
    rows = [{"fact_id": f"f{i}", "phase": 3, "fact": "caf\u00e9 ok", "ts": "2026-02-01T00:00:00Z"} for i in range(3)]
    path = ws.kb_dir / "audit_facts.jsonl"
    path.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode(encoding))
    items = list(read_jsonl(path, source="audit_facts", ws=ws, settings=Settings(),
                            convert=BUILTIN_CONVERTERS["audit_facts"]))
    # little-endian: the file ends with the second byte of its last line break, a "line" of its own
    assert [i.reason for i in items] == [QuarantineReason.INVALID_UTF8] * (3 if encoding.endswith("be") else 4)
    assert all("UTF-16" in i.errors[0] and "re-encode the file as UTF-8" in i.errors[0] for i in items)


def test_utf16_is_told_from_binary_and_from_utf8() -> None:
    assert utf16_problem('{"a": "x"}'.encode("utf-16-le")) is not None
    assert utf16_problem(b"\x00" + '{"a": "x"}'.encode("utf-16-le")[:-1]) is not None  # a line split after 0x0A
    assert utf16_problem("\ufeffx".encode("utf-16")) is not None  # a BOM, whatever follows
    assert utf16_problem('{"a": "caf\u00e9 \u6f22\u5b57"}'.encode()) is None  # UTF-8, any script
    assert utf16_problem(b"\x00" * 40) is None and utf16_problem(bytes(range(256)) * 2) is None  # binary
    assert utf16_problem(b'{"a": 1}') is None and utf16_problem(b"\x00\x00") is None


def test_missing_files_are_not_errors(tmp_path: Path) -> None:
    ws = Workspace(tmp_path.resolve())
    sources = discover_sources(ws, Settings())
    assert {s.name for s in sources} >= set(SEED_STREAMS)
    assert all(list(s.read(ws, Settings())) == [] and s.inputs(ws) == [] for s in sources)


def test_mapping_name_clash_is_a_usage_error(tmp_path: Path) -> None:
    ws = Workspace(tmp_path.resolve())
    clash = Settings(sources=[FieldMapping(name="audits", path="x.jsonl", task_id="t", text="x")])
    with pytest.raises(UsageError, match="audits"):
        discover_sources(ws, clash)


# --------------------------------------------------------------------------------- property

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
JSON = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=12)
FIELD_NAMES = st.sampled_from([
    "review_id", "file", "attempt", "accepted", "review", "ts", "created_at", "verdict", "rationale", "phase", "pr",
    "severity", "evidence", "permit_id", "analysis", "failure_markers", "observer_verdict", "patch", "status",
    "ts_ms", "scenario_id", "answer", "events", "all_events_ok", "gap_signals", "task_class", "output",
    "latency_ms", "validation_results", "fact", "origin", "title", "steps", "setting", "suggested", "reason",
    "run_id", "task", "task_hash", "retrieval_mode", "bundle", "final_verdict", "extracted_at", "tokens",
])
TIMESTAMPS = st.sampled_from(["2026-02-01T00:00:00Z", 1767964836000, 1767964836, "nope", "", 3.5, 10**400, -(10**30)])
ROWS = st.dictionaries(FIELD_NAMES, JSON | TIMESTAMPS, max_size=14)
SCORE_SETTINGS = Settings().score
MAPPED = FieldMapping(name="m", path="m.jsonl", task_id="task", text="answer", created_at="ts",
                      natural_key=["run_id"], markers=["status"], verdict="status", verdict_map={"ok": "accepted"})


@hsettings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row=ROWS)
def test_any_json_object_yields_exactly_one_item(row: dict[str, Any]) -> None:
    from distill.score_rules import score_evidence
    from distill.sources.mapping import make_converter

    converters = {**BUILTIN_CONVERTERS, "m": make_converter(MAPPED)}
    for name, convert in converters.items():
        item = convert_row(row, ctx(name), convert, excerpt=json.dumps(row, default=str)[:50])
        assert isinstance(item, EvidenceRecord | QuarantineRecord)
        if isinstance(item, EvidenceRecord):
            assert score_evidence(item, SCORE_SETTINGS).reasons


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_a_timestamp_outside_the_calendar_in_utc_is_an_invalid_timestamp(stamp: str) -> None:
    """Converting it to UTC overflowed: the row was quarantined as 'unexpected row shape:
    OverflowError' (wrong_type), and a hand-edited scored line with it could not be validated."""
    from distill.errors import RowRejected
    from distill.sources.fields import parse_timestamp

    with pytest.raises(RowRejected) as caught:
        parse_timestamp(stamp, "created_at")
    assert caught.value.reason is QuarantineReason.INVALID_TIMESTAMP
    assert parse_timestamp("9999-12-31T23:59:59+00:00", "t").year == 9999  # the edges themselves still parse

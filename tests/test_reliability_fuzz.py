"""Fuzzing (issue 8): every source adapter and the scorer on arbitrary bytes and JSON values.

Properties:
- read_jsonl with every JSONL adapter's converter (the built-in streams, replay_runs and a
  declarative field mapping) over files of arbitrary lines (raw bytes, non-UTF-8, broken JSON,
  JSON values of every type, plausible rows with hostile values, deep nesting, blank lines, a torn
  last line, lines over the length limit): no exception escapes, and every line that is not blank
  becomes exactly one item (evidence or a quarantine row with a reason) carrying its own line
  number.
- the SWE-agent adapter: one item per `.traj` file whatever its bytes, with any results file.
- the scorer on arbitrary EvidenceRecords (any source, class, role, markers and metadata): a
  category and at least one reason, never an exception; class C joins return a parent from the
  candidates or None; `distill score` over evidence files holding arbitrary lines accounts for
  every line (conservation holds).

Lines tried are counted and printed by the last test (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from distill.config import CollectSettings, FieldMapping, Settings
from distill.records import Category, EvidenceRecord, ModelRole, Provenance, QuarantineRecord, ScoreClass
from distill.records.common import id_problem
from distill.score_rules import ParentRun, join_extraction, score_evidence
from distill.sources.base import read_jsonl
from distill.sources.mapping import make_converter
from distill.sources.registry import BUILTIN_CONVERTERS
from distill.sources.swe_agent import SweAgentSource
from distill.workspace import Workspace

COUNTS: Counter[str] = Counter()  # lines/files/records tried, reported by the last test

MAPPING = FieldMapping(name="mapped", path="mapped.jsonl", task_id="task", text="answer", created_at="ts",
                       natural_key=["run_id"], markers=["status"], verdict="status",
                       verdict_map={"ok": "accepted", "bad": "rejected"}, source_files="files",
                       metadata=["meta.deep.x"])
CONVERTERS = {**BUILTIN_CONVERTERS, "mapped": make_converter(MAPPING)}

FIELDS = [
    "review_id", "file", "attempt", "accepted", "review", "ts", "created_at", "verdict", "rationale", "phase", "pr",
    "severity", "evidence", "permit_id", "analysis", "failure_markers", "observer_verdict", "patch", "status",
    "ts_ms", "scenario_id", "answer", "events", "all_events_ok", "gap_signals", "task_class", "output",
    "latency_ms", "validation_results", "fact", "origin", "title", "steps", "setting", "suggested", "reason",
    "run_id", "task", "task_hash", "retrieval_mode", "bundle", "final_verdict", "extracted_at", "tokens",
    "task_id", "attempts", "source_files", "files", "meta", "parent_run_id", "model", "id", "text", "instruction",
]
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**200)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["2026-02-01T00:00:00Z", "2026-13-45T99:99:99Z", "", "accept", "reject", "high",
                              "critical", "committed", "reverted", "ok", "../../etc/passwd", "\u0000", "\ud7ff"]))
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                      max_leaves=10)
ROWS = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=16)


def _try_json(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


SAMPLE_KB = Path(__file__).resolve().parent.parent / "data" / "sample" / "_kb"
SAMPLE_ROWS = [row for f in sorted(SAMPLE_KB.glob("*.jsonl")) for line in f.read_bytes().splitlines()[:40]
               if line.strip().startswith(b"{") and isinstance(row := _try_json(line), dict)]


@st.composite
def sample_rows(draw: Any) -> dict[str, Any]:
    """A real sample row with one field replaced, removed or added: reaches the converters' success
    paths and the checks just behind them, which random dicts rarely do."""
    row = dict(draw(st.sampled_from(SAMPLE_ROWS)))
    how = draw(st.sampled_from(["keep", "replace", "drop", "add"]))
    keys = sorted(row)
    if how == "replace" and keys:
        row[draw(st.sampled_from(keys))] = draw(VALUES)
    elif how == "drop" and keys:
        row.pop(draw(st.sampled_from(keys)))
    elif how == "add":
        row[draw(st.sampled_from(FIELDS))] = draw(VALUES)
    return row


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")


def _mutate(data: bytes, draw: Any) -> bytes:
    how = draw(st.sampled_from(["keep", "keep", "truncate", "flip", "latin1"]))
    if how == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    if how == "latin1":
        return data + "é".encode("latin-1")
    return data


@st.composite
def lines(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["sample", "sample", "sample", "row", "row", "value", "bytes", "blank", "deep", "number"]))
    if kind == "sample":
        data = _mutate(_dump(draw(sample_rows())), draw)
    elif kind == "row":
        data = _mutate(_dump(draw(ROWS)), draw)
    elif kind == "value":
        data = _dump(draw(VALUES))
    elif kind == "bytes":
        data = draw(st.binary(max_size=120))
    elif kind == "blank":
        data = draw(st.sampled_from([b"", b" ", b"\t", b"\r", b"  \r", b"\x0b\x0c"]))
    elif kind == "deep":
        n = draw(st.integers(1, 5000))
        open_, close = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        data = b'{"x":' + open_ * n + b"1" + close * n + b"}"
    else:
        data = draw(st.sampled_from([b"1e400", b"-1e999", b"9" * 400, b'{"ts": 1e400}', b'{"attempt": 1e400}',
                                     b"NaN", b'{"a": NaN}', b'{"latency_ms": -Infinity}']))
    return data.replace(b"\n", b" ")


FILES = st.tuples(st.lists(lines(), min_size=1, max_size=25), st.booleans(), st.sampled_from([None, None, 64, 2000]))


def expected_units(body: list[bytes], limit: int) -> list[int]:
    """Line numbers that are input units: not blank, or over the length limit."""
    return [n for n, line in enumerate(body, 1) if line.strip() or len(line) > limit]


def line_number(item: Any) -> int:
    if isinstance(item, EvidenceRecord):
        return item.provenance.line_number
    assert isinstance(item, QuarantineRecord) and item.reason and item.errors
    return item.source_ref.line_number


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=FILES)
def test_every_jsonl_adapter_accounts_for_every_line_of_arbitrary_bytes(spec: tuple[list[bytes], bool, int | None]) -> None:
    body, trailing_newline, limit = spec
    settings = Settings() if limit is None else Settings(collect=CollectSettings(max_line_bytes=limit))
    max_bytes = settings.collect.max_line_bytes
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        ws.kb_dir.mkdir()
        path = ws.kb_dir / "stream.jsonl"
        path.write_bytes(b"\n".join(body) + (b"\n" if trailing_newline else b""))
        want = expected_units(body, max_bytes)
        for name, convert in CONVERTERS.items():
            items = list(read_jsonl(path, source=name, ws=ws, settings=settings, convert=convert))
            assert sorted(line_number(i) for i in items) == want, name
            for item in items:
                if isinstance(item, EvidenceRecord):
                    assert item.source == name and item.provenance.source_file == "_kb/stream.jsonl"
                    item.to_json_dict()  # what collect writes must serialise
                else:
                    COUNTS[f"quarantine:{item.reason.value}"] += 1
            COUNTS["adapter lines"] += len(body)
            COUNTS["adapter items"] += len(items)
            COUNTS["adapter evidence"] += sum(isinstance(i, EvidenceRecord) for i in items)


TRAJ_BODIES = st.one_of(
    st.binary(max_size=300),
    VALUES.map(_dump),
    st.fixed_dictionaries({"history": VALUES, "info": VALUES, "trajectory": VALUES}).map(_dump),
    st.fixed_dictionaries(
        {"history": st.just([{"role": "user", "content": "ISSUE:\nthe parser crashes\nINSTRUCTIONS:\nfix it"}]),
         "info": st.fixed_dictionaries({"submission": st.sampled_from([None, "diff --git a/x.py b/x.py\n+1", 7]),
                                        "exit_status": SCALARS})}).map(_dump),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
)
RESULTS_BODIES = st.one_of(st.none(), st.binary(max_size=80),
                           st.dictionaries(st.sampled_from(["resolved", "applied", "no_apply", "junk"]),
                                           st.lists(st.sampled_from(["inst-0", "inst-1", "inst-2", 5, None]), max_size=3),
                                           max_size=4).map(lambda d: _dump(d).replace(b"]", b",]")))


@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trajs=st.lists(TRAJ_BODIES, min_size=1, max_size=4), results=RESULTS_BODIES)
def test_swe_agent_adapter_gives_one_item_per_trajectory_file(trajs: list[bytes], results: bytes | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        d = ws.kb_dir / "swe"
        d.mkdir(parents=True)
        for i, body in enumerate(trajs):
            (d / f"inst-{i}.traj").write_bytes(body)
        if results is not None:
            (d / "results.json").write_bytes(results)
        items = list(SweAgentSource(name="swe", directory=d).read(ws, Settings()))
        assert len(items) == len(trajs)
        assert sorted(i.provenance.source_file if isinstance(i, EvidenceRecord) else i.source_ref.source_file
                      for i in items) == sorted(f"_kb/swe/inst-{i}.traj" for i in range(len(trajs)))
        for i in items:
            if isinstance(i, QuarantineRecord):
                assert i.reason and i.errors
            else:
                i.to_json_dict()
                assert score_evidence(i, Settings().score).reasons
        COUNTS["trajectory files"] += len(trajs)


# ------------------------------------------------------------------------------------ scorer

MARKER_KEYS = ["attempt", "accepted", "verdict", "severity", "status", "latency_ms", "failure_markers",
               "observer_verdict", "events", "all_events_ok", "gap_signals", "grounded_fraction", "final_verdict",
               "escalated", "resolved", "eval_buckets", "ok", "event", "field", "map", "verdict_rule"]
MARKER_VALUES = VALUES | st.sampled_from(["accept", "reject", "cycle", "info", "low", "medium", "high", "critical",
                                          "committed", "reverted", "validated_local", "escalated_validated",
                                          "escalated_failed", "failed", "error", 1, 2, 3, 4, 9, 0.5, 130000.0])
SOURCES = [*BUILTIN_CONVERTERS, "swe", "mapped", "unknown_stream"]
TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@st.composite
def evidence(draw: Any) -> EvidenceRecord:
    markers = draw(st.dictionaries(st.sampled_from(MARKER_KEYS), MARKER_VALUES, max_size=8))
    metadata = draw(st.dictionaries(st.sampled_from(["adapter", "events", "verdict_rule", "field", "map", "x"]),
                                    MARKER_VALUES | st.sampled_from(["swe_agent", "mapping"]), max_size=4))
    return EvidenceRecord(
        run_id=draw(st.sampled_from(["r1", "r2", "r3"])) + draw(st.text(max_size=4).filter(lambda s: id_problem(s) is None)),
        task_id=draw(st.sampled_from(["t1", "t2"])),
        source=draw(st.sampled_from(SOURCES)),
        score_class=draw(st.sampled_from(list(ScoreClass))),
        model_role=draw(st.sampled_from(list(ModelRole))),
        text=draw(st.text(max_size=60)),
        markers=markers,
        metadata=metadata,
        parent_run_id=draw(st.none() | st.sampled_from(["p1", "p2", "r1"])),
        created_at=draw(TIMES),
        provenance=Provenance(source_file="_kb/x.jsonl", line_offset=0, line_number=1, sig_hash="0" * 64,
                              recorded_at=datetime(2026, 1, 1, tzinfo=UTC)),
    )


PARENTS = st.lists(st.builds(ParentRun, run_id=st.sampled_from(["p1", "p2", "p3", "r1"]),
                             task_id=st.sampled_from(["t1", "t2"]), category=st.sampled_from(list(Category)),
                             created_at=TIMES), max_size=5)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ev=evidence(), parents=PARENTS)
def test_scorer_never_raises_and_always_says_why(ev: EvidenceRecord, parents: list[ParentRun]) -> None:
    v = score_evidence(ev, Settings().score)
    assert isinstance(v.category, Category) and v.reasons and all(isinstance(r, str) and r for r in v.reasons)
    if ev.score_class is ScoreClass.EXTRACTION:
        assert v.category is Category.NEEDS_HUMAN_REVIEW
    joined = join_extraction(ev, parents)
    if joined is not None:
        same = [p for p in parents if p.run_id == joined.parent_run_id and p.task_id == ev.task_id]
        assert same and joined.category in {p.category for p in same} and joined.reasons
    else:
        assert not [p for p in parents if p.task_id == ev.task_id and p.category is not Category.NEEDS_HUMAN_REVIEW]
    COUNTS["scorer records"] += 1


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(good=st.lists(evidence(), max_size=6), junk=st.lists(lines(), max_size=8), torn=st.booleans())
def test_score_stage_accounts_for_every_evidence_line(good: list[EvidenceRecord], junk: list[bytes], torn: bool) -> None:
    from distill.jsonl import dumps
    from distill.score import run_score

    body = [dumps(e.to_json_dict()) for e in good] + junk
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp))
        part = ws.evidence_dir / "2026" / "01" / "01" / "mixed.jsonl"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"\n".join(body) + (b"" if torn else b"\n"))
        report = run_score(ws, Settings())
        assert report.balanced
        units = [n for n, line in enumerate(body, 1) if line.strip()]
        assert report.totals.rows_in == len(units)
        assert report.totals.written + report.totals.deduped >= len(good) - (1 if torn and good and not junk else 0)
        again = run_score(ws, Settings())  # idempotent over the same junk
        assert again.totals.rows_in == len(units) and again.totals.written == 0
        COUNTS["score stage lines"] += len(body)


def test_zz_report_lines_tried() -> None:
    """Runs last in this module: print the counters (pytest -s) and check the fuzzers really ran."""
    if not COUNTS:
        return  # this test was selected on its own
    summary = {k: COUNTS[k] for k in sorted(COUNTS)}
    print("\nfuzz counters:", json.dumps(summary, indent=1))
    out = os.environ.get("DISTILL_FUZZ_COUNTS")
    if out:
        Path(out).write_text(json.dumps(summary, indent=1) + "\n")
    assert COUNTS["adapter lines"] > 1000 and COUNTS["adapter evidence"] > 20
    assert COUNTS["scorer records"] >= 100


def _scan_join(ev: EvidenceRecord, parents: list[ParentRun]) -> tuple[str, str, str | None] | None:
    """The join as a linear scan over the parents (the scorer's rule before it was indexed): the oracle."""
    same = [p for p in parents if p.task_id == ev.task_id]
    named = [p for p in same if p.run_id == ev.parent_run_id] if ev.parent_run_id else []
    if named:
        return named[0].category.value, "named", named[0].run_id
    cands = [p for p in same if p.category is not Category.NEEDS_HUMAN_REVIEW]
    if not cands:
        return None
    earlier = [p for p in cands if p.created_at <= ev.created_at]
    pick = max(earlier or cands, key=lambda p: (p.created_at, p.run_id))
    return pick.category.value, "earlier" if earlier else "latest", pick.run_id


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ev=evidence(), parents=st.lists(st.builds(
    ParentRun, run_id=st.sampled_from(["p1", "p2", "p3", "r1", "r2"]), task_id=st.sampled_from(["t1", "t2"]),
    category=st.sampled_from(list(Category)), created_at=TIMES), max_size=12))
def test_indexed_join_picks_the_parent_a_scan_picks(ev: EvidenceRecord, parents: list[ParentRun]) -> None:
    joined = join_extraction(ev, parents)
    expected = _scan_join(ev, parents)
    if expected is None:
        assert joined is None
    else:
        assert joined is not None and (joined.category.value, joined.parent_run_id) == (expected[0], expected[2])
        assert ("named parent" in joined.reasons[0]) == (expected[1] == "named")
        assert ("none precedes" in joined.reasons[0]) == (expected[1] == "latest")


@pytest.mark.parametrize("before", [False, True])
def test_join_tie_on_time_and_run_id_goes_to_the_first_listed_parent(before: bool) -> None:
    """Hypothesis found this: one run id listed twice with the same time and different verdicts.
    The index picked the last listed; a scan (and the named-parent lookup) the first."""
    at = datetime(2026, 1, 2, tzinfo=UTC)
    parents = [ParentRun("p1", "t1", Category.ACCEPTED, at), ParentRun("p1", "t1", Category.PARTIALLY_ACCEPTED, at),
               ParentRun("p0", "t1", Category.REJECTED, at)]
    ev = EvidenceRecord(
        run_id="r1", task_id="t1", source="outcomes", score_class=ScoreClass.EXTRACTION, model_role=ModelRole.EXTRACTOR,
        text="x", created_at=at if before else datetime(2025, 1, 1, tzinfo=UTC),
        provenance=Provenance(source_file="_kb/x.jsonl", line_offset=0, line_number=1, sig_hash="0" * 64,
                              recorded_at=datetime(2026, 1, 1, tzinfo=UTC)),
    )
    joined = join_extraction(ev, parents)
    assert joined is not None and (joined.category, joined.parent_run_id) == (Category.ACCEPTED, "p1")
    assert _scan_join(ev, parents) == ("accepted", "earlier" if before else "latest", "p1")

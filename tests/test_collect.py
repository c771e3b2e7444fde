"""Collect engine: conservation, idempotence, byte stability, bad lines, provenance, torn evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from distill.collect import run_collect
from distill.config import Settings
from distill.hashing import sig_hash
from distill.jsonl import iter_json, read_line_at
from distill.records import EvidenceRecord, ModelRole, ScoreClass
from distill.sources.base import JsonlStream, RowContext
from distill.sources.fields import first_timestamp, require_str
from distill.workspace import Workspace, iter_partition_files


def _convert(row: dict[str, Any], ctx: RowContext) -> EvidenceRecord:
    created = first_timestamp(row, "ts")
    return EvidenceRecord(
        run_id=f"{ctx.source}:{require_str(row, 'id')}",
        task_id=require_str(row, "task"),
        source=ctx.source,
        score_class=ScoreClass.VERDICT,
        model_role=ModelRole.REVIEWER,
        text=require_str(row, "text"),
        markers={"verdict": row.get("verdict")},
        created_at=created,
        provenance=ctx.provenance(created),
    )


STREAM = JsonlStream(name="reviews", pattern="reviews.jsonl", convert=_convert)


def _row(i: int, day: int = 1, **extra: Any) -> bytes:
    row = {"id": f"r{i}", "task": f"t{i % 3}", "text": f"review {i}", "ts": f"2026-03-{day:02d}T10:00:00Z", "verdict": "accept"}
    row.update(extra)
    return json.dumps(row).encode()


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    w = Workspace(tmp_path)
    w.kb_dir.mkdir(parents=True)
    lines = [_row(i, day=1 + i % 2) for i in range(6)]
    lines += [
        b"{not json",  # malformed
        b'{"id": "x1", "task": "t", "text": "no time"}',  # missing timestamp
        b'{"id": "x2", "task": "t", "text": 42, "ts": "2026-03-01T00:00:00Z"}',  # wrong type
        b'{"id": "x3", "task": "t", "text": "   ", "ts": "2026-03-01T00:00:00Z"}',  # empty text
        b'{"id": "x4", "task": "t", "text": "caf\xe9", "ts": "2026-03-01T00:00:00Z"}',  # latin-1 byte
        b"[1, 2, 3]",  # not an object
        _row(0),  # exact duplicate of line 1
    ]
    (w.kb_dir / "reviews.jsonl").write_bytes(b"\n".join(lines) + b'\n{"id": "torn", "te')
    return w


def _snapshot(w: Workspace) -> dict[str, bytes]:
    files = iter_partition_files(w.evidence_dir) + [w.quarantine_path("collect")]
    return {str(p): p.read_bytes() for p in files}


def test_conservation_and_reasons(ws: Workspace) -> None:
    report = run_collect(ws, Settings(), sources=[STREAM])
    c = report.by_source["reviews"]
    assert (c.rows_in, c.written, c.deduped, c.quarantined) == (14, 6, 1, 7)
    assert c.balanced and report.balanced
    assert c.by_reason == {
        "malformed_json": 1,
        "missing_timestamp": 1,
        "wrong_type": 1,
        "empty_text": 1,
        "invalid_utf8": 1,
        "not_an_object": 1,
        "torn_line": 1,
    }
    quarantined = list(iter_json(ws.quarantine_path("collect")))
    assert len(quarantined) == 7
    assert all(q["errors"] and q["source_ref"]["source_file"] == "_kb/reviews.jsonl" for q in quarantined)


def test_partitioned_by_created_at(ws: Workspace) -> None:
    run_collect(ws, Settings(), sources=[STREAM])
    rel = sorted(p.relative_to(ws.evidence_dir).as_posix() for p in iter_partition_files(ws.evidence_dir))
    assert rel == ["2026/03/01/reviews.jsonl", "2026/03/02/reviews.jsonl"]


def test_second_run_writes_nothing_and_is_byte_identical(ws: Workspace) -> None:
    run_collect(ws, Settings(), sources=[STREAM])
    first = _snapshot(ws)
    again = run_collect(ws, Settings(), sources=[STREAM])
    assert again.totals.written == 0
    assert again.totals.deduped == 7 and again.totals.quarantined == 7
    assert _snapshot(ws) == first


def test_fresh_workspace_gives_same_bytes(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = Workspace(tmp_path_factory.mktemp("other"))
    other.kb_dir.mkdir(parents=True)
    (other.kb_dir / "reviews.jsonl").write_bytes((ws.kb_dir / "reviews.jsonl").read_bytes())
    run_collect(ws, Settings(), sources=[STREAM])
    run_collect(other, Settings(), sources=[STREAM])
    strip = lambda snap, root: {k.replace(str(root), ""): v for k, v in snap.items()}  # noqa: E731
    assert strip(_snapshot(ws), ws.root) == strip(_snapshot(other), other.root)


def test_provenance_round_trip(ws: Workspace) -> None:
    run_collect(ws, Settings(), sources=[STREAM])
    for path in iter_partition_files(ws.evidence_dir):
        for row in iter_json(path):
            prov = row["provenance"]
            line = read_line_at(ws.root / prov["source_file"], prov["line_offset"])
            assert sig_hash(json.loads(line)) == prov["sig_hash"]


def test_appended_rows_are_collected_incrementally(ws: Workspace) -> None:
    run_collect(ws, Settings(), sources=[STREAM])
    src = ws.kb_dir / "reviews.jsonl"
    data = src.read_bytes()
    src.write_bytes(data[: data.rfind(b"\n") + 1] + _row(100) + b"\n")
    report = run_collect(ws, Settings(), sources=[STREAM])
    assert report.totals.written == 1
    assert report.by_source["reviews"].by_reason.get("torn_line") is None


def test_torn_evidence_tail_is_repaired_and_recollected(ws: Workspace) -> None:
    run_collect(ws, Settings(), sources=[STREAM])
    part = sorted(iter_partition_files(ws.evidence_dir))[0]
    clean = part.read_bytes()
    last_line_start = clean.rstrip(b"\n").rfind(b"\n") + 1
    part.write_bytes(clean[: last_line_start + 20])  # simulate a crash mid-append
    report = run_collect(ws, Settings(), sources=[STREAM])
    assert report.totals.written == 1
    assert part.read_bytes() == clean


def test_dry_run_writes_nothing(ws: Workspace) -> None:
    report = run_collect(ws, Settings(), sources=[STREAM], dry_run=True)
    assert report.totals.written == 6
    assert not ws.evidence_dir.exists() and not ws.quarantine_path("collect").exists()


def test_every_row_is_valid_evidence(ws: Workspace) -> None:
    run_collect(ws, Settings(), sources=[STREAM])
    rows = [EvidenceRecord.model_validate(r) for p in iter_partition_files(ws.evidence_dir) for r in iter_json(p)]
    assert sorted(r.run_id for r in rows) == [f"reviews:r{i}" for i in range(6)]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-2.5e400"])
def test_a_non_json_number_is_quarantined_not_taken_for_null(tmp_path: Path, literal: bytes) -> None:
    """NaN / Infinity / an overflowing float are not JSON; read as floats they canonicalise to null,
    so the row would share its sig_hash (and evidence key) with a twin holding null and be
    deduped against it instead of standing on its own."""
    w = Workspace(tmp_path)
    w.kb_dir.mkdir(parents=True)
    twin = _row(1, cost=None)
    hostile = twin.replace(b'"cost": null', b'"cost": ' + literal)
    assert hostile != twin
    (w.kb_dir / "reviews.jsonl").write_bytes(twin + b"\n" + hostile + b"\n")
    report = run_collect(w, Settings(), sources=[STREAM])
    c = report.by_source["reviews"]
    assert (c.rows_in, c.written, c.deduped, c.quarantined) == (2, 1, 0, 1)
    (q,) = iter_json(w.quarantine_path("collect"))
    assert q["reason"] == "malformed_json" and q["source_ref"]["line_number"] == 2
    assert "not JSON" in q["errors"][0] or "out of range" in q["errors"][0]


@pytest.mark.parametrize("big", [2**128 - 1, -(2**63) - 1, 2**64, 10**40])
def test_rows_that_differ_only_in_an_integer_beyond_64_bits_both_stand(tmp_path: Path, big: int) -> None:
    """orjson reads such an integer as a float without a word: the two rows below would share a
    sig_hash and the second would be deduped against the first (a row lost)."""
    w = Workspace(tmp_path)
    w.kb_dir.mkdir(parents=True)
    first, second = _row(1, trace=big), _row(1, trace=big - 1 if big > 0 else big + 1)
    (w.kb_dir / "reviews.jsonl").write_bytes(first + b"\n" + second + b"\n")
    report = run_collect(w, Settings(), sources=[STREAM])
    c = report.by_source["reviews"]
    assert (c.rows_in, c.written, c.deduped, c.quarantined) == (2, 2, 0, 0)
    rows = [EvidenceRecord.model_validate(r) for p in iter_partition_files(w.evidence_dir) for r in iter_json(p)]
    assert sorted(r.provenance.sig_hash for r in rows) == sorted(
        sig_hash(json.loads(line)) for line in (first, second)
    )

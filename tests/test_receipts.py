"""StageReceipt schema, content-hash stability and the counts validator (the firewall re-read is
tests/test_firewall.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from distill.receipts import (
    ReceiptBasis,
    build_receipt,
    check_counts,
    check_jsonl_integrity,
    digest_file,
    digest_paths,
    git_info,
    load_receipt,
    validation_result,
    write_model,
)
from distill.records.receipts import (
    FileDigest,
    GitInfo,
    ResumeDecision,
    StageReceipt,
    aggregate_hash,
    receipt_content_hash,
)
from distill.records.stage import Counts, StageReport, Tally
from distill.workspace import Workspace

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BASIS = ReceiptBasis(config_hash="a" * 64, full_config_hash="b" * 64, code_version="distill 0.1.0", code_fingerprint="c" * 64)


def _report(written: int = 3, quarantined: int = 1, deduped: int = 0) -> StageReport:
    report = StageReport(stage="score")
    src = report.source("audits")
    for _ in range(written):
        src.bump("written", category="accepted")
    for _ in range(quarantined):
        src.bump("quarantined", reason="malformed_json")
    for _ in range(deduped):
        src.bump("deduped")
    return report.finalize()


def _receipt(ws: Workspace, *, run_id: str = "r1", report: StageReport | None = None, started: datetime = T0,
             git: GitInfo | None = None, errors: list[str] | None = None) -> StageReceipt:
    report = report or _report()
    outputs = digest_paths(ws, [ws.root / "out.jsonl"])
    return build_receipt(
        run_id=run_id,
        stage="score",
        status="ran",
        git=git or GitInfo(sha="1" * 40, branch="main", dirty=False),
        basis=BASIS,
        inputs=digest_paths(ws, [ws.root / "in.jsonl"]),
        outputs=outputs,
        report=report,
        started_at=started,
        finished_at=started + timedelta(seconds=2),
        duration_s=2.0,
        validation=validation_result(errors if errors is not None else check_counts(report)),
        error=None,
        resume=ResumeDecision(action="ran", reasons=["no earlier successful receipt"]),
    )


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    (tmp_path / "in.jsonl").write_bytes(b'{"a":1}\n{"a":2}\n')
    (tmp_path / "out.jsonl").write_bytes(b'{"b":1}\n')
    return Workspace.resolve(tmp_path)


def test_receipt_fields_and_file_digests(ws: Workspace) -> None:
    r = _receipt(ws)
    assert r.schema_version == 1
    assert r.passed
    assert [(d.path, d.bytes, d.records) for d in r.inputs] == [("in.jsonl", 16, 2)]
    assert r.outputs[0].path == "out.jsonl" and r.outputs[0].records == 1
    assert r.totals.rows_in == 4 and r.totals.by_reason == {"malformed_json": 1}
    assert r.inputs_hash == aggregate_hash(r.inputs)
    assert r.content_hash == receipt_content_hash(r.model_dump(mode="json"))


def test_content_hash_ignores_wall_clock_run_id_and_git(ws: Workspace) -> None:
    a = _receipt(ws)
    b = _receipt(ws, run_id="r2", started=T0 + timedelta(days=3), git=GitInfo())
    assert a.content_hash == b.content_hash
    assert a.started_at != b.started_at and a.run_id != b.run_id


def test_content_hash_follows_counts_and_outputs(ws: Workspace) -> None:
    base = _receipt(ws).content_hash
    assert _receipt(ws, report=_report(written=4)).content_hash != base
    (ws.root / "out.jsonl").write_bytes(b'{"b":2}\n')
    assert _receipt(ws).content_hash != base


def test_aggregate_hash_is_order_independent_and_path_sensitive() -> None:
    a = FileDigest(path="x.jsonl", bytes=1, sha256="1" * 64)
    b = FileDigest(path="y.jsonl", bytes=1, sha256="2" * 64)
    assert aggregate_hash([a, b]) == aggregate_hash([b, a])
    swapped = [FileDigest(path="x.jsonl", bytes=1, sha256="2" * 64), FileDigest(path="y.jsonl", bytes=1, sha256="1" * 64)]
    assert aggregate_hash(swapped) != aggregate_hash([a, b])


def test_counts_validator_fails_unbalanced_report(ws: Workspace) -> None:
    report = _report()
    report.by_source["audits"].written += 1  # one row counted out that never came in
    report.finalize()
    errors = check_counts(report)
    assert errors and all(e.startswith("counts_unbalanced") for e in errors)
    r = _receipt(ws, report=report)
    assert not r.passed and r.validation.codes == ["counts_unbalanced"]


def test_totals_must_equal_sum_of_sources() -> None:
    report = _report()
    report.totals = Counts(rows_in=10, written=10)  # balanced by itself, but not the sum of sources
    assert any("sum over sources" in e for e in check_counts(report))


def test_schema_refuses_passing_receipt_with_unbalanced_counts(ws: Workspace) -> None:
    report = _report()
    report.by_source["audits"].written += 1
    report.finalize()
    with pytest.raises(Exception, match="counts do not add up"):
        _receipt(ws, report=report, errors=[])  # a builder that forgot to validate is refused


def test_schema_refuses_edited_receipt(ws: Workspace, tmp_path: Path) -> None:
    r = _receipt(ws)
    path = tmp_path / "reports" / "r1" / "score.json"
    write_model(path, r)
    assert load_receipt(path) == r
    data = json.loads(path.read_text())
    data["totals"]["written"] += 1
    data["totals"]["rows_in"] += 1
    data["by_source"]["audits"]["written"] += 1
    data["by_source"]["audits"]["rows_in"] += 1
    path.write_text(json.dumps(data))
    assert load_receipt(path) is None
    with pytest.raises(ValidationError, match="content_hash"):
        StageReceipt.model_validate(data)


def test_schema_refuses_skip_without_reuse_reference(ws: Workspace) -> None:
    data = _receipt(ws).model_dump(mode="json")
    data["status"] = "skipped"
    with pytest.raises(ValidationError, match="reuses"):
        StageReceipt.model_validate(data)


def test_validation_result_shape() -> None:
    ok = validation_result([])
    assert ok.passed and ok.codes == []
    bad = validation_result(["output_torn: a", "output_torn: b", "firewall_sft_category: c"])
    assert not bad.passed and bad.codes == ["firewall_sft_category", "output_torn"]


def test_jsonl_integrity_catches_torn_and_garbage_lines(ws: Workspace) -> None:
    good = ws.root / "good.jsonl"
    good.write_bytes(b'{"a":1}\n')
    torn = ws.root / "torn.jsonl"
    torn.write_bytes(b'{"a":1}\n{"a":')
    junk = ws.root / "junk.jsonl"
    junk.write_bytes(b'{"a":1}\nnot json\n[1,2]\n')
    digests = digest_paths(ws, [good, torn, junk])
    errors = check_jsonl_integrity(ws, digests)
    assert any(e.startswith("output_torn: torn.jsonl") for e in errors)
    assert any(e.startswith("output_unparseable: junk.jsonl: 2 line(s)") for e in errors)
    assert not any("good.jsonl" in e for e in errors)
    assert digest_file(ws, torn).records == 1  # only complete lines count


def test_git_info_outside_a_checkout_is_none(tmp_path: Path) -> None:
    assert git_info(tmp_path) == GitInfo(sha=None, branch=None, dirty=None)


def test_git_info_of_this_checkout() -> None:
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        pytest.skip("not running from a git checkout")
    info = git_info(repo)
    assert info.sha is not None and len(info.sha) == 40
    assert info.dirty in (True, False)


@pytest.mark.parametrize("inside", ["a.jsonl", "evidence/2026/01/02/x y.jsonl", "ünï/cöde.jsonl", "a/../b.jsonl",
                                    "../outside.jsonl", ".hidden/f"])
def test_rel_path_fast_path_agrees_with_workspace_relative(tmp_path: Path, inside: str) -> None:
    """The receipts' string-slicing rel_path names every path as Workspace.relative does."""
    from distill.receipts import rel_path
    from distill.workspace import Workspace

    ws = Workspace(tmp_path.resolve())
    path = ws.root / inside
    assert rel_path(ws, path) == ws.relative(path)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["written", "quarantined", "deduped"]),
                          st.sampled_from([None, "malformed_json", "duplicate_id"]),
                          st.sampled_from([None, "accepted", "rejected"])), max_size=40))
def test_a_tally_counts_as_a_bump_per_row(rows: list[tuple[str, str, str | None, str | None]]) -> None:
    one_by_one, tallied = StageReport(stage="x"), StageReport(stage="x")
    tally = Tally()
    for source, outcome, reason, category in rows:
        one_by_one.source(source).bump(outcome, reason=reason, category=category)
        tally.bump(source, outcome, reason=reason, category=category)
    tally.into(tallied)
    tally.into(tallied)  # emptied by the first call: adds nothing
    assert tallied.model_dump() == one_by_one.model_dump()
    for source, counts in one_by_one.by_source.items():  # keys first seen in the same order
        assert list(tallied.by_source[source].by_reason) == list(counts.by_reason)
        assert list(tallied.by_source[source].by_category) == list(counts.by_category)
    assert tallied.finalize().balanced


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=700))
def test_a_digest_counts_the_newlines_of_its_file_whatever_the_chunks(tmp_path_factory: pytest.TempPathFactory,
                                                                      data: bytes, chunk: int) -> None:
    """The receipt's line count (a vectorised count per chunk) is bytes.count's, for any bytes
    read in any chunk size."""
    import distill.receipts as receipts
    from distill.receipts import digest_file

    ws = Workspace.resolve(tmp_path_factory.mktemp("nl"))
    path = ws.root / "out.jsonl"
    path.write_bytes(data)
    saved = receipts.CHUNK
    receipts.CHUNK = chunk
    try:
        got = digest_file(ws, path)
    finally:
        receipts.CHUNK = saved
    assert got.records == data.count(b"\n") and got.bytes == len(data)

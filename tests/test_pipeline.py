"""`distill run`: resume, tamper detection, stop-on-failure, determinism and the CLI.

Two layers. The first drives the orchestrator with two small real stages defined here (they
read and write real files in a temp workspace), so every resume/failure path is exercised in
milliseconds. The second runs the real pipeline (collect, score, exports) on the bundled
sample workspace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.cli.run_cmd import parse_duration
from distill.config import Settings as _Settings
from distill.config import load_settings
from distill.errors import UsageError
from distill.hashing import sealed, unsealed
from distill.jsonl import iter_json
from distill.pipeline import execute_run, pipeline_stages, run_pipeline
from distill.receipts import (
    DIGEST_CACHE_VERSION,
    RACY_MARGIN_NS,
    DigestCache,
    ReceiptBasis,
    digest_file,
    latest_run_id,
    load_receipt,
    load_summary,
    receipt_path,
)
from distill.records.receipts import DriftReport, RunSummary
from distill.records.stage import StageReport
from distill.resume import decide_resume
from distill.score_rules import SCORER_VERSION
from distill.workspace import Workspace
from tests.fixtures_pipeline import _stages, _upper


def Settings(**sections: object) -> _Settings:  # noqa: N802 - reads like the class it builds
    """Settings for these tests. Other people edit this checkout while the suite runs, so a
    source-fingerprint change between two runs of one test would rerun stages: resume is pinned
    to the code version here, and the fingerprint rule is tested on decide_resume directly."""
    data: dict[str, object] = {"drift": {"rerun_on_code_change": False}}
    data.update(sections)
    return _Settings.model_validate(data)


def _statuses(summary: RunSummary) -> dict[str, str]:
    return {s.stage: s.status for s in summary.stages}


def test_first_run_writes_every_report(mini: Workspace) -> None:
    result = execute_run(mini, Settings(), stages=_stages())
    s = result.summary
    assert _statuses(s) == {"upper": "ran", "count": "ran"} and s.overall_passed and result.exit_code == 0
    out = result.run_dir
    for name in ("upper.json", "count.json", "summary.json", "summary.md", "drift.json"):
        assert (out / name).is_file(), name
    assert json.loads((mini.reports_dir / "latest.json").read_text())["run_id"] == s.run_id
    receipt = load_receipt(out / "upper.json")
    assert receipt is not None and receipt.totals.rows_in == 31 and receipt.totals.quarantined == 1
    assert [d.path for d in receipt.inputs] == ["_kb/in.jsonl"]
    assert {d.path for d in receipt.outputs} == {"out/upper.jsonl", "exports/quarantine/upper.jsonl"}
    assert receipt.outputs[1].records == 30 or receipt.outputs[0].records == 30
    md = result.summary_md.read_text()
    assert s.run_id in md and "| upper | ran |" in md and "empty_text" in md
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_skips_everything_with_same_content_hashes(mini: Workspace) -> None:
    first = execute_run(mini, Settings(), stages=_stages())
    second = execute_run(mini, Settings(), stages=_stages())
    assert _statuses(second.summary) == {"upper": "skipped", "count": "skipped"}
    assert not (second.run_dir / "summary.png").exists()  # nothing changed: no chart to draw
    assert "nothing changed: every stage was skipped" in second.summary_md.read_text()
    for a, b in zip(first.receipts, second.receipts, strict=True):
        assert a.content_hash == b.content_hash
        assert b.reused is not None and b.reused.run_id == first.summary.run_id and b.reused.content_hash == a.content_hash
        assert "unchanged" in b.resume.reasons[0]
    assert second.summary.run_hash == first.summary.run_hash
    assert second.drift.severity == "ok" and second.drift.previous_run_id == first.summary.run_id
    # a third run reuses the second's receipt but still names the run where the stage ran
    third = execute_run(mini, Settings(), stages=_stages())
    assert third.receipts[0].reused is not None and third.receipts[0].reused.origin_run_id == first.summary.run_id


def test_changed_input_reruns_only_affected_stages(mini: Workspace) -> None:
    execute_run(mini, Settings(), stages=_stages())
    src = mini.kb_dir / "in.jsonl"
    src.write_text(src.read_text() + json.dumps({"text": ""}) + "\n")  # one more bad row
    second = execute_run(mini, Settings(), stages=_stages())
    # upper reran (its input changed) but wrote the same rows, so count's input is unchanged
    assert _statuses(second.summary) == {"upper": "ran", "count": "skipped"}
    assert any("inputs changed: _kb/in.jsonl" in r for r in second.receipts[0].resume.reasons)
    assert [c.stage for c in second.drift.changed_stages] == ["upper"]
    q = next(c for c in second.drift.count_changes if c.scope == "total" and c.metric == "quarantined")
    assert (q.previous, q.current) == (1, 2) and q.over_threshold
    assert second.drift.severity == "warn"

    src.write_text(src.read_text() + json.dumps({"text": "new", "category": "accepted"}) + "\n")
    third = execute_run(mini, Settings(), stages=_stages())
    assert _statuses(third.summary) == {"upper": "ran", "count": "ran"}


def test_config_change_reruns_only_stages_reading_that_section(mini: Workspace) -> None:
    execute_run(mini, Settings(), stages=_stages())
    changed = Settings(score={"scorer_version": "9.9.9"})
    second = execute_run(mini, changed, stages=_stages())
    assert _statuses(second.summary) == {"upper": "skipped", "count": "ran"}
    assert "config changed" in second.receipts[1].resume.reasons
    drift_only = Settings(score={"scorer_version": "9.9.9"}, drift={"threshold_pct": 5, "rerun_on_code_change": False})
    third = execute_run(mini, drift_only, stages=_stages())
    assert _statuses(third.summary) == {"upper": "skipped", "count": "skipped"}, [r.resume.reasons for r in third.receipts]


def test_force_reruns_and_same_output_is_not_a_violation(mini: Workspace) -> None:
    first = execute_run(mini, Settings(), stages=_stages())
    forced = execute_run(mini, Settings(), stages=_stages(), force=True)
    assert _statuses(forced.summary) == {"upper": "ran", "count": "ran"}
    assert forced.receipts[0].resume.forced
    assert [r.content_hash for r in forced.receipts] == [r.content_hash for r in first.receipts]
    assert forced.drift.severity == "ok" and not forced.drift.deterministic_violation


def _settled_run(ws: Workspace) -> None:
    """A run over files that stopped changing more than the racy margin ago, so its digests are saved."""
    time.sleep(RACY_MARGIN_NS / 1e9 + 0.1)
    execute_run(ws, Settings(), stages=_stages())


def _digest_cache(ws: Workspace) -> Any:
    """The saved digest cache's JSON (its seal checked)."""
    body = unsealed(ws.digest_cache_path.read_bytes())
    assert body is not None
    return orjson.loads(body)


def _saved_digests(ws: Workspace) -> dict[str, list]:
    saved = _digest_cache(ws)
    return {Path(e[0]).relative_to(ws.root).as_posix(): e for e in saved["entries"]}


def test_saved_digests_are_trusted_by_the_next_run_and_ignored_by_force(mini: Workspace) -> None:
    first = execute_run(mini, Settings(), stages=_stages())
    _settled_run(mini)
    saved = _saved_digests(mini)
    assert {"_kb/in.jsonl", "out/upper.jsonl", "out/count.jsonl"} <= set(saved)
    real_sha = saved["_kb/in.jsonl"][6]
    # Plant a wrong digest under the file's real stat key: a run that trusts the saved digests
    # (does not re-read the file) sees a changed input; --force re-reads it.
    raw = _digest_cache(mini)
    for entry in raw["entries"]:
        if entry[0].endswith("_kb/in.jsonl"):
            entry[6] = "0" * 64
    mini.digest_cache_path.write_bytes(sealed(orjson.dumps(raw)))  # as distill writes it
    trusting = execute_run(mini, Settings(), stages=_stages())
    assert any("inputs changed: _kb/in.jsonl" in r for r in trusting.receipts[0].resume.reasons)
    forced = execute_run(mini, Settings(), stages=_stages(), force=True)
    assert next(d for d in forced.receipts[0].inputs if d.path == "_kb/in.jsonl").sha256 == real_sha
    assert forced.receipts[0].content_hash == first.receipts[0].content_hash
    assert _saved_digests(mini)["_kb/in.jsonl"][6] == real_sha


def test_same_size_edit_with_restored_mtime_is_not_hidden_by_saved_digests(mini: Workspace) -> None:
    _settled_run(mini)
    _settled_run(mini)
    src = mini.kb_dir / "in.jsonl"
    assert "_kb/in.jsonl" in _saved_digests(mini)
    before = src.stat()
    text = src.read_text()
    src.write_text(text.replace('"row 1"', '"row 7"', 1))  # same size
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime
    assert src.stat().st_size == before.st_size and src.stat().st_mtime_ns == before.st_mtime_ns
    after = execute_run(mini, Settings(), stages=_stages())
    assert _statuses(after.summary)["upper"] == "ran"
    assert any("inputs changed: _kb/in.jsonl" in r for r in after.receipts[0].resume.reasons)


@pytest.mark.parametrize("junk", [b"", b"not json", b'{"version": 2, "entries": []}',  # the last: not sealed
                                  sealed(b'{"version": 99, "entries": []}'), sealed(b'{"version": 2, "entries": [[1]]}'),
                                  # version 1 (no PREFIX_HASH per file): dropped once
                                  sealed(b'{"version": 1, "entries": [["/a", 1, 2, 3, 4, 2, "' + b"f" * 64 + b'", 1]]}')])
def test_unreadable_digest_cache_costs_a_rehash_not_a_failure(mini: Workspace, junk: bytes) -> None:
    execute_run(mini, Settings(), stages=_stages())
    mini.digest_cache_path.write_bytes(junk)
    again = execute_run(mini, Settings(), stages=_stages())
    assert _statuses(again.summary) == {"upper": "skipped", "count": "skipped"} and again.exit_code == 0
    assert _digest_cache(mini)["version"] == DIGEST_CACHE_VERSION


def test_digest_cache_keeps_only_entries_that_settled_before_hashing() -> None:
    now = time.time_ns()
    cache = DigestCache()
    settled = ("/a", 1, 10, now - 3 * RACY_MARGIN_NS, now - 2 * RACY_MARGIN_NS)
    racy_ctime = ("/b", 2, 10, now - 3 * RACY_MARGIN_NS, now - RACY_MARGIN_NS // 2)
    racy_mtime = ("/c", 3, 10, now, now - 2 * RACY_MARGIN_NS)
    for key in (settled, racy_ctime, racy_mtime):
        cache.put(key, (10, "f" * 64, 1, "e" * 32, None), now)
    assert [k for k, _ in cache.persistable()] == [settled]
    assert cache.get(racy_ctime) is not None  # still used within the run that hashed it


def _after_the_file_systems_next_tick(path: Path, probe: Path) -> None:
    """Wait until the file system's clock (a touched probe's ctime) is past `path`'s last change."""
    changed = path.stat().st_ctime_ns
    deadline = time.monotonic() + 5
    while True:
        probe.touch()
        if probe.stat().st_ctime_ns > changed:
            return
        assert time.monotonic() < deadline, "the file system's clock did not move in 5 s"
        time.sleep(0.001)


def test_a_digest_read_off_the_file_systems_clock_is_saved_at_once_and_a_later_edit_is_seen(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"n": 1}\n')
    _after_the_file_systems_next_tick(out, tmp_path / "probe")
    cache = DigestCache(clock=ws.clock_path)
    first = digest_file(ws, out, cache)
    cache.save(ws.digest_cache_path)  # well within the system clock's one-second margin
    saved = _digest_cache(ws)["entries"]
    assert [e[0] for e in saved] == [str(out)], "a file that stopped changing before the clock file was touched is saved"
    # the same size, the mtime put back, within the same tick as the hash or not: the ctime moved
    before = out.stat()
    out.write_bytes(b'{"n": 2}\n')
    os.utime(out, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = digest_file(ws, out, DigestCache.load(ws.digest_cache_path, clock=ws.clock_path))
    assert again.sha256 != first.sha256 and again.bytes == first.bytes


def test_a_file_changed_at_the_clock_files_tick_or_later_is_not_saved(tmp_path: Path) -> None:
    cache = DigestCache(clock=tmp_path / ".distill.clock")
    mark = cache.mark()
    assert mark is not None
    _, at = mark
    for ctime, kept in ((at - 1, True), (at, False), (at + 1, False)):
        key = (f"/f{ctime}", 1, 10, at - 10, ctime)
        cache.put(key, (10, "f" * 64, 1, "e" * 32, None), at, fs_clock=True)
        assert (key in dict(cache.persistable())) is kept
    future_mtime = ("/g", 1, 10, at + 5, at - 10)  # a change later sets the ctime anew, but keep the rule strict
    cache.put(future_mtime, (10, "f" * 64, 1, "e" * 32, None), at, fs_clock=True)
    assert future_mtime not in dict(cache.persistable())


def test_without_a_usable_clock_file_the_system_clocks_margin_applies(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"n": 1}\n')
    _after_the_file_systems_next_tick(out, tmp_path / "probe")
    cache = DigestCache(clock=tmp_path / "no-such-dir" / ".distill.clock")
    assert cache.mark() is None
    digest_file(ws, out, cache)
    assert cache.persistable() == [], "hashed within a second of its last change: not saved"


def test_tampered_output_is_rerun_and_reported(mini: Workspace) -> None:
    first = execute_run(mini, Settings(), stages=_stages())
    out = mini.root / "out" / "upper.jsonl"
    out.write_text(out.read_text() + json.dumps({"text": "INJECTED", "category": "rejected"}) + "\n")
    second = execute_run(mini, Settings(), stages=_stages())
    upper = second.receipts[0]
    assert upper.status == "ran"
    assert any("outputs modified: out/upper.jsonl" in r for r in upper.resume.reasons)
    (finding,) = [f for f in upper.determinism if f.path == "out/upper.jsonl"]
    assert finding.kind == "output_modified" and finding.reference_run_id == first.summary.run_id
    assert second.drift.severity == "alert" and second.drift.deterministic_violation
    assert second.exit_code == 1
    # the rerun restored the deterministic output, so the next run is clean and skips
    assert "INJECTED" not in out.read_text()
    third = execute_run(mini, Settings(), stages=_stages())
    assert _statuses(third.summary) == {"upper": "skipped", "count": "skipped"} and third.drift.severity == "ok"


def test_nondeterministic_stage_is_a_deterministic_violation(mini: Workspace) -> None:
    def stamped(ws: Workspace, settings: _Settings) -> StageReport:
        return _upper(ws, settings, stamp=True)

    execute_run(mini, Settings(), stages=_stages(stamped))
    forced = execute_run(mini, Settings(), stages=_stages(stamped), force=True)
    kinds = {(v.stage, v.kind, v.path) for v in forced.drift.deterministic_violation}
    assert ("upper", "rerun_output_differs", "out/upper.jsonl") in kinds
    assert forced.drift.severity == "alert" and forced.exit_code == 1
    assert forced.receipts[0].validation.codes == ["determinism_violation"]
    assert _statuses(forced.summary) == {"upper": "ran", "count": "not_run"}


def test_deleting_an_output_rebuilds_it_and_the_rebuild_becomes_the_reference(mini: Workspace) -> None:
    def stamped(ws: Workspace, settings: _Settings) -> StageReport:
        return _upper(ws, settings, stamp=True)

    execute_run(mini, Settings(), stages=_stages(stamped))
    (mini.root / "out" / "upper.jsonl").unlink()
    rebuilt = execute_run(mini, Settings(), stages=_stages(stamped))
    upper = rebuilt.receipts[0]
    assert upper.status == "ran" and upper.passed  # a rebuild is not a failure...
    assert [f.kind for f in upper.determinism] == ["rerun_output_differs"]  # ...but the difference is reported
    assert rebuilt.drift.severity == "alert"
    after = execute_run(mini, Settings(), stages=_stages(stamped))
    assert _statuses(after.summary)["upper"] == "skipped" and after.drift.severity == "ok"


def test_unbalanced_counts_fail_the_stage_and_stop_later_stages(mini: Workspace) -> None:
    def buggy(ws: Workspace, settings: _Settings) -> StageReport:
        return _upper(ws, settings, miscount=True)

    result = execute_run(mini, Settings(), stages=_stages(buggy))
    s = result.summary
    assert _statuses(s) == {"upper": "ran", "count": "not_run"}
    assert s.stopped_by is not None and s.stopped_by.stage == "upper" and "counts_unbalanced" in s.stopped_by.reason
    assert not s.overall_passed and result.exit_code == 1
    assert not (result.run_dir / "count.json").exists()
    assert "Run stopped by `upper`" in result.summary_md.read_text()
    # a failed receipt is never reused: the next run reruns the stage
    again = execute_run(mini, Settings(), stages=_stages(buggy))
    assert _statuses(again.summary)["upper"] == "ran"


def test_continue_on_failure_runs_later_stages(mini: Workspace) -> None:
    def buggy(ws: Workspace, settings: _Settings) -> StageReport:
        return _upper(ws, settings, miscount=True)

    result = execute_run(mini, Settings(), stages=_stages(buggy), continue_on_failure=True)
    assert _statuses(result.summary) == {"upper": "ran", "count": "ran"}
    assert result.summary.stopped_by is None and not result.summary.overall_passed and result.exit_code == 1


def test_stage_that_raises_is_a_failed_receipt_not_a_traceback(mini: Workspace) -> None:
    (mini.root / "out").write_text("a file where the stage wants a directory")
    result = execute_run(mini, Settings(), stages=_stages())
    upper = result.receipts[0]
    assert upper.error is not None and upper.validation.codes == ["stage_raised"]
    assert result.summary.stopped_by is not None and result.summary.stopped_by.stage == "upper"
    assert _statuses(result.summary)["count"] == "not_run"


def test_run_lock_refuses_a_concurrent_run(mini: Workspace) -> None:
    from distill.errors import WorkspaceBusy

    with mini.exclusive("collect"):
        with pytest.raises(WorkspaceBusy, match=r"another distill command .*\(`distill collect`, pid"):
            execute_run(mini, Settings(), stages=_stages())
    assert execute_run(mini, Settings(), stages=_stages()).summary.overall_passed  # released


def test_code_fingerprint_change_reruns_unless_pinned(mini: Workspace) -> None:
    first = execute_run(mini, Settings(), stages=_stages())
    receipt = first.receipts[0]
    same = ReceiptBasis(receipt.config_hash, receipt.full_config_hash, receipt.code_version, receipt.code_fingerprint)
    edited = ReceiptBasis(receipt.config_hash, receipt.full_config_hash, receipt.code_version, "f" * 64)
    args = (receipt.inputs, receipt.outputs)
    assert decide_resume(receipt, same, *args, force=False)[0].action == "skipped"
    decision, findings = decide_resume(receipt, edited, *args, force=False)
    assert decision.action == "ran" and "code changed (source fingerprint differs)" in decision.reasons and not findings
    assert decide_resume(receipt, edited, *args, force=False, compare_fingerprint=False)[0].action == "skipped"
    bumped = ReceiptBasis(receipt.config_hash, receipt.full_config_hash, "distill 9.9", receipt.code_fingerprint)
    assert decide_resume(receipt, bumped, *args, force=False, compare_fingerprint=False)[0].action == "ran"


def test_outputs_a_distill_command_recorded_are_no_hand_edit(mini: Workspace) -> None:
    """Outputs that differ from the receipt exactly as `distill export` recorded them: the stage
    reruns and takes them as distill's (no output_modified finding); any other difference is one."""
    receipt = execute_run(mini, Settings(), stages=_stages()).receipts[0]
    same = ReceiptBasis(receipt.config_hash, receipt.full_config_hash, receipt.code_version, receipt.code_fingerprint)
    changed = [d.model_copy(update={"sha256": "e" * 64}) for d in receipt.outputs]
    recorded = {(d.path, d.sha256) for d in changed}
    decision, findings = decide_resume(receipt, same, receipt.inputs, changed, force=False, written_by_command=recorded)
    assert decision.action == "ran" and decision.outputs_by_command and not findings
    other = {(path, "d" * 64) for path, _ in recorded}
    decision, findings = decide_resume(receipt, same, receipt.inputs, changed, force=False, written_by_command=other)
    assert decision.action == "ran" and not decision.outputs_by_command
    assert [f.kind for f in findings] == ["output_modified"] * len(changed)
    unchanged = decide_resume(receipt, same, receipt.inputs, receipt.outputs, force=False, written_by_command=recorded)
    assert unchanged[0].action == "skipped"


def test_output_categories_are_read_back_from_outputs(mini: Workspace) -> None:
    result = execute_run(mini, Settings(), stages=_stages())
    assert result.receipts[0].output_categories == {"accepted": 20, "partially_accepted": 10}
    assert result.summary.stage("upper").output_categories == {"accepted": 20, "partially_accepted": 10}  # type: ignore[union-attr]


def test_parse_duration() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("15m") == 900
    assert parse_duration("1h") == 3600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90") == 90
    assert parse_duration("365d") == 365 * 86400
    for bad in ("", "15x", "m15", "0s", "1h x", "366d", "99999999999999999999h"):  # the last: OverflowError before
        with pytest.raises(UsageError):
            parse_duration(bad)


# ---------------------------------------------------------------- the real pipeline


def real(test: Callable[..., None]) -> Callable[..., None]:
    """The real pipeline on the sample workspace: seconds per run, so marked slow."""
    return pytest.mark.slow(test)
DATA_STAGES = ["collect", "score", "export-preference", "export-rag", "export-sft", "export-card"]
PINNED_TOML = "[drift]\nrerun_on_code_change = false\n"  # see Settings() above


@pytest.fixture(scope="module")
def sample_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample workspace after one `distill run --no-index`; tests copy it."""
    from distill.cli.init_cmd import init_workspace

    root = tmp_path_factory.mktemp("sample") / "ws"
    init_workspace(root, sample=True)
    ws = Workspace.resolve(root)
    ws.config_path.write_text(PINNED_TOML)
    result = execute_run(ws, load_settings(ws.root), include_index=False)
    assert result.summary.overall_passed, result.summary.stopped_by
    return root


@pytest.fixture()
def sample(sample_base: Path, tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(sample_base, root)
    return Workspace.resolve(root)


def _run_cli(ws: Workspace, *args: str) -> tuple[int, dict]:
    res = CliRunner().invoke(app, ["run", "--root", str(ws.root), "--no-index", "--json", *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, json.loads(res.stdout)


@real
def test_sample_first_run_receipts(sample: Workspace) -> None:
    rid = latest_run_id(sample)
    assert rid is not None
    summary = load_summary(sample, rid)
    assert summary is not None and [s.stage for s in summary.stages] == DATA_STAGES
    assert all(s.status == "ran" and s.passed for s in summary.stages)
    for stage in DATA_STAGES:
        r = load_receipt(receipt_path(sample, rid, stage))
        assert r is not None and r.passed and r.totals.balanced
        assert all(c.balanced for c in r.by_source.values())
        assert r.outputs and all(not Path(d.path).is_absolute() for d in r.outputs + r.inputs)
    assert set(summary.datasets) == {"rag", "sft", "preference"}
    assert summary.datasets["sft"] > 0 and summary.datasets["rag"] > 0
    assert load_receipt(receipt_path(sample, rid, "score")).code_version.endswith(f"scorer {SCORER_VERSION}")  # type: ignore[union-attr]


@real
def test_sample_second_run_skips_every_stage(sample: Workspace) -> None:
    before = load_summary(sample, latest_run_id(sample))  # type: ignore[arg-type]
    code, out = _run_cli(sample)
    assert code == 0
    summary = RunSummary.model_validate(out["summary"])
    assert {s.stage: s.status for s in summary.stages} == dict.fromkeys(DATA_STAGES, "skipped")
    assert [s.content_hash for s in summary.stages] == [s.content_hash for s in before.stages]  # type: ignore[union-attr]
    assert summary.run_hash == before.run_hash  # type: ignore[union-attr]
    drift = DriftReport.model_validate(out["drift"])
    assert drift.severity == "ok" and not drift.count_changes
    assert Path(out["summary_md"]).is_file()


@real
def test_sample_changed_source_row_reruns_affected_stages(sample: Workspace) -> None:
    src = sample.kb_dir / "audits.jsonl"
    lines = src.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("resolution") == "fixed":
            row["resolution"] = "false_positive"  # an accepted finding becomes a rejected one
            lines[i] = json.dumps(row).encode()
            break
    else:
        pytest.fail("no fixed audit finding in the sample")
    src.write_bytes(b"\n".join(lines))
    code, out = _run_cli(sample)
    summary = RunSummary.model_validate(out["summary"])
    status = {s.stage: s.status for s in summary.stages}
    assert status["collect"] == "ran" and status["score"] == "ran"
    collect = load_receipt(receipt_path(sample, summary.run_id, "collect"))
    assert collect is not None and any("_kb/audits.jsonl" in r for r in collect.resume.reasons)
    drift = DriftReport.model_validate(out["drift"])
    assert "collect" in [c.stage for c in drift.changed_stages]
    assert any(c.stage == "score" and c.scope == "category" and c.key == "rejected" for c in drift.count_changes)
    # the exports keep the earlier (accepted) version of the edited run and quarantine the new
    # (rejected) one; the firewall judges each version by its own score, so nothing fails
    assert summary.overall_passed and code == 0, summary.stopped_by
    assert all(status[s] == "ran" for s in DATA_STAGES)


@real
def test_sample_bad_row_appended_only_reruns_collect(sample: Workspace) -> None:
    with open(sample.kb_dir / "scrum_reviews.jsonl", "ab") as fh:
        fh.write(b"{this is not json\n")
    code, out = _run_cli(sample)
    summary = RunSummary.model_validate(out["summary"])
    assert {s.stage: s.status for s in summary.stages} == {"collect": "ran", **dict.fromkeys(DATA_STAGES[1:], "skipped")}
    drift = DriftReport.model_validate(out["drift"])
    assert any(c.scope == "reason" and c.key == "malformed_json" for c in drift.count_changes)
    assert code == 0


@real
def test_sample_tampered_export_is_reported(sample: Workspace) -> None:
    sft = sample.sft_path
    original = sft.read_bytes()
    rows = list(iter_json(sft))
    assert rows
    forged = dict(rows[0], id="sft-forged", response="ignore the tests and ship it")
    with open(sft, "ab") as fh:
        fh.write(json.dumps(forged).encode() + b"\n")
    code, out = _run_cli(sample)
    assert code == 1
    drift = DriftReport.model_validate(out["drift"])
    summary = RunSummary.model_validate(out["summary"])
    sft_line = summary.stage("export-sft")
    assert sft_line is not None and sft_line.status == "ran"
    assert drift.severity == "alert"
    found = {(v.stage, v.kind, v.path) for v in drift.deterministic_violation}
    assert ("export-sft", "output_modified", "exports/sft/instruction_response.jsonl") in found
    # the native SFT file is append-only, so the forged row survived the rerun: the stage fails
    # and the stages after it do not run on top of it
    assert sft_line.passed is False and "determinism_violation" in sft_line.error_codes
    assert summary.stopped_by is not None and summary.stopped_by.stage == "export-sft"
    assert summary.stage("export-card").status == "not_run"  # type: ignore[union-attr]
    # still failing on the next run: the forged output is never adopted as the new normal
    code2, out2 = _run_cli(sample)
    assert code2 == 1 and RunSummary.model_validate(out2["summary"]).stage("export-sft").passed is False  # type: ignore[union-attr]
    # deleting the file lets the stage rebuild it byte-identical to the first run
    sft.unlink()
    code3, out3 = _run_cli(sample)
    assert code3 == 0, out3["summary"]["stopped_by"]
    assert sft.read_bytes() == original


@real
def test_sample_failing_stage_stops_later_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import errno

    import distill.score as score_module
    from distill.cli.init_cmd import init_workspace

    init_workspace(tmp_path / "ws", sample=True)
    ws = Workspace.resolve(tmp_path / "ws")
    ws.config_path.write_text(PINNED_TOML)

    @contextlib.contextmanager
    def disk_full(path: Path, **_: object) -> Iterator[None]:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
        yield

    # score's partitions cannot be written (a full disk, as the OS reports it); a file where a
    # folder belongs, which this test used before, is now refused before any stage runs
    # (tests/test_misuse.py::test_14)
    monkeypatch.setattr(score_module, "replace_if_changed", disk_full)
    code, out = _run_cli(ws)
    assert code == 1
    summary = RunSummary.model_validate(out["summary"])
    status = {s.stage: s.status for s in summary.stages}
    assert status["collect"] == "ran" and summary.stage("collect").passed  # type: ignore[union-attr]
    assert summary.stage("score").passed is False  # type: ignore[union-attr]
    assert all(status[s] == "not_run" for s in DATA_STAGES[2:])
    assert summary.stopped_by is not None and summary.stopped_by.stage == "score"
    assert "No space left on device" in str(summary.stopped_by.model_dump()), summary.stopped_by
    md = (ws.reports_dir / summary.run_id / "summary.md").read_text()
    assert "Run stopped by `score`" in md


@real
def test_receipts_cli_prints_latest_and_named_runs(sample: Workspace) -> None:
    runner = CliRunner()
    latest = runner.invoke(app, ["receipts", "--root", str(sample.root), "--latest", "--json"])
    assert latest.exit_code == 0, latest.output
    data = json.loads(latest.stdout)
    rid = data["summary"]["run_id"]
    named = runner.invoke(app, ["receipts", "--root", str(sample.root), "--run-id", rid])
    assert named.exit_code == 0 and rid in named.stdout and "export-sft" in named.stdout
    stage = runner.invoke(app, ["receipts", "--root", str(sample.root), "--run-id", rid, "--stage", "score", "--json"])
    assert stage.exit_code == 0 and json.loads(stage.stdout)["stage"] == "score"
    missing = runner.invoke(app, ["receipts", "--root", str(sample.root), "--run-id", "nope"])
    assert missing.exit_code == 2
    both = runner.invoke(app, ["receipts", "--root", str(sample.root), "--run-id", rid, "--latest"])
    assert both.exit_code == 2


def test_run_pipeline_returns_the_summary(mini: Workspace) -> None:
    s = run_pipeline(mini, Settings(), stages=_stages())
    assert isinstance(s, RunSummary) and s.overall_passed


@pytest.mark.slow
def test_index_stage_has_a_receipt_and_resumes(tmp_path: Path) -> None:
    from tests.fixtures_index import rag_row, write_export

    ws = Workspace.resolve(tmp_path / "ws")
    write_export(ws.root, [rag_row(i) for i in range(12)])
    stages = [s for s in pipeline_stages(include_index=True) if s.name == "index"]
    first = execute_run(ws, Settings(), stages=stages)
    receipt = first.receipts[0]
    assert receipt.status == "ran" and receipt.passed, receipt.validation.errors
    assert [d.path for d in receipt.inputs] == ["exports/rag/playbooks.jsonl"]
    assert {d.path for d in receipt.outputs} == {"index/manifest.json", "index/bm25"}
    assert receipt.totals.rows_in == 12 and receipt.totals.written == 12
    second = execute_run(ws, Settings(), stages=stages)
    assert second.receipts[0].status == "skipped" and second.receipts[0].content_hash == receipt.content_hash
    write_export(ws.root, [rag_row(i) for i in range(13)])  # one new playbook
    third = execute_run(ws, Settings(), stages=stages)
    assert third.receipts[0].status == "ran" and third.receipts[0].totals.written == 1
    assert third.receipts[0].totals.deduped == 12 and third.summary.overall_passed
    shutil.rmtree(ws.index_dir / "chroma")  # the vectors are lost, manifest and BM25 remain
    fourth = execute_run(ws, Settings(), stages=stages)
    assert fourth.receipts[0].status == "ran", fourth.receipts[0].validation.errors
    assert fourth.summary.overall_passed, (fourth.summary.stopped_by, fourth.receipts[0].validation.errors)
    # rebuilt on disk, not into the deleted store's files (chromadb caches a System per path):
    # another process finds all 13 vectors
    count = subprocess.run(
        [sys.executable, "-c", "import sys, chromadb; c = chromadb.PersistentClient(sys.argv[1]); "
         "print(sum(x.count() for x in c.list_collections()))", str(ws.index_dir / "chroma")],
        capture_output=True, text=True, timeout=120, check=True)
    assert count.stdout.split()[-1] == "13", count.stderr[-2000:]


def _outcome(oid: str, ok: bool, day: int) -> dict:
    return {"outcome_id": oid, "scenario_id": "scn-9", "scenario": "Refund a duplicated charge",
            "events": [{"event": "issue_refund", "ok": ok}], "all_events_ok": ok, "gap_signals": 0,
            "answer": f"Refund issued for the duplicated charge ({oid}).", "created_at": f"2026-01-0{day}T00:00:00Z"}


def test_a_late_rejected_parent_stops_the_run_until_the_export_is_rebuilt(tmp_path: Path) -> None:
    """A periodic run after an append: a verdict that arrives late re-scores an extraction row that
    already shipped. The run must stop (the row may already be in someone's training set) and name
    the way out; `distill export --rebuild` removes the row and the next run passes."""
    from distill.cli.init_cmd import init_workspace

    root = tmp_path / "ws"
    init_workspace(root, sample=False)
    ws = Workspace.resolve(root)
    ws.config_path.write_text(PINNED_TOML)
    kb = ws.root / "_kb"
    kb.mkdir(exist_ok=True)
    procedure = {"procedure_id": "dp-9", "title": "How to refund a duplicated charge",
                 "steps": ["Look the order up.", "Check the policy tier.", "Issue the refund."],
                 "origin": {"stream": "outcomes", "task": "scenario:scn-9"}, "extracted_at": "2026-01-03T00:00:00Z"}
    (kb / "distilled_procedures.jsonl").write_bytes(orjson.dumps(procedure) + b"\n")
    outcomes = kb / "outcomes.jsonl"
    outcomes.write_bytes(orjson.dumps(_outcome("oc-1", True, 1)) + b"\n")
    code, first = _run_cli(ws)
    assert code == 0, first
    rag = [r for r in iter_json(ws.rag_path) if r["source_category"] == "distilled_procedures"]
    assert len(rag) == 1 and rag[0]["success_score"] == "accepted"
    shipped = ws.rag_path.read_bytes()

    with open(outcomes, "ab") as fh:  # a rejected run of the same task, created before the procedure
        fh.write(orjson.dumps(_outcome("oc-2", False, 2)) + b"\n")
    code, second = _run_cli(ws)
    assert code != 0 and ws.rag_path.read_bytes() == shipped
    stopped = [s for s in second["summary"]["stages"] if s["stage"] == "export-rag"][0]
    assert any("firewall_rag_stale_row" in e and "--rebuild" in e for e in stopped["errors"]), stopped

    res = CliRunner().invoke(app, ["export", "all", "--rebuild", "--root", str(ws.root)])
    assert res.exit_code == 0 and rag[0]["id"] in res.output, res.output
    assert rag[0]["id"] not in ws.rag_path.read_text()
    code, third = _run_cli(ws)
    assert code == 0, [s for s in third["summary"]["stages"] if not s["passed"]]

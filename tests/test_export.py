"""Export firewall tests on a generated adversarial workspace (and the sample workspace)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from distill.export import convert_hh_rlhf_file, preference_to_hh_rlhf, run_export
from distill.export.formats import preference_to_trl
from distill.export.gates import ContaminationIndex, PathChecker, SecretScanner, paths_in_text
from distill.export.run import firewall_violations, verify_export
from distill.records import Category, PreferenceSample, RagSample, SftSample
from distill.workspace import Workspace
from tests.export_helpers import (
    AWS_KEY,
    BENCH_TASK,
    GITHUB_TOKEN,
    PLANTED,
    PRIVATE_KEY_BLOCK,
    SLACK_TOKEN,
    STRIPE_KEY,
    adversarial_settings,
    build_adversarial,
    read_jsonl,
)

KINDS = ("rag", "sft", "preference")
HH = Path("/work/shared/datasets/hh_rlhf_harmless_test/test.jsonl.gz")


def export_all(adv, settings, **kw):
    return {k: run_export(adv.ws, settings, k, **kw) for k in KINDS}


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.fixture
def adv(tmp_path):
    return build_adversarial(tmp_path)


@pytest.fixture
def exported(adv):
    settings = adversarial_settings(adv)
    reports = export_all(adv, settings, fmt="trl")
    return adv, settings, reports


# --- the firewall on the adversarial file ------------------------------------------------------


def test_conservation_every_exporter(exported):
    adv, _, reports = exported
    for kind, r in reports.items():
        t = r.totals
        assert t.rows_in == adv.scored_lines, kind
        assert t.rows_in == t.written + t.quarantined + t.deduped, kind
        assert r.balanced, kind
        assert t.quarantined == sum(t.by_reason.values()), kind
        assert t.quarantined == len(read_jsonl(adv.ws.quarantine_path(kind))), kind
        assert not firewall_violations(r), r.notes
        assert r.stage == f"export-{kind}"
        assert all(not Path(p).is_absolute() for p in r.inputs + r.outputs)


def test_sft_never_rejected_or_unreviewed(exported):
    adv, settings, _ = exported
    rows = read_jsonl(adv.ws.sft_path)
    assert rows and {r["quality_score"] for r in rows} == {"accepted"}
    # opting partial in adds partial, never rejected / needs_human_review
    run_export(adv.ws, settings, "sft", include_partial=True, include_review=True)
    cats = {r["quality_score"] for r in read_jsonl(adv.ws.sft_path)}
    assert cats == {"accepted", "partially_accepted"}
    q = {r["record_id"]: r["reason"] for r in read_jsonl(adv.ws.quarantine_path("sft"))}
    assert q["sr-app-2"] == "unsafe_sft_category" and q["nhr-1"] == "unsafe_sft_category"
    assert q["fact-acc"] == "category_disallowed"  # extraction-class: no instruction shape


def test_rag_never_rejected_review_only_on_opt_in(exported):
    adv, settings, _ = exported
    rows = read_jsonl(adv.ws.rag_path)
    assert {r["success_score"] for r in rows} == {"accepted", "partially_accepted"}
    assert all(r["provenance"]["sig_hash"] and r["provenance"]["source_file"] for r in rows)
    run_export(adv.ws, settings, "rag", include_review=True)
    cats = [r["success_score"] for r in read_jsonl(adv.ws.rag_path)]
    assert "needs_human_review" in cats and "rejected" not in cats


def test_no_planted_credential_anywhere_under_exports(exported):
    adv, settings, _ = exported
    export_all(adv, settings, fmt="openai")
    export_all(adv, settings, fmt="trl", include_review=True, include_partial=True)
    files = [p for p in adv.ws.exports_dir.rglob("*") if p.is_file()]
    assert len(files) > 10
    for p in files:
        data = p.read_bytes()
        for secret in PLANTED:
            assert secret.encode() not in data, (p, secret)
    for kind in KINDS:
        q = {r["record_id"] for r in read_jsonl(adv.ws.quarantine_path(kind)) if r["reason"] == "secret_detected"}
        assert len(q) >= 7, kind


def test_pairs_never_self_or_identical_and_capped(exported):
    adv, settings, reports = exported
    pairs = read_jsonl(adv.ws.preference_path)
    assert pairs
    for p in pairs:
        assert p["chosen_run_id"] != p["rejected_run_id"]
        assert p["chosen"].strip() != p["rejected"].strip()
        assert p["chosen_category"] == "accepted"
        assert p["rejected_category"] in ("rejected", "partially_accepted")
    per_task: dict[str, int] = {}
    for p in pairs:
        per_task[p["task_id"]] = per_task.get(p["task_id"], 0) + 1
    assert per_task["review:src/store.py"] == settings.export.max_pairs_per_task
    assert [p["rejected_category"] for p in pairs if p["task_id"] == "review:src/app.py"] == [
        "rejected", "partially_accepted"]  # accepted x rejected first, partial as fallback
    cross = [p for p in pairs if p["pairing"] == "cross_source"]
    assert {(p["chosen_run_id"], p["rejected_run_id"]) for p in cross} >= {("sr-util", "obs-util")}
    q = read_jsonl(adv.ws.quarantine_path("preference"))
    reasons = {r["record_id"]: r["reason"] for r in q}
    assert reasons["sr-self"] == "self_pairing"
    assert reasons["sr-same-a"] == reasons["sr-same-r"] == "invalid_preference_pairing"


def test_each_planted_problem_lands_in_quarantine_with_its_reason(exported):
    adv, _, _ = exported
    rag_q = read_jsonl(adv.ws.quarantine_path("rag"))
    by_run: dict[str, set[str]] = {}
    for r in rag_q:
        run = r["detail"].get("evidence_run_id") or r["record_id"]
        by_run.setdefault(str(run), set()).add(r["reason"])
    for run_id, reason in adv.expect.items():
        if run_id.endswith("#dup") or run_id in ("sr-self", "sr-same-a"):
            continue
        assert reason in by_run.get(run_id, set()), (run_id, reason, by_run.get(run_id))
    reasons = {r["reason"] for r in rag_q}
    assert {"duplicate_id", "missing_provenance", "schema_violation", "torn_line", "missing_source_run_id",
            "unsafe_rag_category", "empty_content"} <= reasons
    for r in rag_q:
        assert r["stage"] == "rag" and r["errors"] and r["source_ref"]["source_file"]
    shipped = {r["source_run_id"] for r in read_jsonl(adv.ws.rag_path)}
    assert "path-ok" in shipped  # a/ b/ diff prefixes and existing files pass the path gate


def test_rerun_is_idempotent_and_byte_identical(exported, tmp_path):
    adv, settings, first = exported
    before = tree_digest(adv.ws.exports_dir)
    second = export_all(adv, settings, fmt="trl")
    assert tree_digest(adv.ws.exports_dir) == before
    for kind in KINDS:
        assert second[kind].totals.written == 0
        assert second[kind].totals.deduped == first[kind].totals.written
        assert second[kind].balanced
    # same inputs in a fresh workspace: byte-identical exports
    twin = build_adversarial(tmp_path / "twin")
    export_all(twin, adversarial_settings(twin), fmt="trl")
    assert tree_digest(twin.ws.exports_dir) == before


def test_dry_run_writes_nothing(adv):
    settings = adversarial_settings(adv)
    reports = export_all(adv, settings, dry_run=True, fmt="openai")
    assert not adv.ws.exports_dir.exists()
    assert all(r.dry_run and r.outputs == [] and r.totals.written > 0 for r in reports.values())


def test_firewall_violation_on_disk_is_reported(exported):
    adv, settings, _ = exported
    rows = read_jsonl(adv.ws.sft_path)
    bad = dict(rows[0], id="sft-tampered", quality_score="rejected")
    with open(adv.ws.sft_path, "a") as fh:
        fh.write(json.dumps(bad) + "\n")
    assert verify_export(adv.ws, "sft")
    report = run_export(adv.ws, settings, "sft")
    assert firewall_violations(report)


# --- the schema layer refuses what the exporters filter -----------------------------------------


def test_schema_layer_refuses(exported):
    adv, _, _ = exported
    sft = read_jsonl(adv.ws.sft_path)[0]
    for cat in ("rejected", "needs_human_review"):
        with pytest.raises(ValidationError):
            SftSample.model_validate(dict(sft, quality_score=cat))
    rag = read_jsonl(adv.ws.rag_path)[0]
    with pytest.raises(ValidationError):
        RagSample.model_validate(dict(rag, success_score="rejected"))
    pair = read_jsonl(adv.ws.preference_path)[0]
    with pytest.raises(ValidationError):
        PreferenceSample.model_validate(dict(pair, rejected_run_id=pair["chosen_run_id"]))
    with pytest.raises(ValidationError):
        PreferenceSample.model_validate(dict(pair, rejected=pair["chosen"]))


# --- gates as units ------------------------------------------------------------------------------


def test_secret_scanner_flags_planted_and_spares_prose():
    texts = [
        f"key {AWS_KEY}",
        f"token {GITHUB_TOKEN}",
        PRIVATE_KEY_BLOCK,
        SLACK_TOKEN,
        f'api_key = "{STRIPE_KEY}"',
        f"{AWS_KEY}  # pragma: allowlist secret",
        "Commit 3f786850e387550fdab836ed7e6dc881de23001b fixed `services/ingest/src/batcher.rs`.",
        "sig_hash 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 matches",
        "api_key = os.environ['API_KEY'] is read at start-up; password handling is unchanged.",
        "- Verify the retry budget resets after a partial failure.",
    ]
    hits = SecretScanner().scan(texts)
    assert all(hits[i] for i in range(6)), hits
    assert not any(hits[i] for i in range(6, len(texts))), hits


def test_path_checker_refuses_escapes_without_following_them(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "ok.py").write_text("x")
    (repo / "src" / "inner.py").symlink_to(repo / "src" / "ok.py")
    (repo / "src" / "out.py").symlink_to(tmp_path)
    checker = PathChecker(repo)
    assert checker.problem("src/ok.py") is None
    assert checker.problem("./src/../src/ok.py") is None
    assert checker.problem("src/inner.py") is None  # a symlink that stays inside
    assert checker.problem(str(repo / "src" / "ok.py")) is None
    for bad in ("../../etc/passwd", "/etc/passwd", "src/../../x.py", "src/out.py/anything", "src/nope.py", ""):
        assert checker.problem(bad), bad
    assert paths_in_text("see https://example.com/a/b.py and `src/ok.py`, ../../etc/passwd") == [
        "../../etc/passwd", "src/ok.py"]


def test_contamination_threshold(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"q": BENCH_TASK}) + "\n")
    idx = ContaminationIndex([bench], n=13, threshold=0.1)
    assert idx.problem(f"Notes: {BENCH_TASK}.")
    assert idx.problem("An unrelated review of the batching code with several words in it to make 13-grams.") is None


# --- hh-rlhf interop -----------------------------------------------------------------------------


@pytest.mark.skipif(not HH.exists(), reason="shared hh-rlhf data not mounted")
def test_hh_rlhf_round_trip_is_lossless():
    results = list(convert_hh_rlhf_file(HH))
    assert len(results) == 2312
    converted = [r for r in results if r.sample is not None]
    refused = [r for r in results if r.sample is None]
    # the only refusals are pairs with an empty chosen/rejected answer (our schema refuses empty text)
    assert len(refused) <= 5 and all("at least 1 character" in (r.error or "") for r in refused)
    single = 0
    for r in converted:
        trl = preference_to_trl(r.sample)
        assert preference_to_hh_rlhf(r.sample) == {"chosen": r.original["chosen"], "rejected": r.original["rejected"]}
        assert all(m["role"] == "assistant" for m in trl["chosen"][:1] + trl["rejected"][:1])
        single += len(trl["chosen"]) == 1 and len(trl["rejected"]) == 1
        assert PreferenceSample.model_validate(r.sample.model_dump(mode="json")) == r.sample
    assert single >= len(converted) - 5


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_table_json_and_exit_codes(adv, monkeypatch):
    from typer.testing import CliRunner

    from distill.cli import app

    (adv.ws.root / "distill.toml").write_text(
        f'[export]\nrepo_root = "{adv.repo}"\nbenchmark_files = ["{adv.bench}"]\n'
    )
    runner = CliRunner()
    res = runner.invoke(app, ["export", "all", "--root", str(adv.ws.root), "--format", "trl"])
    assert res.exit_code == 0, res.output
    for word in ("rag", "sft", "preference", "secret_detected", "quarantined"):
        assert word in res.output
    res = runner.invoke(app, ["export", "sft", "--root", str(adv.ws.root), "--json", "--dry-run"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data[0]["stage"] == "export-sft" and data[0]["dry_run"] is True
    with open(adv.ws.sft_path, "a") as fh:  # tamper: a rejected row in SFT must fail the command
        row = read_jsonl(adv.ws.sft_path)[0]
        fh.write(json.dumps(dict(row, id="sft-bad", quality_score="rejected")) + "\n")
    res = runner.invoke(app, ["export", "sft", "--root", str(adv.ws.root)])
    assert res.exit_code == 1
    res = runner.invoke(app, ["export", "nonsense", "--root", str(adv.ws.root)])
    assert res.exit_code == 2

"""Smoke: each benchmark suite's --quick runs from the command line and writes its results
(JSON that parses with the expected figures, a markdown table, PNG plots). No timing assertions:
the figures depend on the machine; what is checked is that they were measured and written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def run_suite(script: str, out: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick", "--out-dir", str(out), *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def check_outputs(out: Path, stem: str, pngs: list[str]) -> dict:
    data = json.loads((out / f"{stem}.json").read_text())
    md = (out / f"{stem}.md").read_text()
    assert md.lstrip().startswith("###") and "|---" in md
    for name in pngs:
        blob = (out / name).read_bytes()
        assert blob.startswith(PNG) and len(blob) > 1000, name
    return data


def test_gate_quality_quick(tmp_path: Path) -> None:
    run_suite("gate_quality.py", tmp_path)
    data = check_outputs(tmp_path, "gate_quality_quick", ["gate_quality_quick.png"])
    assert data["n"] >= 40 and set(data["by_kind"]) == {"grounded", "hedging", "placeholder", "ungrounded", "echo"}
    assert 0 <= data["false_accept_rate"] <= 1 and 0 <= data["false_reject_rate"] <= 1
    assert data["false_accepts"] + data["false_rejects"] == len(data["errors"])


def test_gate_set_generator_reproduces_committed_file(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gate_set", REPO / "benchmarks" / "gate_set.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = [json.loads(line) for line in (REPO / "benchmarks" / "data" / "gate_labelled.jsonl").read_text().splitlines()]
    assert module.build() == committed


def test_pipeline_quick(tmp_path: Path) -> None:
    run_suite("pipeline.py", tmp_path, "--nice", "0")
    data = check_outputs(tmp_path, "pipeline_quick", ["pipeline_quick_stages.png"])
    assert data["rows"] == 1000
    for stage in ("raw", "collect", "score", "export"):
        m = data["stages"][stage]
        assert m["stage_s"] > 0 and m["peak_rss_bytes"] > 0 and m["rows_in"] > 0, stage
    assert data["stages"]["collect"]["rows_in"] == data["rows"]
    assert data["targets"]["ratio"] > 0
    profile = tmp_path / f"pipeline_quick_profile_{data['slowest_stage']}.txt"
    assert "run_stage" in profile.read_text()


def test_scaled_generator_writes_exactly_n_rows(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "data" / "sample"))
    import generate

    info = generate.write_scaled(tmp_path / "kb", 2500)
    lines = sum(len(p.read_bytes().splitlines()) for p in (tmp_path / "kb").glob("*.jsonl"))
    assert info["rows"] == lines == 2500 and info["replicas"] == 3
    reviews = (tmp_path / "kb" / "scrum_reviews.jsonl").read_text()
    assert '"sr-r2x' in reviews and '"sr-r1x' in reviews  # ids are unique per replica


@pytest.mark.slow
def test_escalation_quick(tmp_path: Path) -> None:
    """The suite contract end to end on the real 0.5B (local only: the strong model is the full run's)."""
    proc = run_suite("escalation.py", tmp_path, "--local-only", "--json", timeout=900)
    data = check_outputs(tmp_path, "escalation_quick", ["escalation_quick_rates.png", "escalation_quick_rounds.png"])
    printed = json.loads(proc.stdout)
    for cond in ("retrieval", "no_retrieval"):
        for key in ("n", "escalation_rate", "system_accuracy", "gate_precision", "false_accept", "false_reject"):
            assert key in printed["conditions"][cond], (cond, key)
    assert {r["condition"] for r in data["runs"]} == {"retrieval", "no_retrieval"}
    assert {r["family"] for r in data["runs"]} == {"pubmedqa", "swebench", "sample"}
    for run in data["runs"]:
        assert run["prompt_tokens"] and run["latency_ms"] > 0
        if run["condition"] == "no_retrieval":
            assert run["retrieved"] == 0
    assert data["local_only"] and data["rounds"][0]["round"] == 1
    # what the gate judged is recorded in full: the same gate judging it again gives every verdict back
    rejudge = subprocess.run([sys.executable, str(REPO / "benchmarks" / "escalation_rejudge.py"),
                              str(tmp_path / "escalation_quick.json")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert rejudge.returncode == 0, rejudge.stderr[-4000:]
    again = check_outputs(tmp_path, "escalation_quick_rejudged", [])
    assert again["changed"] == []
    for cond in ("retrieval", "no_retrieval"):
        summary = again["conditions"][cond]["all"]
        assert summary["n"] == printed["conditions"][cond]["n"] and summary["verdicts_changed"] == 0
        assert summary["escalation_rate"] == summary["escalation_rate_recorded"] == printed["conditions"][cond]["escalation_rate"]


def test_rejudge_judges_the_recorded_answers_again(tmp_path: Path) -> None:
    """escalation_rejudge runs the current gate on the recorded answers (not the recorded verdicts):
    an answer recorded as failed that this gate passes is counted as changed, and the system outcome
    of a local answer that now fails, where no strong model was asked, is unknown, not wrong."""
    from benchmarks.escalation_rejudge import rejudge, summarise, system_outcome
    from runtime.check import CheckInput, bundle_of

    evidence = "Rotate the signing key with keyctl, then restart the gateway: it takes about 5 minutes."
    item = CheckInput(id="t", task="How is the signing key rotated?", answer="", context=[{"id": "kb:1", "text": evidence}])
    bundle = bundle_of(item).model_dump(mode="json")
    honest = "Rotate the signing key with keyctl, then restart the gateway; it takes about 5 minutes."
    invented = "Rotate the signing key with keyctl, then restart the gateway; it takes about 45 minutes."
    base = {"family": "sample", "round": 1, "correct": True, "strong_correct": None, "failed_checks": [],
            "system_correct": True}
    runs = [{**base, "task_id": "a", "condition": "no_retrieval", "gate_passed": False, "failed_checks": ["support"],
             "system_correct": False},
            {**base, "task_id": "b", "condition": "no_retrieval", "gate_passed": True}]
    inputs = [{"task_id": "a", "condition": "no_retrieval", "round": 1, "task": item.task, "bundle": bundle,
               "answer": honest, "strong_answer": None},
              {"task_id": "b", "condition": "no_retrieval", "round": 1, "task": item.task, "bundle": bundle,
               "answer": invented, "strong_answer": None}]
    rows = rejudge({"runs": runs}, inputs)
    assert [(r["was_passed"], r["passed"]) for r in rows] == [(False, True), (True, False)]
    assert "support" in rows[1]["failed_checks"]
    assert [system_outcome(r, local_only=False) for r in rows] == [True, None]
    assert [system_outcome(r, local_only=True) for r in rows] == [True, False]
    summary = summarise(rows, local_only=False)
    assert summary["verdicts_changed"] == 2 and summary["system_unknown"] == 1


def test_suites_have_the_contract_form(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks import suites

    for fam, n in (("pubmedqa", 6), ("swebench", 4)):
        tasks, corpus = suites.load_suite(suites.build(fam, n, tmp_path / fam))
        assert len(tasks) == n and corpus
        for t in tasks:
            assert {"id", "task", "gold", "judge", "family"} <= set(t)
        test_ids = {t["id"] for t in tasks}
        dev, _ = suites.load_suite(suites.build(fam, n, tmp_path / f"{fam}-dev", split="dev"))
        assert test_ids.isdisjoint({t["id"] for t in dev})  # tuning never sees the reported tasks


def test_judges() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.escalation import judge

    yes = {"judge": "choice", "gold": "yes", "choices": ["yes", "no", "maybe"]}
    assert judge(yes, "**Yes** - the trial shows it") and not judge(yes, "No, it does not") and not judge(yes, "")
    path = {"judge": "path", "gold": ["django/db/models/query.py"]}
    assert judge(path, "Change django/db/models/query.py: the filter is wrong") and not judge(path, "Change query.py in models")
    assert judge({"judge": "contains", "gold": ["flush"]}, "call Flush first") and judge({"judge": "exact", "gold": "A b"}, " a  B ")


def test_routing_curve_math() -> None:
    """APGR/CPT on a case worked by hand: the gate score ranks the two wrong answers lowest."""
    sys.path.insert(0, str(REPO))
    from benchmarks.escalation import parse_answer, routing

    r = routing([0, 0, 1, 1], [1, 1, 1, 1], [0.1, 0.2, 0.9, 0.9])
    assert r["points"] == [(0.0, 0.0), (0.25, 0.5), (0.5, 1.0), (1.0, 1.0)]
    assert r["apgr"] == pytest.approx(0.75) and r["cpt50"] == 0.25 and r["oracle"]["cpt50"] == 0.25
    inverted = routing([0, 0, 1, 1], [1, 1, 1, 1], [0.9, 0.9, 0.1, 0.2])  # a router that escalates the right ones first
    assert inverted["apgr"] < 0.5 and inverted["cpt50"] == 1.0
    assert parse_answer("**Yes** — the trial shows") == "yes" and parse_answer("The answer is yes") is None


def test_secret_gate_quick(tmp_path: Path) -> None:
    run_suite("secret_gate.py", tmp_path)
    data = json.loads((tmp_path / "secret_gate_quick.json").read_text())
    (row,) = data["corpora"]
    assert row["prefilter_active"] and row["verdict_differences"] == 0 and row["missed_vs_detect_secrets"] == 0
    assert row["prefiltered_flagged"] == row["full_flagged"] > 0


@pytest.mark.slow
def test_serve_load_quick(tmp_path: Path) -> None:
    """A real `distill serve` process under concurrent openai clients: outcomes and the log are checked."""
    run_suite("serve_load.py", tmp_path)
    data = json.loads((tmp_path / "serve_load_quick.json").read_text())
    assert sum(data["outcomes"].values()) == data["clients"] * data["requests_per_client"]
    assert data["torn_log_lines"] == 0 and data["lost_log_lines"] == 0 and data["unclear_responses"] == 0
    assert data["log_lines"] == data["model_calls"] >= data["outcomes"].get("answer", 0) > 0
    assert data["rss_mib"]["samples"] > 0 and data["server_exit_code_after_sigterm"] == 0
    assert "| outcome | count |" in (tmp_path / "serve_load_quick.md").read_text()


@pytest.mark.slow
def test_fusion_quick(tmp_path: Path) -> None:
    """Fusion chosen on dev slices of SciFact and the PubMedQA-built set, reported on test slices."""
    run_suite("fusion.py", tmp_path, "--work-dir", str(tmp_path / "indexes"))
    data = json.loads((tmp_path / "fusion_quick.json").read_text())
    assert set(data["datasets"]) == {"scifact", "pubmedqa"}
    for d in data["datasets"].values():
        scores = d["test_ndcg@10"]["onnx"]
        assert {"dense", "bm25", "hybrid", "hybrid_rrf_equal"} <= set(scores)
        assert all(0 <= v <= 1 for v in scores.values())
        # int8 query weights swap near-ties: on 25 queries one swapped relevant document moves nDCG@10
        # by ~0.01, so the slice gets a looser bound; the 0.005 target is judged on the full splits
        assert abs(d["onnx_vs_torch_delta"]["dense"]) <= 0.025, d["onnx_vs_torch_delta"]
    assert data["chosen_fusion"]["method"] in ("rrf", "score")
    assert len(data["dev_grid"]["scifact"]) == 2 + 9 + 21


@pytest.mark.slow
def test_rerun_quick_matches_a_run_without_caches(tmp_path: Path) -> None:
    """The periodic-run benchmark; its +1 % run (checkpoints, resumed counts and verification)
    gives the exports and counters of the same append run with --force."""
    run_suite("rerun.py", tmp_path, "--check-force")
    data = check_outputs(tmp_path, "rerun_quick", [])
    assert data["rows"] == 2000 and data["rows_added"] == 20
    assert all(action == "skipped" for action in data["unchanged"]["stages"].values())
    assert data["plus_one_percent"]["stages"]["export-rag"] == "ran"
    assert data["plus_one_percent_vs_force"]["exports_identical"] is True
    assert data["plus_one_percent_vs_force"]["counters_identical"] is True


def test_rerun_new_day_moves_only_the_appended_rows(tmp_path: Path) -> None:
    """--appended-on-new-day: each grown stream keeps the base's bytes and only the rows after
    them get the new day (epoch-number timestamps stay)."""
    import re

    sys.path.insert(0, str(REPO / "data" / "sample"))
    import generate  # type: ignore[import-not-found]

    from benchmarks.rerun import NEW_DAY, onto_new_day

    base, grown = tmp_path / "b", tmp_path / "g"
    generate.write_scaled(base, 500)
    generate.write_scaled(grown, 520)
    onto_new_day(base, grown)
    moved = 0
    for stream in sorted(grown.glob("*.jsonl")):
        data, kept = stream.read_bytes(), (base / stream.name).read_bytes()
        assert data.startswith(kept) and NEW_DAY.encode() not in kept
        dates = set(re.findall(rb'"(\d{4}-\d\d-\d\d)T', data[len(kept):]))
        assert dates <= {NEW_DAY.encode()}, (stream.name, dates)
        moved += len(dates)
    assert moved > 5


@pytest.mark.slow
def test_serve_first_token_quick(tmp_path: Path) -> None:
    """Two real `distill serve` processes on the packaged 0.5B, gated and live: every streamed
    request answered in both, the live runs' text sent as it was written (the run records when),
    the gated ones' not, and the model's own prompt time reported for each."""
    run_suite("serve_first_token.py", tmp_path)
    data = json.loads((tmp_path / "serve_first_token_quick.json").read_text())
    for mode in ("gated", "live"):
        summary = data["summary"][mode]
        assert summary["answered"] == summary["requests"] == 2
        for row in data["requests"][mode]:
            assert row["prompt_ms"] > 0 and row["first_token_ms"] <= row["done_ms"] and row["chars"] > 0
            assert (row["server_first_text_ms"] is not None) == (mode == "live")
    assert "| stream mode |" in (tmp_path / "serve_first_token_quick.md").read_text()


def test_claims_quick(tmp_path: Path) -> None:
    """Claims from real abstracts turned round: every sentence passes as written; swapped comparisons
    mostly fail, also those linked by "compared with" / "versus" (none did before they were read),
    and "with" for "without" (or the reverse) fails (1 of 662 did before)."""
    run_suite("claims.py", tmp_path)
    data = check_outputs(tmp_path, "claims_quick", [])
    every, linked = data["comparisons"]["all"], data["comparisons"]["compared with / versus / relative to"]
    assert every["sentences"] >= 10 and every["as_is_right"] == every["as_is_n"] == every["sentences"]
    assert every["swapped_right"] >= 0.75 * every["swapped_n"] and linked["swapped_right"] >= 1
    assert every["converse_right"] >= 0.75 * every["converse_n"]
    negations = data["negations"]["all"]
    assert negations["sentences"] >= 100 and negations["as_is_right"] == negations["as_is_n"]
    assert negations["changed_right"] >= 0.9 * negations["changed_n"]


def test_distinct_hits_quick(tmp_path: Path) -> None:
    """The sample workspace holds texts several runs wrote: the rankers' own top k repeat some, a
    search repeats none and still returns k texts."""
    run_suite("distinct_hits.py", tmp_path)
    data = check_outputs(tmp_path, "distinct_hits_quick", [])
    assert data["index"]["documents_repeating_another"] > 0
    build = data["build"]  # the build encodes a text once: every repeat takes its twin's vector
    assert build["texts_encoded"] + build["vectors_shared"] == build["documents"] == data["index"]["documents"]
    assert build["vectors_shared"] >= data["index"]["documents_repeating_another"]
    runs = data["runs"]
    assert len(runs) == 12 and sum(r["before"]["repeated"] for r in runs) > 0
    for r in runs:
        assert r["after"]["repeated"] == r["after"]["queries_with_repeat"] == 0, r
        assert r["after"]["hits"] == r["queries"] * r["k"], r  # the repeats' places are filled
        assert r["after"]["distinct_per_query"] >= r["before"]["distinct_per_query"], r
    for name in ("review tasks", "RAG row titles"):
        bundle = data["bundle"][name]
        assert bundle["after"]["repeated_items"] == bundle["after"]["repeated_under_another_category"]

def test_every_benchmark_command_prints_its_help() -> None:
    """argparse formats help strings with %, so one unescaped % breaks --help with a traceback."""
    scripts = [p for p in sorted((REPO / "benchmarks").glob("*.py")) if "__main__" in p.read_text()]
    assert len(scripts) >= 10
    for script in scripts:
        proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                              timeout=120, cwd=REPO)
        assert proc.returncode == 0 and "usage:" in proc.stdout, (script.name, proc.stderr[-2000:])


def test_every_benchmark_exits_with_its_mains_code() -> None:
    """`cli(main)` turns an unwritable --out-dir into a one-line error and returns 2; called bare under
    `if __name__ == "__main__":` the process still exited 0 (benchmarks/claims.py did)."""
    for script in sorted((REPO / "benchmarks").glob("*.py")):
        text = script.read_text()
        if '__name__ == "__main__"' in text:
            body = text.split('if __name__ == "__main__":', 1)[1].strip().splitlines()[0]
            assert body.startswith(("raise SystemExit(", "sys.exit(")), (script.name, body)


@pytest.mark.parametrize("args", [["--rows", "0"], ["--nice", "99"], ["--rerender", "/nonexistent/results.json"]])
def test_a_benchmark_refuses_bad_arguments_in_one_line(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pipeline.py"), *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("pipeline.py: error:")


@pytest.mark.slow
@pytest.mark.parametrize("rebuild_first", [False, True])
def test_rerun_ab_quick(tmp_path: Path, rebuild_first: bool) -> None:
    """Two revisions side by side (here HEAD in a worktree against this checkout): each builds its
    own workspace (with `--rebuild-first`, run once more with --force), the +1 % runs alternate,
    and the same code leaves the same exports."""
    run_suite("rerun_ab.py", tmp_path, "--base", "HEAD", *(["--rebuild-first"] if rebuild_first else []))
    data = check_outputs(tmp_path, "rerun_ab_quick", [])
    assert data["rows"] == 2000 and data["pairs"] == 1 and data["rebuild_first"] is rebuild_first
    assert ("after a --force run" in (tmp_path / "rerun_ab_quick.md").read_text()) is rebuild_first
    for side in ("base", "head"):
        assert len(data[side]["cpu_s"]) == 1 and data[side]["median_cpu_s"] > 0
        assert data[side]["exit_codes"] == [0] and "export-rag" in data[side]["median_stage_wall_s"]
        assert data[side]["digests_carried"][0] > 100  # the copy's run finds the digests of files it did not change
    assert data["exports_identical"] is True
    assert data["head_over_base_median_cpu"] > 0

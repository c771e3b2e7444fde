"""Replay end to end: real index, real `ollama`/`openai` clients against loopback servers, real log.

Covers: a grounded answer passes; hedging/placeholder/ungrounded answers fail with the right
reasons; escalation only when allowed (never with --local-only); every backend fault gives a
clear message, a logged run with the error and no hang beyond the timeout; the CLI's output,
--json, batches and exit codes; the stale-index warning; 8 concurrent processes appending.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill.config import load_settings
from distill.errors import UsageError
from distill.jsonl import append_json, iter_json, iter_raw_lines
from distill.records.replay import ReplayRun
from runtime.cli import app
from runtime.replay import ReplayOptions, ReplaySession, task_hash
from tests.fixtures_runtime import GROUNDED_ANSWER, LOCAL_MODEL, ROUTING_TASK, playbook_rows, write_runtime_config
from tests.ollama_server import OllamaLoopback, Reply
from tests.openai_server import ChatReply

REPO = Path(__file__).resolve().parents[1]
# Supported by ROUTING_TASK alone: the answer a run without retrieval can have accepted (the gate's
# support check refuses what neither the task nor a retrieved bundle holds).
PLAIN_ANSWER = "Yes: when the provider times out, the router in the gateway falls back, so provider routing keeps working."


def session(ws, searcher=None, **opts) -> ReplaySession:
    opts.setdefault("backend", "ollama")
    return ReplaySession(ws, load_settings(ws.root), ReplayOptions(**opts), searcher=searcher)


def logged(ws) -> list[ReplayRun]:
    return [ReplayRun.model_validate(row) for row in iter_json(ws.replay_log)]


def failed_checks(attempt) -> set[str]:
    return {c.name for c in attempt.gate.checks if not c.passed}


# --- the gate through the whole pipeline -------------------------------------------------------

def test_grounded_answer_passes_and_the_run_is_logged(ws, ollama_srv, session_searcher) -> None:
    write_runtime_config(ws.root, ollama_srv.url)
    ollama_srv.set_default(Reply(content=GROUNDED_ANSWER, prompt_eval_count=900, eval_count=55))
    run = session(ws, session_searcher).run(ROUTING_TASK, task_id="t-1")

    assert run.final_verdict == "validated_local" and not run.escalated, run.attempts
    assert run.final_output == GROUNDED_ANSWER
    assert run.retrieval_mode == "hybrid" and run.k == 8 and len(run.retrieved) == 7
    assert run.bundle.exemplars[0].title == "Audit provider routing in the gateway"
    assert [i.category for i in run.bundle.exemplars] == ["accepted"] * 3
    assert [i.category for i in run.bundle.warnings] == ["partially_accepted"] * 2
    assert any("openrouter" in s for s in run.bundle.validation_steps)
    assert run.task_hash == task_hash(ROUTING_TASK) and run.task_id == "t-1"
    attempt = run.attempts[0]
    assert attempt.backend == "ollama" and attempt.model == LOCAL_MODEL
    assert attempt.prompt_tokens == 900 and attempt.completion_tokens == 55 and not attempt.truncated
    assert all(c.passed for c in attempt.gate.checks)
    assert {"retrieve", "bundle", "local", "total"} <= set(run.timings_ms)

    # what the model was sent: num_ctx always, retrieved text fenced with the run's nonce
    (request,) = ollama_srv.chat_requests
    assert request["model"] == LOCAL_MODEL and request["options"]["num_ctx"] == 4096
    assert request["options"]["num_predict"] == 512
    user = request["messages"][1]["content"]
    assert f"Reference 1 (accepted, id {run.bundle.exemplars[0].id}" in user and f"[{run.bundle.nonce}]:" in user
    assert "crates/gateway/src/main.rs" in user

    (row,) = logged(ws)
    assert row.model_dump(mode="json") == run.model_dump(mode="json")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("I'm not sure, but " + GROUNDED_ANSWER, {"hedging"}),
        (GROUNDED_ANSWER + "\nTODO: confirm the header check.", {"placeholders"}),
        (GROUNDED_ANSWER.replace("crates/gateway/src/main.rs", "src/routing/provider_table.py"), {"grounding"}),
        ("ok", {"length", "checklist_overlap"}),
    ],
    ids=["hedging", "placeholder", "ungrounded", "too-short"],
)
def test_bad_answers_fail_with_the_right_reasons(ws, ollama_srv, openai_srv, session_searcher, answer, expected) -> None:
    write_runtime_config(ws.root, ollama_srv.url, openai_srv.base_url)
    ollama_srv.set_default(Reply(content=answer))
    run = session(ws, session_searcher).run(ROUTING_TASK)
    assert run.final_verdict == "failed" and not run.escalated
    assert failed_checks(run.attempts[0]) == expected
    if expected == {"grounding"}:
        reason = next(c.reason for c in run.attempts[0].gate.checks if c.name == "grounding")
        assert "src/routing/provider_table.py" in reason
    assert openai_srv.state.requests == []  # no escalation without --allow-escalation
    assert len(logged(ws)) == 1


def test_no_retrieval_is_the_explicit_baseline(ws, ollama_srv) -> None:
    write_runtime_config(ws.root, ollama_srv.url)
    ollama_srv.set_default(Reply(content=GROUNDED_ANSWER))
    run = session(ws, no_retrieval=True).run(ROUTING_TASK)
    assert run.retrieval_mode == "none" and run.k == 0 and run.retrieved == []
    assert run.bundle.exemplars == [] and run.bundle.validation_steps == []
    assert "No retrieved context" in ollama_srv.chat_requests[0]["messages"][1]["content"]
    # the same answer is ungrounded and unsupported without the bundle: its paths and facts came from nowhere
    assert run.final_verdict == "failed" and failed_checks(run.attempts[0]) == {"grounding", "support"}


# --- escalation -------------------------------------------------------------------------------

def test_escalation_when_allowed(ws, ollama_srv, openai_srv, session_searcher) -> None:
    write_runtime_config(ws.root, ollama_srv.url, openai_srv.base_url)
    ollama_srv.set_default(Reply(content="It might be " + GROUNDED_ANSWER))
    openai_srv.script(ChatReply(content=GROUNDED_ANSWER, prompt_tokens=1000, completion_tokens=70))
    run = session(ws, session_searcher, allow_escalation=True).run(ROUTING_TASK)
    assert run.escalated and run.final_verdict == "escalated_validated"
    local, big = run.attempts
    assert not local.gate.passed and not local.escalation
    assert big.escalation and big.backend == "openai" and big.model == "big-model" and big.gate.passed
    assert (big.prompt_tokens, big.completion_tokens) == (1000, 70)
    assert run.final_output == GROUNDED_ANSWER
    (req,) = openai_srv.state.requests
    assert req["model"] == "big-model" and req["messages"] == ollama_srv.chat_requests[0]["messages"]
    assert logged(ws)[0].final_verdict == "escalated_validated"


def test_escalation_that_also_fails(ws, ollama_srv, openai_srv, session_searcher) -> None:
    write_runtime_config(ws.root, ollama_srv.url, openai_srv.base_url)
    ollama_srv.set_default(Reply(content="TODO"))
    openai_srv.script(ChatReply(content="As an AI I cannot be certain where routing lives."))
    run = session(ws, session_searcher, allow_escalation=True).run(ROUTING_TASK)
    assert run.final_verdict == "escalated_failed" and len(run.attempts) == 2


def test_no_escalation_when_the_local_answer_passes(ws, ollama_srv, openai_srv, session_searcher) -> None:
    write_runtime_config(ws.root, ollama_srv.url, openai_srv.base_url)
    ollama_srv.set_default(Reply(content=GROUNDED_ANSWER))
    run = session(ws, session_searcher, allow_escalation=True).run(ROUTING_TASK)
    assert run.final_verdict == "validated_local" and not run.escalated and openai_srv.state.requests == []


def test_local_only_never_escalates(ws, ollama_srv, openai_srv, session_searcher) -> None:
    write_runtime_config(ws.root, ollama_srv.url, openai_srv.base_url)
    ollama_srv.set_default(Reply(content="TODO"))
    run = session(ws, session_searcher, local_only=True).run(ROUTING_TASK)
    assert run.final_verdict == "failed" and not run.escalated and openai_srv.state.requests == []
    with pytest.raises(UsageError, match="contradict"):
        ReplayOptions(local_only=True, allow_escalation=True)


def test_local_backend_error_escalates_when_allowed(ws, ollama_srv, openai_srv) -> None:
    write_runtime_config(ws.root, ollama_srv.url, openai_srv.base_url)
    ollama_srv.set_default(Reply(fault="http500"))
    openai_srv.script(ChatReply(content=PLAIN_ANSWER))
    run = session(ws, no_retrieval=True, allow_escalation=True).run(ROUTING_TASK)
    assert run.final_verdict == "escalated_validated"
    assert "HTTP 500" in run.attempts[0].error and run.attempts[1].gate.passed


def test_escalation_backend_failure_is_logged(ws, ollama_srv, openai_srv) -> None:
    write_runtime_config(ws.root, ollama_srv.url, openai_srv.base_url)
    ollama_srv.set_default(Reply(content="TODO"))
    openai_srv.script(ChatReply(fault="http500"))
    run = session(ws, no_retrieval=True, allow_escalation=True).run(ROUTING_TASK)
    assert run.final_verdict == "escalated_failed"
    assert "HTTP 500" in run.attempts[1].error and run.final_output == "TODO"


# --- backend faults ---------------------------------------------------------------------------

FAULTS = [
    (Reply(fault="http404"), f"`ollama pull {LOCAL_MODEL}`"),
    (Reply(fault="http500"), "HTTP 500"),
    (Reply(fault="malformed", content="abcdefghijklmnop"), "not valid JSON"),
    (Reply(fault="drop", content="abcdefghijklmnop"), "broke mid-reply"),
    (Reply(fault="slow", delay_s=20), "in time"),
]


@pytest.mark.parametrize(("reply", "message"), FAULTS, ids=[f[0].fault for f in FAULTS])
def test_every_fault_is_a_clear_logged_error_without_hanging(ws, ollama_srv, reply, message) -> None:
    write_runtime_config(ws.root, ollama_srv.url, timeout_s=1.5)
    ollama_srv.script(reply)
    start = time.monotonic()
    run = session(ws, no_retrieval=True).run(ROUTING_TASK)
    elapsed = time.monotonic() - start
    assert elapsed < 1.5 + 2.0, elapsed
    assert run.final_verdict == "error" and run.final_output == ""
    (attempt,) = run.attempts
    assert message in attempt.error and ollama_srv.url in attempt.error
    assert attempt.gate is None
    (row,) = logged(ws)
    assert row.attempts[0].error == attempt.error


def test_missing_model_is_reported_from_the_tags_check(ws) -> None:
    with OllamaLoopback(models=["llama3.2:1b"]) as srv:
        write_runtime_config(ws.root, srv.url)
        s = session(ws, no_retrieval=True)
        run1 = s.run(ROUTING_TASK)
        run2 = s.run(ROUTING_TASK + " again")
        assert f"run `ollama pull {LOCAL_MODEL}`" in run1.attempts[0].error
        assert run2.final_verdict == "error"
        assert srv.chat_requests == []  # no prompt is sent to a model that is not there
    assert len(logged(ws)) == 2


def test_prompt_truncation_is_detected(ws, ollama_srv) -> None:
    write_runtime_config(ws.root, ollama_srv.url)
    ollama_srv.set_default(Reply(content=PLAIN_ANSWER, prompt_eval_count=4096))
    run = session(ws, no_retrieval=True).run(ROUTING_TASK)
    assert run.attempts[0].truncated


# --- CLI ------------------------------------------------------------------------------------------

def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def test_cli_default_output_with_real_retrieval(ws, ollama_srv) -> None:
    write_runtime_config(ws.root, ollama_srv.url)
    ollama_srv.set_default(Reply(content=GROUNDED_ANSWER))
    result = invoke("--root", str(ws.root), "--task", ROUTING_TASK, "--backend", "ollama")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "answer" in out and "ProviderAdapter" in out
    assert "grounding" in out and "checklist_overlap" in out and "pass" in out
    assert "escalated: no" in out and "validated_local" in out
    assert f"logged to: {ws.replay_log}" in out.replace("\n", "")
    assert logged(ws)[0].retrieval_mode == "hybrid"


def test_cli_json_and_gate_failure_exit_1(ws, ollama_srv) -> None:
    write_runtime_config(ws.root, ollama_srv.url)
    ollama_srv.set_default(Reply(content="I don't know. " + PLAIN_ANSWER))
    result = invoke("--root", str(ws.root), "--task", ROUTING_TASK, "--backend", "ollama", "--no-retrieval", "--json")
    assert result.exit_code == 1, result.output
    run = ReplayRun.model_validate_json(result.stdout)
    assert run.final_verdict == "failed" and run.retrieval_mode == "none"


def test_cli_takes_backend_k_and_mode_from_settings_and_flags_override(ws, ollama_srv, monkeypatch) -> None:
    """[runtime] backend/k/mode in distill.toml, then DISTILL_RUNTIME__* over it, then flags over both."""
    write_runtime_config(ws.root, ollama_srv.url)
    with open(ws.root / "distill.toml", "a") as fh:
        fh.write('backend = "ollama"\nk = 2\nmode = "bm25"\n')
    ollama_srv.set_default(Reply(content=GROUNDED_ANSWER))

    def run_of(*flags: str) -> ReplayRun:
        result = invoke("--root", str(ws.root), "--task", ROUTING_TASK, "--json", *flags)
        assert result.exit_code in (0, 1), result.output
        return ReplayRun.model_validate_json(result.stdout)

    from_toml = run_of()
    assert (from_toml.retrieval_mode, from_toml.k, from_toml.attempts[0].backend) == ("bm25", 2, "ollama")
    assert len(from_toml.retrieved) == 2
    monkeypatch.setenv("DISTILL_RUNTIME__MODE", "jaccard")
    monkeypatch.setenv("DISTILL_RUNTIME__K", "3")
    from_env = run_of()
    assert (from_env.retrieval_mode, from_env.k) == ("jaccard", 3)
    from_flags = run_of("--mode", "dense", "--k", "1")
    assert (from_flags.retrieval_mode, from_flags.k) == ("dense", 1)


def test_cli_backend_unavailable_exit_2(ws) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    write_runtime_config(ws.root, f"http://127.0.0.1:{port}")
    result = invoke("--root", str(ws.root), "--task", ROUTING_TASK, "--backend", "ollama", "--no-retrieval")
    assert result.exit_code == 2
    assert "cannot connect to Ollama" in result.output
    assert logged(ws)[0].final_verdict == "error"


@pytest.mark.parametrize(
    "args",
    [[], ["--task", "x", "--tasks-file", "f.jsonl"], ["--task", "x", "--local-only", "--allow-escalation"], ["--task", "   "]],
    ids=["none", "both", "contradiction", "blank"],
)
def test_cli_usage_errors_exit_2(ws, args) -> None:
    result = invoke("--root", str(ws.root), "--no-retrieval", *args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output


def test_cli_tasks_file_batch(ws, ollama_srv, tmp_path) -> None:
    write_runtime_config(ws.root, ollama_srv.url)
    ollama_srv.set_default(Reply(content=PLAIN_ANSWER))
    ollama_srv.script(Reply(content=PLAIN_ANSWER), Reply(content="TODO"))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps({"task": ROUTING_TASK, "task_id": "a"}) + "\n"
        + json.dumps({"task": ROUTING_TASK + " (breaker)", "id": 7}) + "\n"
        + "{not json\n"
        + json.dumps(ROUTING_TASK + " (scheduler)") + "\n"
        + json.dumps({"task": ""}) + "\n"
    )
    result = invoke("--root", str(ws.root), "--tasks-file", str(tasks), "--backend", "ollama", "--no-retrieval", "--json")
    assert result.exit_code == 2, result.output  # two unusable lines: the user must see them
    summary = json.loads(result.stdout)
    assert summary["tasks"] == 3 and summary["skipped_lines"] == 2
    assert summary["verdicts"] == {"failed": 1, "validated_local": 2}
    assert [r["task_id"] for r in summary["runs"]] == ["a", "7", None]
    assert "tasks.jsonl:3" in result.output and "tasks.jsonl:5" in result.output
    assert [r.task_id for r in logged(ws)] == ["a", "7", None]


def test_a_utf16_tasks_file_is_named_line_by_line(tmp_path: Path) -> None:
    """The stdlib's parser decoded a UTF-16 line that starts at an even byte and not the others."""
    from runtime.cli import read_tasks

    tasks = tmp_path / "tasks16.jsonl"
    tasks.write_bytes("".join(json.dumps({"task": f"task {i}"}) + "\n" for i in range(3)).encode("utf-16"))
    found, bad = read_tasks(tasks)
    assert found == [] and len(bad) == 4 and all("UTF-16" in b for b in bad)
    (tmp_path / "tasks8.jsonl").write_text(json.dumps({"task": "caf\u00e9"}) + "\n")
    assert read_tasks(tmp_path / "tasks8.jsonl") == ([("caf\u00e9", None)], [])


def test_a_task_id_with_a_control_character_is_named_in_the_tasks_file(tmp_path: Path) -> None:
    """The logged run would be quarantined at collect for its id; the batch says so before any model call."""
    from runtime.cli import read_tasks

    tasks = tmp_path / "tasks.jsonl"
    lines = [{"task": "a", "task_id": "t\u00001"}, {"task": "b", "task_id": "t\u202e2"}, {"task": "c", "task_id": "t\ud8003"},
             {"task": "d", "task_id": "t-4"}]
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    found, bad = read_tasks(tasks)
    assert found == [("d", "t-4")]
    assert [b.startswith(f"{tasks}:{n}:") for n, b in enumerate(bad, 1)] == [True] * 3, bad
    assert "U+0000" in bad[0] and "U+202E" in bad[1] and "surrogate" in bad[2], bad


# --- stale index ------------------------------------------------------------------------------

def test_warns_when_the_export_is_newer_than_the_index(ws, ollama_srv, session_searcher) -> None:
    write_runtime_config(ws.root, ollama_srv.url)
    ollama_srv.set_default(Reply(content=GROUNDED_ANSWER))
    manifest_mtime = (ws.index_dir / "manifest.json").stat().st_mtime
    # touched but unchanged: not stale
    os.utime(ws.rag_path, (manifest_mtime + 10, manifest_mtime + 10))
    assert session(ws, session_searcher).run(ROUTING_TASK).warnings == []
    # new content after the index was built: stale
    extra = playbook_rows()[0] | {"id": "rag-00000000000000ff", "source_run_id": "run-extra"}
    append_json(ws.rag_path, [extra])
    os.utime(ws.rag_path, (manifest_mtime + 20, manifest_mtime + 20))
    run = session(ws, session_searcher).run(ROUTING_TASK)
    assert len(run.warnings) == 1 and "older than" in run.warnings[0] and "distill index" in run.warnings[0]


# --- concurrency ------------------------------------------------------------------------------

@pytest.mark.slow
def test_eight_processes_append_whole_parseable_lines(ws, ollama_srv, tmp_path) -> None:
    write_runtime_config(ws.root, ollama_srv.url)
    ollama_srv.set_default(Reply(content=" ".join([PLAIN_ANSWER] * 20)))  # long lines make interleaving visible
    n = 3
    procs = []
    for p in range(8):
        tasks = tmp_path / f"tasks{p}.jsonl"
        tasks.write_text("".join(json.dumps({"task": f"{ROUTING_TASK} #{p}-{i}", "task_id": f"{p}-{i}"}) + "\n" for i in range(n)))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "runtime.cli", "--root", str(ws.root), "--tasks-file", str(tasks),
                 "--backend", "ollama", "--no-retrieval", "--json"],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        )
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    raw = list(iter_raw_lines(ws.replay_log))
    assert len(raw) == 8 * n and all(r.terminated for r in raw)
    runs = logged(ws)
    assert len({r.run_id for r in runs}) == 8 * n
    assert sorted(r.task_id for r in runs) == sorted(f"{p}-{i}" for p in range(8) for i in range(n))


# --- import cost --------------------------------------------------------------------------------

HEAVY = ("torch", "sentence_transformers", "chromadb", "transformers", "openai", "xllamacpp")


def test_baseline_replay_imports_no_heavy_module(ws, ollama_srv) -> None:
    """A --no-retrieval replay on Ollama loads neither the index stack nor other backends' clients."""
    write_runtime_config(ws.root, ollama_srv.url)
    ollama_srv.set_default(Reply(content=PLAIN_ANSWER))
    code = (
        "import sys, runtime.cli as c\n"
        "early = sorted(m for m in %r if m in sys.modules)\n"
        "sys.argv = ['replay', '--root', %r, '--task', 'x y z', '--backend', 'ollama', '--no-retrieval', '--json']\n"
        "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', early, sorted(m for m in %r if m in sys.modules), file=sys.stderr)\n"
    ) % (HEAVY + ("ollama",), str(ws.root), HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY"))
    assert line == "HEAVY [] []", line
    assert len(ollama_srv.chat_requests) == 1


# --- the loop: replay runs become evidence and scores ------------------------------------------

def test_replay_log_is_collected_and_scored_as_spec_says(tmp_path, ollama_srv, openai_srv) -> None:
    from distill.collect import iter_evidence, run_collect
    from distill.records.scored import ScoredRun
    from distill.score import run_score
    from distill.workspace import Workspace, iter_partition_files

    ws = Workspace(tmp_path / "loop")
    ws.kb_dir.mkdir(parents=True)
    write_runtime_config(ws.root, ollama_srv.url, openai_srv.base_url, timeout_s=2)
    ollama_srv.script(Reply(content=PLAIN_ANSWER), Reply(content="TODO"), Reply(content="TODO"), Reply(fault="http500"))
    openai_srv.script(ChatReply(content=PLAIN_ANSWER))
    runs = [
        session(ws, no_retrieval=True).run(ROUTING_TASK + " A"),
        session(ws, no_retrieval=True, allow_escalation=True).run(ROUTING_TASK + " B"),
        session(ws, no_retrieval=True, local_only=True).run(ROUTING_TASK + " C"),
        session(ws, no_retrieval=True).run(ROUTING_TASK + " D"),
    ]
    assert [r.final_verdict for r in runs] == ["validated_local", "escalated_validated", "failed", "error"]

    collected = run_collect(ws, load_settings(ws.root))
    # the run no model answered (a dead backend) is not evidence: quarantined, never scored
    assert collected.by_source["replay_runs"].written == 3
    assert collected.by_source["replay_runs"].by_reason == {"no_model_answer": 1}
    evidence = {ev.run_id: ev for _, ev in iter_evidence(ws)}
    assert {ev.instruction for ev in evidence.values()} == {ROUTING_TASK + f" {x}" for x in "ABC"}
    run_score(ws, load_settings(ws.root))
    scored = [ScoredRun.model_validate(row) for p in iter_partition_files(ws.scored_dir) for row in iter_json(p)]
    by_verdict = {evidence[s.evidence_run_id].markers["final_verdict"]: s.category for s in scored}
    assert by_verdict == {
        "validated_local": "accepted",
        "escalated_validated": "partially_accepted",
        "failed": "rejected",
    }


# --- replay --check: the gate alone on answers from any system ----------------------------------

def test_check_prints_one_verdict_per_answer_and_exits_by_the_worst(tmp_path) -> None:
    good = {"id": "g", "task": "Does X reduce Y?", "answer": "Yes: in the trial of 120 patients X reduced Y by 45%.",
            "context": [{"id": "c1", "text": "In a trial of 120 patients, X reduced Y by 45%."}]}
    fabricated = dict(good, id="f", answer="Yes: in the trial of 900 patients X reduced Y by 80%.")
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps(good) + "\n\n")
    result = invoke("--check", str(path), "--root", str(tmp_path))
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["id"] == "g" and row["passed"] and {c["name"] for c in row["checks"]} >= {"support", "grounding", "length"}

    path.write_text(json.dumps(good) + "\n" + json.dumps(fabricated) + "\n")
    result = invoke("--check", str(path), "--json")
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["passed"] for r in rows] == [True, False]
    support = next(c for c in rows[1]["checks"] if c["name"] == "support")
    assert not support["passed"] and "'80%'" in support["reason"]
    assert not (tmp_path / "_kb").exists()  # nothing logged


def test_check_reports_bad_lines_and_exits_2(tmp_path) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text('{"id": "x", "task": "t"}\nnot json\n')
    result = invoke("--check", str(path))
    assert result.exit_code == 2
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert "answer" in rows[0]["error"] and "not JSON" in rows[1]["error"]
    assert invoke("--check", str(tmp_path / "missing.jsonl")).exit_code == 2
    assert invoke("--check", str(path), "--task", "x").exit_code == 2


@pytest.mark.parametrize("task_id", [{"a": 1}, [1], 1.5, True, "\u200b", " "])
def test_a_task_id_that_is_not_a_string_or_an_integer_is_named_not_logged_as_its_repr(tmp_path: Path, task_id: Any) -> None:
    from runtime.cli import read_tasks

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"task": "route the ticket", "task_id": task_id}) + "\n"
                     + json.dumps({"task": "route it again", "task_id": 7}) + "\n"
                     + json.dumps({"task": "and again", "id": "T-9"}) + "\n")
    found, bad = read_tasks(tasks)
    assert found == [("route it again", "7"), ("and again", "T-9")]
    assert len(bad) == 1 and "tasks.jsonl:1" in bad[0] and "task_id" in bad[0]

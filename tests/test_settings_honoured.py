"""Every field of the typed settings is read by the code it configures.

One probe per leaf field of `distill.config.Settings` (a test fails when a field is added without
one). Each probe sets a non-default value, once in ROOT/distill.toml and once as a
DISTILL_<SECTION>__<FIELD> environment variable, and runs the real code that the field configures
(collect, score, the exporters' firewall, the index, the backends, the replay loop against
loopback servers, the gate, the pipeline): the observed behaviour must differ from the default's,
and the environment must give the same behaviour as the file.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from distill.config import Settings, load_settings
from distill.records import Category, ModelRole, ScoreClass
from distill.workspace import Workspace
from index.stage import IndexStage
from tests.export_helpers import Row, write_rows
from tests.fixtures_pipeline import _stages, independent_stages, worker_stages
from tests.fixtures_reliability import SAMPLE_KB
from tests.fixtures_runtime import GROUNDED_ANSWER, LOCAL_MODEL, ROUTING_TASK
from tests.ollama_server import OllamaLoopback, Reply
from tests.openai_server import OpenAILoopback


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of the settings' leaf fields (a list of mappings counts as one field)."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += leaf_fields(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


@dataclass
class World:
    """Real servers and a real index shared by the probes of one test."""

    tmp: Path
    ollama: OllamaLoopback
    ollama2: OllamaLoopback
    openai: OpenAILoopback
    indexed: Path
    embedder: Any
    searcher: Any
    silent_host: str

    def workspace(self, name: str) -> Workspace:
        root = self.tmp / name
        root.mkdir(parents=True, exist_ok=True)
        return Workspace(root)


@dataclass
class Probe:
    value: Any
    observe: Callable[[Settings, World], Any]
    base: dict[str, dict[str, Any]] = field(default_factory=dict)  # other settings the probe needs


# --------------------------------------------------------------------------------- observations


def _collect(s: Settings, w: World, files: tuple[str, ...] = ("audits.jsonl",), replay: bool = False) -> Any:
    from distill.collect import run_collect

    ws = w.workspace(f"collect-{time.monotonic_ns()}")
    ws.kb_dir.mkdir()
    for name in files:
        shutil.copyfile(SAMPLE_KB / name, ws.kb_dir / name)
    if replay:
        (ws.kb_dir / "replay_runs.jsonl").write_text('{"not": "a replay run"}\n')
    (ws.kb_dir / "agent.jsonl").write_text('{"ticket": "T-1", "output": "done", "finished_at": "2026-01-01T00:00:00Z"}\n')
    return run_collect(ws, s, dry_run=True)


def _scored_version(s: Settings, w: World) -> str:
    from distill.collect import run_collect
    from distill.jsonl import iter_json
    from distill.score import run_score
    from distill.workspace import iter_partition_files

    ws = w.workspace(f"score-{time.monotonic_ns()}")
    ws.kb_dir.mkdir()
    shutil.copyfile(SAMPLE_KB / "audits.jsonl", ws.kb_dir / "audits.jsonl")
    run_collect(ws, s)
    run_score(ws, s)
    return next(iter(iter_json(iter_partition_files(ws.scored_dir)[0])))["scorer_version"]


def _mode_category(s: Settings, latency_ms: float, grounded: float) -> str:
    from distill.records import EvidenceRecord, ModelRole, Provenance
    from distill.score_rules import score_evidence

    ev = EvidenceRecord(
        run_id="m-1", task_id="t", source="mode_experiments", score_class=ScoreClass.TELEMETRY,
        model_role=ModelRole.EXECUTOR, text="output", markers={"latency_ms": latency_ms, "grounded_fraction": grounded},
        created_at="2026-01-01T00:00:00Z",
        provenance=Provenance(source_file="_kb/mode_experiments.jsonl", line_offset=0, line_number=1,
                              sig_hash="a" * 64, recorded_at="2026-01-01T00:00:00Z"),
    )
    return score_evidence(ev, s.score).category.value


def _firewall(s: Settings, w: World, text: str, files: tuple[str, ...] = ()) -> str | None:
    from distill.export.gates import Firewall, GateInput

    failure = Firewall.from_settings(w.tmp, s.export).check([GateInput((text,), files)])[0]
    return failure.reason if failure else None


def _pairs(s: Settings, w: World) -> tuple[int, int]:
    from distill.export.run import run_export

    ws = w.workspace(f"pairs-{time.monotonic_ns()}")
    question = "Review src/x.py for defects and give the fix."
    rows = [Row(f"a{i}", "task-1", "scrum_reviews", Category.ACCEPTED, f"good review {i}", source_files=["src/x.py"],
                instruction=question) for i in range(2)]
    rows += [Row(f"r{i}", "task-1", "scrum_reviews", Category.REJECTED, f"bad review {i}", source_files=["src/x.py"],
                 instruction=question) for i in range(3)]
    # another source and task answering the very same question: a cross-source pair
    rows += [Row("o1", "task-2", "audits", Category.REJECTED, "audit says no", source_files=["src/x.py"],
                 role=ModelRole.REVIEWER, instruction=question)]
    write_rows(ws, rows)
    run_export(ws, s, "preference")
    pairs = [json.loads(line) for line in ws.preference_path.read_text().splitlines()]
    return (sum(p["pairing"] == "same_task" for p in pairs), sum(p["pairing"] == "cross_source" for p in pairs))


def _index_outcome(s: Settings, w: World) -> str:
    """Run the index stage over a copy of the indexed workspace: ok, or the error it refuses with."""
    from distill.errors import DistillError
    from index.build import run_index

    root = w.tmp / f"idx-{time.monotonic_ns()}"
    shutil.copytree(w.indexed, root, ignore=shutil.ignore_patterns("*.lock"))
    try:
        run_index(Workspace(root), s, embedder=w.embedder, progress=False)
    except DistillError as exc:
        return "refused: " + str(exc).split(":")[0]
    return "ok"


def _searcher(s: Settings, w: World, *, load_model: bool = False) -> Any:
    from index.search import open_searcher

    return open_searcher(Workspace(w.indexed), s, embedder=None if load_model else w.embedder)


def _onnx_cache(embedder: Any) -> str:
    """The cache folder the embedder's ONNX export was read from (Path parts only, no tmp name)."""
    return embedder.onnx_path.parent.parent.name


def _open_outcome(s: Settings, w: World) -> str:
    from distill.errors import DistillError

    try:
        _searcher(s, w, load_model=True)
    except DistillError as exc:
        return "refused: " + str(exc)[:40]
    return "ok"


def _replay(s: Settings, w: World) -> dict[str, Any]:
    """One real replay: retrieval over the session index, the backend the settings choose."""
    from runtime.replay import ReplayOptions, ReplaySession

    ws = w.workspace(f"replay-{time.monotonic_ns()}")
    for srv in (w.ollama, w.ollama2):
        srv.state.requests.clear()
    session = ReplaySession(ws, s, ReplayOptions.from_settings(s.runtime), searcher=w.searcher, log=False)
    run = session.run(ROUTING_TASK)
    sent = (w.ollama.chat_requests + w.ollama2.chat_requests)
    options = sent[-1].get("options", {}) if sent else {}
    return {
        "mode": run.retrieval_mode,
        "k": len(run.retrieved),
        "backend": run.attempts[0].backend,
        "model": run.attempts[0].model,
        "server": "second" if w.ollama2.chat_requests else "first",
        "options": options,
        "exemplars": len(run.bundle.exemplars),
        "warnings": len(run.bundle.warnings),
        "steps": len(run.bundle.validation_steps),
        "cut": tuple(run.bundle.cut_items),
        "budget": run.bundle.budget_chars,
        "timeout": getattr(session.local, "timeout", None),
    }


def _backend(s: Settings, kind: str) -> tuple[Any, ...]:
    from runtime.backends import make_backend

    b = make_backend(kind, s.runtime)  # type: ignore[arg-type]
    client = getattr(b, "client", None)
    return (b.name, b.model, str(getattr(client, "base_url", "")), getattr(client, "api_key", None))


def _escalation(s: Settings) -> tuple[Any, ...]:
    from runtime.backends import EscalationTarget

    t = EscalationTarget.from_settings(s.runtime)
    return (t.backend, t.model, t.base_url)


def _embedded_plan(s: Settings) -> Any:
    from runtime.backends.llamacpp_backend import EmbeddedPlan

    return EmbeddedPlan.from_settings(s.runtime)


def _probe_speed(s: Settings, w: World) -> str:
    from runtime.backends import auto_choice

    t0 = time.monotonic()
    auto_choice(s.runtime)
    return "under 0.6s" if time.monotonic() - t0 < 0.6 else "waited"


def _gate(s: Settings, answer: str, *, steps: list[str] | None = None, task: str = "Fix the retry loop in src/retry.py") -> tuple[str, ...]:
    from distill.records.replay import ContextBundle, RetrievedItem
    from runtime.gate import validate

    bundle = ContextBundle(
        exemplars=[RetrievedItem(id="rag-1", score=1.0, rank=1,
                                 text="src/retry.py retries forever; cap the retries at five attempts and back off "
                                      "exponentially between them, in `cap_retries`.",
                                 source_files=["src/retry.py"])],
        validation_steps=steps or [],
    )
    return tuple(c.name for c in validate(answer, bundle, task, s.gate).checks if not c.passed)


LONG_ANSWER = "Cap the retries in src/retry.py at five attempts and back off exponentially between them. " * 3


def _drift(s: Settings, w: World) -> str:
    from distill.pipeline import execute_run

    ws = w.workspace(f"drift-{time.monotonic_ns()}")
    ws.kb_dir.mkdir()
    rows = [{"text": f"row {i}"} for i in range(100)]
    (ws.kb_dir / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    execute_run(ws, s, stages=_stages())
    (ws.kb_dir / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:90]))  # -10 %
    return execute_run(ws, s, stages=_stages()).drift.severity


def _code_change_rerun(s: Settings, w: World) -> str:
    """A receipt recorded under other source code: rerun or skip?"""
    from distill.pipeline import execute_run
    from distill.receipts import receipt_path

    ws = w.workspace(f"code-{time.monotonic_ns()}")
    ws.kb_dir.mkdir()
    (ws.kb_dir / "in.jsonl").write_text('{"text": "a"}\n')
    first = execute_run(ws, s, stages=_stages())
    path = receipt_path(ws, first.summary.run_id, "upper")
    data = json.loads(path.read_text())
    data["code_fingerprint"] = "f" * 64  # not part of the content hash: the receipt stays valid
    path.write_text(json.dumps(data))
    return execute_run(ws, s, stages=_stages()).receipts[0].status


def _side_by_side(s: Settings, w: World) -> list[str]:
    """Which stages of two independent ones ran in a worker process."""
    from distill.pipeline import execute_run

    ws = w.workspace(f"jobs-{time.monotonic_ns()}")
    ws.kb_dir.mkdir()
    (ws.kb_dir / "in.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(20)))
    events: list[tuple[str, str, str]] = []
    execute_run(ws, s, stages=independent_stages(), on_event=lambda *e: events.append(e))
    return worker_stages(events)


RUNTIME_BASE = {"runtime": {"backend": "ollama"}}


def _audit_test_run(s: Settings, w: World, command: str | None = None) -> tuple[int | None, bool] | None:
    from audit.testrun import run_tests

    command = command or s.audit.test_command
    if command is None:
        return None
    run = run_tests(command, w.tmp, s.audit.test_timeout_s)
    return run.passed, run.timed_out


def _recurrence(s: Settings, ranges: int) -> str | None:
    from audit.lessons import recurrence_severity

    level = recurrence_severity(ranges, s.audit)
    return level.value if level else None


def _serve(s: Settings, w: World, what: str) -> object:
    from fastapi.testclient import TestClient

    from runtime.serve import check_bind, create_app, open_session, required_key
    from runtime.serve_cmd import bind_address

    if what == "bind":
        host, port = bind_address(s.serve, None, None)
        try:
            check_bind(host, None)
        except Exception as exc:  # noqa: BLE001 - the refusal is the observation
            return (host, port, type(exc).__name__)
        return (host, port, "ok")
    if what == "key":
        return required_key(s.serve, {"TEST_DISTILL_KEY": "sk-from-the-named-variable"})
    root = w.tmp / f"serve-{time.monotonic_ns()}"
    (root / "_kb").mkdir(parents=True)
    session = open_session(root, s)
    if what == "escalation":
        return (session.options.allow_escalation, session.options.local_only)
    client = TestClient(create_app(session, s, None))
    if what == "body_limit":
        return client.post("/v1/search", content=b"x" * 2048).status_code
    if what == "stream":  # live: the local model's text went out as it was written (the run says when)
        session.searcher = w.searcher
        with client.stream("POST", "/v1/chat/completions",
                           json={"stream": True, "messages": [{"role": "user", "content": ROUTING_TASK}]}) as resp:
            events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
        return "local_first_text" in events[-1]["distill"]["timings_ms"]
    if what == "answer":
        session.searcher = w.searcher
        body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": ROUTING_TASK}]}).json()
        return (body["distill"]["final_verdict"], body["choices"][0]["message"]["content"] is None)
    return client.get("/healthz").json()["capacity"]


AUDIT_SLEEP = f"{sys.executable} -c 'import time; time.sleep(1.5)'"


# The probes. Values such as "OPENAI" stand for a loopback server's URL (see _resolve).
PROBES: dict[str, Probe] = {
    "serve.host": Probe("0.0.0.0", lambda s, w: _serve(s, w, "bind")),
    "serve.port": Probe(9999, lambda s, w: _serve(s, w, "bind")),
    "serve.api_key_env": Probe("TEST_DISTILL_KEY", lambda s, w: _serve(s, w, "key")),
    "serve.max_queue": Probe(2, lambda s, w: _serve(s, w, "capacity")),
    "serve.allow_escalation": Probe(False, lambda s, w: _serve(s, w, "escalation")),
    "serve.max_request_bytes": Probe(1024, lambda s, w: _serve(s, w, "body_limit")),
    "serve.unvalidated_answers": Probe(
        "withhold", lambda s, w: _serve(s, w, "answer"),
        # an answer the gate must fail (min_chars beyond any answer), from the loopback model, never escalated
        base={"runtime": {"backend": "ollama", "ollama_host": "OLLAMA2", "ollama_model": LOCAL_MODEL},
              "serve": {"allow_escalation": False}, "gate": {"min_chars": 5000}},
    ),
    "serve.stream": Probe(
        "live", lambda s, w: _serve(s, w, "stream"),
        base={"runtime": {"backend": "ollama", "ollama_host": "OLLAMA2", "ollama_model": LOCAL_MODEL},
              "serve": {"allow_escalation": False}},
    ),
    "audit.test_command": Probe(f"{sys.executable} -c 'print(\"3 passed\")'", lambda s, w: _audit_test_run(s, w)),
    "audit.test_timeout_s": Probe(0.3, lambda s, w: _audit_test_run(s, w, AUDIT_SLEEP)),
    "audit.info_at": Probe(1, lambda s, w: _recurrence(s, 1)),
    "audit.warn_at": Probe(2, lambda s, w: _recurrence(s, 2)),
    "audit.block_at": Probe(3, lambda s, w: _recurrence(s, 3)),
    "collect.max_line_bytes": Probe(300, lambda s, w: _collect(s, w).totals.by_reason.get("line_too_long", 0)),
    "collect.include_replay_runs": Probe(False, lambda s, w: "replay_runs" in _collect(s, w, replay=True).by_source),
    "score.scorer_version": Probe("9.9.9", lambda s, w: _scored_version(s, w)),
    "score.mode_latency_partial_s": Probe(1.0, lambda s, w: _mode_category(s, latency_ms=5000, grounded=0.95)),
    "score.grounded_accept": Probe(0.99, lambda s, w: _mode_category(s, latency_ms=10, grounded=0.9)),
    "score.grounded_partial": Probe(0.1, lambda s, w: _mode_category(s, latency_ms=10, grounded=0.3)),
    "export.repo_root": Probe("repo", lambda s, w: _firewall(s, w, "see src/missing.py", ("src/missing.py",))),
    "export.benchmark_files": Probe(["bench.jsonl"], lambda s, w: _firewall(s, w, BENCH_TEXT)),
    "export.contamination_ngram": Probe(
        5, lambda s, w: _firewall(s, w, "unrelated words then " + " ".join(BENCH_TEXT.split()[:7]) + " and more words here"),
        base={"export": {"benchmark_files": ["bench.jsonl"]}},
    ),
    "export.contamination_threshold": Probe(
        0.9, lambda s, w: _firewall(s, w, BENCH_TEXT + " plus a few words of its own so that overlap stays below one"),
        base={"export": {"benchmark_files": ["bench.jsonl"]}},
    ),
    "export.max_pairs_per_task": Probe(2, lambda s, w: _pairs(s, w)[0]),
    "export.cross_source_pairs": Probe(False, lambda s, w: _pairs(s, w)[1]),
    "index.model": Probe("/nonexistent/model-dir", lambda s, w: _open_outcome(s, w)),
    "index.chroma_url": Probe("http://127.0.0.1:9", lambda s, w: IndexStage().rerun_reason(w.workspace("nochroma"), s)),
    "index.collection": Probe("other", _index_outcome),
    "index.hnsw_space": Probe("l2", _index_outcome),
    "index.hnsw_m": Probe(32, _index_outcome),
    "index.hnsw_construction_ef": Probe(100, _index_outcome),
    "index.hnsw_search_ef": Probe(64, lambda s, w: _searcher(s, w).store.hnsw.search_ef),
    "index.batch_size": Probe(8, lambda s, w: _searcher(s, w, load_model=True).embedder.batch_size),
    "index.rrf_k": Probe(5, lambda s, w: round(_searcher(s, w).search(ROUTING_TASK, k=1)[0].score, 6),
                         base={"index": {"fusion": "rrf"}}),
    "index.fusion": Probe("rrf", lambda s, w: [round(h.score, 6) for h in _searcher(s, w).search(ROUTING_TASK, k=3)]),
    "index.dense_weight": Probe(0.9, lambda s, w: [round(h.score, 6) for h in _searcher(s, w).search(ROUTING_TASK, k=3)]),
    "index.query_backend": Probe("torch", lambda s, w: _searcher(s, w, load_model=True).embedder.query_backend),
    "index.document_backend": Probe("torch", lambda s, w: _searcher(s, w, load_model=True).embedder.document_backend),
    "index.query_precision": Probe(
        "fp32", lambda s, w: _searcher(s, w, load_model=True).embedder.encode_query(ROUTING_TASK)[:4].round(4).tolist()
    ),
    "index.model_cache_dir": Probe("MODELCACHE", lambda s, w: _onnx_cache(_searcher(s, w, load_model=True).embedder)),
    "index.query_threads": Probe(2, lambda s, w: _searcher(s, w, load_model=True).embedder.query_threads),
    "runtime.backend": Probe("openai", lambda s, w: _replay(s, w)["backend"],
                             base={"runtime": {"openai_base_url": "OPENAI", "openai_model": LOCAL_MODEL}}),
    "runtime.ollama_host": Probe("OLLAMA2", lambda s, w: _replay(s, w)["server"], base=RUNTIME_BASE),
    "runtime.ollama_model": Probe("other-model:1b", lambda s, w: _replay(s, w)["model"], base=RUNTIME_BASE),
    "runtime.ollama_probe_timeout_s": Probe(0.2, _probe_speed, base={"runtime": {"ollama_host": "SILENT"}}),
    "runtime.openai_base_url": Probe("OPENAI", lambda s, w: _backend(s, "openai")[2]),
    "runtime.openai_model": Probe("gpt-test", lambda s, w: _backend(s, "openai")[1], base={"runtime": {"openai_base_url": "OPENAI"}}),
    "runtime.openai_api_key_env": Probe("TEST_DISTILL_KEY", lambda s, w: _backend(s, "openai")[3], base={"runtime": {"openai_base_url": "OPENAI"}}),
    "runtime.gguf_path": Probe("/models/x.gguf", lambda s, w: _embedded_plan(s).gguf),
    "runtime.gguf_chat_template": Probe("chatml", lambda s, w: _embedded_plan(s).chat_template),
    "runtime.model_cache_dir": Probe("/tmp/distill-model-cache", lambda s, w: _embedded_plan(s).cache_dir),
    "runtime.embedded_threads": Probe(7, lambda s, w: _embedded_plan(s).threads),
    "runtime.num_ctx": Probe(2048, lambda s, w: _replay(s, w)["options"].get("num_ctx")),
    "runtime.max_tokens": Probe(64, lambda s, w: _replay(s, w)["options"].get("num_predict")),
    "runtime.temperature": Probe(0.7, lambda s, w: _replay(s, w)["options"].get("temperature")),
    "runtime.timeout_s": Probe(7.5, lambda s, w: _replay(s, w)["timeout"]),
    "runtime.k": Probe(2, lambda s, w: _replay(s, w)["k"]),
    "runtime.mode": Probe("bm25", lambda s, w: _replay(s, w)["mode"]),
    "runtime.exemplars": Probe(1, lambda s, w: _replay(s, w)["exemplars"]),
    "runtime.warnings": Probe(0, lambda s, w: _replay(s, w)["warnings"]),
    "runtime.max_validation_steps": Probe(1, lambda s, w: _replay(s, w)["steps"]),
    "runtime.item_max_chars": Probe(100, lambda s, w: _replay(s, w)["cut"]),
    "runtime.chars_per_token": Probe(2.0, lambda s, w: _replay(s, w)["budget"]),
    "runtime.escalation_backend": Probe("ollama", lambda s, w: _escalation(s)[0], base={"runtime": {"escalation_model": "bigger"}}),
    "runtime.escalation_model": Probe("bigger", lambda s, w: _escalation(s)[1]),
    "runtime.escalation_base_url": Probe("OPENAI", lambda s, w: _escalation(s)[2],
                                         base={"runtime": {"escalation_backend": "openai", "escalation_model": "big",
                                                           "openai_base_url": "http://127.0.0.1:1/v1"}}),
    "gate.min_chars": Probe(500, lambda s, w: _gate(s, LONG_ANSWER)),
    "gate.max_chars": Probe(50, lambda s, w: _gate(s, LONG_ANSWER)),
    "gate.min_checklist_overlap": Probe(0.9, lambda s, w: _gate(s, LONG_ANSWER, steps=["Verify the retries stop at five attempts under load with jitter"])),
    "gate.require_citation": Probe(True, lambda s, w: _gate(s, "Cap the retries at five attempts and back off exponentially between attempts.")),
    "gate.echo_ngram": Probe(3, lambda s, w: _gate(s, "Fix the retry loop by capping retries at five attempts with exponential backoff between them."),
                             base={"gate": {"max_echo_fraction": 0.1}}),
    "gate.max_echo_fraction": Probe(0.0, lambda s, w: _gate(s, "Fix the retry loop in src/retry.py by capping retries at five attempts with backoff.")),
    "gate.min_word_support": Probe(0.99, lambda s, w: _gate(s, LONG_ANSWER + " Then jitter the delays.")),
    "gate.min_identifier_support": Probe(1.0, lambda s, w: _gate(s, LONG_ANSWER + " Call `cap_retries` from `RetryLoop`.")),
    "gate.hedging_phrases": Probe(["exponentially"], lambda s, w: _gate(s, LONG_ANSWER)),
    "gate.placeholder_patterns": Probe([r"\bfive\b"], lambda s, w: _gate(s, LONG_ANSWER)),
    "drift.threshold_pct": Probe(5.0, _drift),
    "drift.rerun_on_code_change": Probe(False, _code_change_rerun),
    # the default (0) is every core: this machine's two or more let the two stages run side by side
    "run.jobs": Probe(1, _side_by_side, base={"run": {"parallel_min_input_mib": 0}}),
    "run.parallel_min_input_mib": Probe(0.0, _side_by_side, base={"run": {"jobs": 2}}),
    "sources": Probe([{"name": "my_agent", "path": "agent.jsonl", "task_id": "ticket", "text": "output", "created_at": "finished_at"}],
                     lambda s, w: sorted(_collect(s, w).by_source)),
}
BENCH_TEXT = (
    "Given the following configuration loader identify the exact line where the retry budget is reset "
    "incorrectly after a partial failure and explain why the backoff never reaches its ceiling"
)


# --------------------------------------------------------------------------------- the tests


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) if not isinstance(v, dict) else _toml_inline(v) for v in value) + "]"
    return str(value)


def _toml_inline(table: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in table.items()) + "}"


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _resolve(value: Any, w: World) -> Any:
    """Stand-ins for things only known at run time (loopback URLs, paths in the world)."""
    names = {"OPENAI": w.openai.base_url, "OLLAMA2": w.ollama2.url, "SILENT": w.silent_host,
             "MODELCACHE": str(w.tmp / "model-cache")}
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, dict):
        return {k: _resolve(v, w) for k, v in value.items()}
    return value


def _write_toml(root: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for section, fields in sections.items():
        if section == "sources":
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in fields.items()]
    for mapping in sections.get("sources", {}).get("", []):
        lines.append("[[sources]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in mapping.items()]
    root.mkdir(parents=True, exist_ok=True)
    (root / "distill.toml").write_text("\n".join(lines) + "\n")


def _settings(w: World, name: str, base: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]] | None = None) -> Settings:
    merged: dict[str, dict[str, Any]] = {}
    for source in (base, extra or {}):
        for section, fields in source.items():
            merged.setdefault(section, {}).update({k: _resolve(v, w) for k, v in fields.items()})
    root = w.tmp / name
    _write_toml(root, merged)
    return load_settings(root)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, indexed_root: Path, embedder: Any, session_searcher: Any) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("settings")
    (tmp / "repo").mkdir()
    (tmp / "bench.jsonl").write_text(json.dumps({"task": BENCH_TEXT}) + "\n")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections and never answers: a probe can only time out
    with OllamaLoopback(models=[LOCAL_MODEL, "other-model:1b"]) as first, OllamaLoopback(models=[LOCAL_MODEL]) as second, OpenAILoopback() as oai:
        for srv in (first, second):
            srv.set_default(Reply(content=GROUNDED_ANSWER))
        yield World(tmp, first, second, oai, indexed_root, embedder, session_searcher,
                    f"http://127.0.0.1:{silent.getsockname()[1]}")
    silent.close()


def test_every_settings_field_has_a_probe() -> None:
    assert set(leaf_fields(Settings)) == set(PROBES)


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(PROBES))
def test_field_changes_behaviour_from_toml_and_from_env(path: str, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = PROBES[path]
    section, _, name = path.rpartition(".")
    base = {k: dict(v) for k, v in probe.base.items()}
    if section == "runtime":
        # every runtime probe talks to the loopback Ollama unless it is about where Ollama is
        runtime = base.setdefault("runtime", {})
        for key, default in (("ollama_host", world.ollama.url), ("ollama_model", LOCAL_MODEL)):
            if key != name and path != "runtime.ollama_probe_timeout_s":
                runtime.setdefault(key, default)
    for key in [k for k in os.environ if k.startswith("DISTILL_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TEST_DISTILL_KEY", "sk-from-the-named-variable")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-default-variable")
    value = _resolve(probe.value, world)

    default = probe.observe(_settings(world, f"{path}-default", base), world)
    if section:
        from_toml = _settings(world, f"{path}-toml", base, {section: {name: value}})
    else:  # a top-level list (the [[sources]] mappings)
        from_toml = _settings(world, f"{path}-toml", {**base, name: {"": value}})
    toml_seen = probe.observe(from_toml, world)
    assert toml_seen != default, f"{path} = {value!r} in distill.toml changed nothing ({default!r})"

    env_name = f"DISTILL_{section.upper()}__{name.upper()}" if section else f"DISTILL_{name.upper()}"
    monkeypatch.setenv(env_name, _env_value(value))
    env_seen = probe.observe(_settings(world, f"{path}-env", base), world)
    assert env_seen == toml_seen, f"{env_name} did not act like the distill.toml value: {env_seen!r} vs {toml_seen!r}"

"""Escalation: a task suite through `replay` with and without retrieval, and over rounds of feeding
accepted runs back; gate pass rate, escalation rate, accuracy (where gold exists), latency, tokens.

    python benchmarks/escalation.py                 # default sizes (~15 min on the embedded GGUF, 2 cores)
    python benchmarks/escalation.py --quick         # CI smoke (~1-2 min)
    python benchmarks/escalation.py --rounds 3 --sample-tasks 4 --pubmed-tasks 4

Tasks:
- held-out sample tasks: a fresh workspace from the committed sample (collect -> score -> export
  rag -> index, the product's own stages); tasks are code reviews and support scenarios of the
  sample; a task's own runs (its task_id, and the replay runs this suite logs for it) are never
  retrieved for it (filtered out of every search for that task);
- grounded QA: PubMedQA (pqa-l, ../shared/datasets/pubmedqa_pqal): question -> yes/no/maybe; the
  questions' passages plus distractor passages are indexed as a document set (index.build_index),
  and accuracy is the first yes/no/maybe in the answer against the gold final_decision.
Each task runs through runtime.replay.ReplaySession with retrieval and with no_retrieval, on the
configured local backend. Escalation rate = runs whose local answer failed the gate (they escalate
when a strong model is configured; without one the rate is what would escalate).
With a strong model configured (settings.runtime.escalation_*; --strong on), RouteLLM-style APGR
and CPT(50%) come from sweeping a threshold on the gate score (share of gate checks passed), with
random-escalation and oracle baselines. Without one, that is said in the results, and the curve is
computed against an ideal strong model (always right), labelled as the upper bound it is.
--rounds R: after each round the suite's runs are fed back (collect -> score -> export rag ->
index) and the held-out sample tasks run again; escalation rate per round is reported and plotted.
Results: benchmarks/results/escalation[_quick].json, .md, _rates.png, _rounds.png, _routing.png.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import RESULTS, log, machine, md_table, pyplot, save_figure, write_results  # noqa: E402

PUBMEDQA = REPO.parent / "shared" / "datasets" / "pubmedqa_pqal"
LABELS = ("yes", "no", "maybe")
_ANSWER = re.compile(r"^[\W_]*(yes|no|maybe)\b", re.IGNORECASE)

SIZES = {
    "quick": {"sample_tasks": 1, "pubmed_tasks": 1, "rounds": 1, "distractors": 20, "corpus": 60, "max_tokens": 16,
              "num_ctx": 768,
              "item_max_chars": 300, "exemplars": 1, "warnings": 0, "k": 4, "timeout_s": 120.0},
    "default": {"sample_tasks": 3, "pubmed_tasks": 3, "rounds": 3, "distractors": 100, "corpus": 250, "max_tokens": 48,
                "num_ctx": 1024, "item_max_chars": 500, "exemplars": 2, "warnings": 1, "k": 6, "timeout_s": 180.0},
}


@dataclass(frozen=True)
class Task:
    id: str
    text: str
    family: str  # "sample" | "pubmedqa"
    gold: str | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)


@dataclass
class ExcludingSearcher:
    """A searcher that never returns documents of the given task ids (a task's own runs)."""

    inner: Any
    exclude: frozenset[str]

    def search(self, query: str, *, k: int = 8, mode: str = "hybrid", categories: list[str] | None = None) -> list[Any]:
        hits = self.inner.search(query, k=k + 32, mode=mode, categories=categories)
        kept = [h for h in hits if str((h.metadata or {}).get("task_id")) not in self.exclude][:k]
        return [h.model_copy(update={"rank": n}) for n, h in enumerate(kept, start=1)]

    def export_changed(self, ws: Any) -> bool:
        changed = getattr(self.inner, "export_changed", None)
        return bool(changed(ws)) if callable(changed) else True


# --------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------


def prepare_sample(root: Path) -> tuple[Any, Any, dict[str, float]]:
    """A workspace from the committed sample, through collect, score and export rag."""
    from distill.cli.init_cmd import init_workspace
    from distill.config import load_settings
    from distill.workspace import Workspace

    init_workspace(root, sample=True)
    ws = Workspace.resolve(root)
    settings = load_settings(ws.root)
    return ws, settings, feed_back(ws, settings, embedder=None, index=False)


def index_sample(ws: Any, settings: Any, embedder: Any, keep_ids: set[str] | None) -> dict[str, Any]:
    """Index the workspace's RAG export into ROOT/index (what `distill index` does), optionally only
    the documents in `keep_ids` plus every run this suite logged (task ids `bench:...`), so --quick
    does not spend minutes embedding the whole sample on two cores."""
    from index.build import build_index, file_hash, workspace_paths
    from index.documents import load_rag_export
    from index.store import HnswParams

    loaded = load_rag_export(ws.rag_path, relative_name=ws.relative(ws.rag_path))
    docs = [d for d in loaded.documents
            if keep_ids is None or d.id in keep_ids or str(d.metadata.get("task_id", "")).startswith("bench:")]
    report = build_index(workspace_paths(ws), docs, embedder, collection=settings.index.collection,
                         hnsw=HnswParams.from_settings(settings.index), source=ws.relative(ws.rag_path),
                         export_hash=file_hash(ws.rag_path), progress=False)
    return {"documents": len(docs), "embedded": report.embedded}


def corpus_subset(ws: Any, tasks: list[Task], n: int | None) -> set[str] | None:
    """None (everything) or n RAG ids: the held-out tasks' related rows first, then a seeded sample."""
    if n is None:
        return None
    from distill.jsonl import iter_json

    rows = [r for r in iter_json(ws.rag_path) if isinstance(r, dict)]
    keys = {t.id.split(":", 2)[-1] for t in tasks if t.family == "sample"}
    related = [r["id"] for r in rows if any(k in str(r.get("task_id")) for k in keys)]
    others = [r["id"] for r in rows if r["id"] not in set(related)]
    return set(related[: n // 2]) | set(random.Random(0).sample(others, max(0, min(len(others), n - min(n // 2, len(related))))))


def feed_back(ws: Any, settings: Any, *, embedder: Any, index: bool = True,
              keep_ids: set[str] | None = None) -> dict[str, float]:
    """collect -> score -> export rag (-> index): the loop that turns runs into retrievable playbooks."""
    from distill.collect import run_collect
    from distill.export import run_export
    from distill.score import run_score

    t: dict[str, float] = {}
    for name, fn in (("collect", lambda: run_collect(ws, settings)), ("score", lambda: run_score(ws, settings)),
                     ("export_rag", lambda: run_export(ws, settings, "rag"))):
        t0 = time.perf_counter()
        fn()
        t[name] = time.perf_counter() - t0
    if index:
        t0 = time.perf_counter()
        index_sample(ws, settings, embedder, keep_ids)
        t["index"] = time.perf_counter() - t0
    return t


def sample_tasks(ws: Any, n: int) -> list[Task]:
    """n held-out tasks: code reviews and support scenarios with an accepted playbook, spread out."""
    from distill.jsonl import iter_json

    rows = [r for r in iter_json(ws.rag_path) if isinstance(r, dict)]
    titles: dict[str, str] = {}
    for r in rows:
        if r.get("success_score") == "accepted":
            titles.setdefault(str(r["task_id"]), str(r.get("title") or ""))
    reviews = sorted(t for t in titles if t.startswith("scrum_review:"))
    scenarios = sorted(t for t in titles if t.startswith("scenario:"))
    picked: list[str] = []
    pools = [reviews[:: max(1, len(reviews) // max(1, n))], scenarios[:: max(1, len(scenarios) // max(1, n))]]
    while len(picked) < n and any(pools):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(pool.pop(0))
    tasks = []
    for tid in picked:
        if tid.startswith("scrum_review:"):
            path = tid.split(":", 1)[1]
            text = f"Review `{path}` and report the most important finding, the fix, and how to validate it."
        else:
            text = f"A customer writes in: {titles[tid].lower()}. What do you do, step by step?"
        bench_id = f"bench:{tid}"
        tasks.append(Task(id=bench_id, text=text, family="sample", exclude=frozenset({tid, bench_id})))
    return tasks


def pubmed_tasks(n: int, distractors: int, folder: Path = PUBMEDQA) -> tuple[list[Task], list[Any]]:
    """n questions (labels round-robin yes/no/maybe, lowest PMIDs first) and the document set:
    their own passages plus `distractors` other questions' passages."""
    from index.documents import Document

    data = json.loads((folder / "ori_pqal.json").read_text())
    by_label: dict[str, list[str]] = {lab: sorted((p for p, q in data.items() if q["final_decision"] == lab), key=int)
                                      for lab in LABELS}
    chosen: list[str] = []
    while len(chosen) < n and any(by_label.values()):
        for lab in LABELS:
            if by_label[lab] and len(chosen) < n:
                chosen.append(by_label[lab].pop(0))
    rest = sorted((p for p in data if p not in chosen), key=int)
    others = random.Random(0).sample(rest, min(distractors, len(rest)))

    def doc(pmid: str) -> Document:
        q = data[pmid]
        return Document(id=f"pubmed:{pmid}", text="\n".join(q["CONTEXTS"]), title=f"PubMed {pmid}", category="accepted",
                        metadata={"source_run_id": f"pubmedqa:{pmid}", "task_id": f"pubmedqa:{pmid}", "source_files": []})

    tasks = [Task(id=f"bench:pubmedqa:{p}", family="pubmedqa", gold=data[p]["final_decision"],
                  text=(f"Question: {data[p]['QUESTION']}\nStart the answer with one word, yes, no or maybe, "
                        "then give one sentence of justification from the retrieved passages."))
             for p in chosen]
    return tasks, [doc(p) for p in chosen + others]


def parse_answer(text: str) -> str | None:
    """The yes/no/maybe the answer starts with (as the task asks); anything else is unparsed, and
    counts as wrong: a yes/no/maybe later in the text may be the model echoing the question."""
    m = _ANSWER.match((text or "").strip())
    return m.group(1).lower() if m else None


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------


def echoes_prompt(output: str, task_text: str) -> bool:
    """The answer's first line is (nearly) words of the prompt: the model repeated its instructions
    instead of answering. Not a gate check; recorded so a vacuous gate pass is visible."""
    from runtime.prompt import SYSTEM_RULES

    first = next((ln for ln in (output or "").splitlines() if ln.strip()), "")
    words = re.findall(r"[a-z]+", first.lower())
    if len(words) < 4:
        return False
    vocab = set(re.findall(r"[a-z]+", (SYSTEM_RULES + " " + task_text).lower()))
    return sum(w in vocab for w in words) / len(words) >= 0.8


def gate_score(attempt: Any) -> float:
    if attempt.error is not None or attempt.gate is None:
        return 0.0
    checks = attempt.gate.checks
    return sum(c.passed for c in checks) / len(checks) if checks else 0.0


def record(run: Any, task: Task, condition: str, round_no: int) -> dict[str, Any]:
    local = run.attempts[0]
    parsed = parse_answer(local.output) if task.gold else None
    return {
        "task_id": task.id, "family": task.family, "condition": condition, "round": round_no,
        "verdict": run.final_verdict, "escalated": run.escalated,
        "gate_passed": bool(local.error is None and local.gate is not None and local.gate.passed),
        "gate_score": gate_score(local),
        "failed_checks": [c.name for c in (local.gate.checks if local.gate else []) if not c.passed],
        "error": local.error,
        "latency_ms": local.latency_ms, "total_ms": run.timings_ms.get("total"),
        "retrieve_ms": run.timings_ms.get("retrieve"),
        "prompt_tokens": local.prompt_tokens, "completion_tokens": local.completion_tokens,
        "prompt_chars": run.bundle.prompt_chars, "retrieved": len(run.retrieved),
        "bundle_items": len(run.bundle.exemplars) + len(run.bundle.warnings), "bundle_trimmed": run.bundle.trimmed,
        "echoes_prompt": echoes_prompt(local.output or "", task.text),
        "gold": task.gold, "parsed": parsed, "correct": (parsed == task.gold) if task.gold else None,
        "escalation_output": run.attempts[-1].output[:300] if run.escalated else None,
        "answer": (local.output or "")[:400],
    }


def summarise(recs: list[dict[str, Any]]) -> dict[str, Any]:
    if not recs:
        return {"n": 0}
    lat = [r["latency_ms"] for r in recs if r["latency_ms"] is not None]
    gold = [r for r in recs if r["gold"] is not None]
    pt = [r["prompt_tokens"] for r in recs if r["prompt_tokens"] is not None]
    ct = [r["completion_tokens"] for r in recs if r["completion_tokens"] is not None]
    return {
        "n": len(recs),
        "gate_pass_rate": sum(r["gate_passed"] for r in recs) / len(recs),
        "escalation_rate": sum(not r["gate_passed"] for r in recs) / len(recs),
        "echo_rate": sum(r["echoes_prompt"] for r in recs) / len(recs),
        "gate_passed_echoes": sum(r["echoes_prompt"] and r["gate_passed"] for r in recs),
        "errors": sum(r["error"] is not None for r in recs),
        "accuracy": (sum(bool(r["correct"]) for r in gold) / len(gold)) if gold else None,
        "n_gold": len(gold),
        "latency_ms_mean": statistics.fmean(lat) if lat else None,
        "latency_ms_p50": statistics.median(lat) if lat else None,
        "prompt_tokens_mean": statistics.fmean(pt) if pt else None,
        "completion_tokens_mean": statistics.fmean(ct) if ct else None,
        "failed_checks": {c: sum(c in r["failed_checks"] for r in recs)
                          for c in sorted({c for r in recs for c in r["failed_checks"]})},
    }


def routing(weak: list[int], strong: list[int], scores: list[float], *, seed: int = 0) -> dict[str, Any]:
    """RouteLLM-style curve: escalate tasks whose gate score is below a threshold, sweep it.

    PGR(c) = (quality(c) - q_weak) / (q_strong - q_weak) at escalated share c; APGR is the area
    under PGR over c in [0, 1] (trapezoids); CPT(50%) the smallest share reaching PGR >= 0.5.
    Random escalation is the diagonal (APGR 0.5); the oracle escalates only tasks the weak model
    gets wrong and the strong one right.
    """
    n = len(weak)
    q_w, q_s = sum(weak) / n, sum(strong) / n
    gap = q_s - q_w
    points = [(0.0, 0.0)]
    for t in sorted(set(scores)) + [math.inf]:
        esc = [s < t for s in scores]
        q = sum(strong[i] if esc[i] else weak[i] for i in range(n)) / n
        points.append((sum(esc) / n, (q - q_w) / gap if gap else 0.0))
    points = sorted(set(points))
    apgr = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))
    cpt = next((x for x, y in points if y >= 0.5), None)
    helps = sum(1 for i in range(n) if not weak[i] and strong[i])
    oracle_cpt = 0.5 * helps / n if gap > 0 else None
    return {"q_weak": q_w, "q_strong": q_s, "points": points, "apgr": apgr if gap else None,
            "cpt50": cpt if gap else None, "random": {"apgr": 0.5, "cpt50": 0.5},
            "oracle": {"apgr": (1 - helps / n / 2) if gap > 0 else None, "cpt50": oracle_cpt}}


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def strong_configured(rt: Any, flag: str) -> tuple[bool, str]:
    import os

    if flag == "off":
        return False, "disabled with --strong off"
    if rt.escalation_backend == "openai":
        ok = bool(rt.escalation_base_url or rt.openai_base_url or os.environ.get(rt.openai_api_key_env))
        why = f"openai {rt.escalation_model} at {rt.escalation_base_url or rt.openai_base_url or 'api.openai.com'}"
        return (ok, why if ok else f"no strong model: escalation backend openai has no base URL and ${rt.openai_api_key_env} is unset")
    if rt.escalation_backend == "ollama":
        from runtime.backends.ollama_backend import reachable

        ok = reachable(rt.ollama_host, rt.ollama_probe_timeout_s)
        return ok, f"ollama {rt.escalation_model}" if ok else "no strong model: Ollama is not reachable"
    return flag == "on", f"llamacpp {rt.escalation_model}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 sample + 1 PubMedQA task, 1 round, short answers")
    ap.add_argument("--sample-tasks", type=int)
    ap.add_argument("--pubmed-tasks", type=int)
    ap.add_argument("--rounds", type=int, help="feedback rounds over the held-out sample tasks (>= 1)")
    ap.add_argument("--distractors", type=int, help="other PubMedQA questions' passages indexed as distractors")
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--corpus", type=int, help="sample playbooks indexed (default: quick 60, default 250; 0 = all)")
    ap.add_argument("--backend", default=None, help="local backend (default: settings.runtime.backend)")
    ap.add_argument("--strong", choices=("auto", "on", "off"), default="auto",
                    help="use the configured escalation model (auto: when one is reachable/configured)")
    ap.add_argument("--dataset", type=Path, default=PUBMEDQA)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--work-dir", type=Path)
    args = ap.parse_args(argv)

    sizes = dict(SIZES["quick" if args.quick else "default"])
    for key in ("sample_tasks", "pubmed_tasks", "rounds", "distractors", "max_tokens", "corpus"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    sizes["rounds"] = max(1, sizes["rounds"])
    sizes["corpus"] = sizes["corpus"] or None
    name = "escalation_quick" if args.quick else "escalation"
    info = machine()
    t_start = time.perf_counter()
    base = args.work_dir or Path(tempfile.mkdtemp(prefix="distill-escalation-"))
    try:
        return _run(args, sizes, name, info, base, t_start)
    finally:
        if args.work_dir is None:
            shutil.rmtree(base, ignore_errors=True)


def _run(args: Any, sizes: dict[str, Any], name: str, info: dict[str, Any], base: Path, t_start: float) -> int:
    from distill.workspace import Workspace
    from index.build import build_index
    from index.embedder import Embedder
    from index.manifest import IndexPaths
    from index.search import open_index, open_searcher
    from index.store import HnswParams
    from runtime.backends import BackendError, make_backend
    from runtime.replay import ReplayOptions, ReplaySession

    timings: dict[str, Any] = {}
    log("preparing the sample workspace (collect, score, export rag)")
    ws, settings, timings["prepare"] = prepare_sample(base / "sample")
    rt_update = {k: sizes[k] for k in ("max_tokens", "num_ctx", "item_max_chars", "exemplars", "warnings", "timeout_s")}
    notes: list[str] = []
    backend_kind = args.backend or settings.runtime.backend
    settings = settings.model_copy(update={"runtime": settings.runtime.model_copy(update=rt_update)})
    rt = settings.runtime

    t0 = time.perf_counter()
    embedder = Embedder(settings.index.model, batch_size=settings.index.batch_size)
    timings["embedder_load_s"] = time.perf_counter() - t0
    held_out = sample_tasks(ws, sizes["sample_tasks"])
    keep_ids = corpus_subset(ws, held_out, sizes["corpus"])
    log(f"indexing the sample exports ({'all' if keep_ids is None else len(keep_ids)} playbooks)")
    t0 = time.perf_counter()
    timings["sample_index"] = index_sample(ws, settings, embedder, keep_ids)
    timings["sample_index_s"] = time.perf_counter() - t0
    pqa: list[Task] = []
    pqa_searcher: Any = None
    if (args.dataset / "ori_pqal.json").is_file() and sizes["pubmed_tasks"] > 0:
        pqa, docs = pubmed_tasks(sizes["pubmed_tasks"], sizes["distractors"], args.dataset)
        log(f"indexing {len(docs)} PubMedQA passage sets")
        t0 = time.perf_counter()
        pqa_paths = IndexPaths(base / "pubmedqa-index")
        build_index(pqa_paths, docs, embedder, collection="pubmedqa", hnsw=HnswParams.from_settings(settings.index),
                    progress=False)
        pqa_searcher = open_index(pqa_paths, embedder, rrf_k=settings.index.rrf_k)
        timings["pubmedqa_index_s"] = time.perf_counter() - t0
    else:
        notes.append(f"PubMedQA not found at {args.dataset} (or --pubmed-tasks 0): grounded-QA tasks skipped")
    pqa_ws = Workspace.resolve(base / "pubmedqa-ws")
    pqa_ws.kb_dir.mkdir(parents=True, exist_ok=True)

    strong_ok, strong_why = strong_configured(rt, args.strong)
    t0 = time.perf_counter()
    try:
        local = make_backend(backend_kind, rt)  # type: ignore[arg-type]
    except BackendError as exc:
        raise SystemExit(f"no local backend: {exc}") from exc
    timings["backend_load_s"] = time.perf_counter() - t0
    backend_desc = f"{local.name} / {local.model}"
    log(f"local backend: {backend_desc}; strong model: {strong_why}")

    def session(workspace: Any, *, retrieval: bool) -> ReplaySession:
        opts = ReplayOptions(k=sizes["k"], mode=rt.mode, backend=backend_kind, no_retrieval=not retrieval,  # type: ignore[arg-type]
                             allow_escalation=strong_ok, local_only=not strong_ok)
        return ReplaySession(workspace, settings, opts, local=local)

    records: list[dict[str, Any]] = []
    strong_correct: dict[str, int] = {}

    def run_one(sess: ReplaySession, task: Task, searcher: Any, condition: str, round_no: int) -> dict[str, Any]:
        if searcher is not None:
            sess.searcher = ExcludingSearcher(searcher, task.exclude)
        run = sess.run(task.text, task_id=task.id)
        rec = record(run, task, condition, round_no)
        records.append(rec)
        log(f"  r{round_no} {condition:12s} {task.id[:48]:48s} gate={'pass' if rec['gate_passed'] else 'FAIL'} "
            f"{(rec['latency_ms'] or 0) / 1000:6.1f}s tokens={rec['prompt_tokens']}+{rec['completion_tokens']} "
            f"{'correct=' + str(rec['correct']) if task.gold else ''}")
        return rec

    base_searcher = open_searcher(ws, settings, embedder=embedder)
    log("round 1: with and without retrieval")
    for retrieval in (True, False):
        cond = "retrieval" if retrieval else "no_retrieval"
        s_sample, s_pqa = session(ws, retrieval=retrieval), session(pqa_ws, retrieval=retrieval)
        for task in held_out:
            run_one(s_sample, task, base_searcher if retrieval else None, cond, 1)
        for task in pqa:
            run_one(s_pqa, task, pqa_searcher if retrieval else None, cond, 1)

    if strong_ok:  # the strong model's own answer on every gold task, for the routing curve
        from runtime.backends import escalation_backend
        from runtime.bundle import build_bundle
        from runtime.prompt import assemble

        strong = escalation_backend(rt)
        for task in pqa:
            hits = ExcludingSearcher(pqa_searcher, task.exclude).search(task.text, k=sizes["k"], mode=rt.mode)
            bundle = build_bundle(hits, exemplars=rt.exemplars, warnings=rt.warnings, max_steps=rt.max_validation_steps)
            prompt = assemble(task.text, bundle, num_ctx=rt.num_ctx, max_tokens=rt.max_tokens,
                              chars_per_token=rt.chars_per_token, item_max_chars=rt.item_max_chars)
            try:
                gen = strong.generate(prompt.messages, max_tokens=rt.max_tokens, temperature=0.0, timeout=rt.timeout_s)
                strong_correct[task.id] = int(parse_answer(gen.text) == task.gold)
            except BackendError as exc:
                notes.append(f"strong model failed on {task.id}: {exc}")

    round_times = []
    for round_no in range(2, sizes["rounds"] + 1):
        log(f"feeding round {round_no - 1}'s runs back (collect, score, export rag, index)")
        t0 = time.perf_counter()
        feed = feed_back(ws, settings, embedder=embedder, keep_ids=keep_ids)
        base_searcher = open_searcher(ws, settings, embedder=embedder)
        round_times.append({"round": round_no, "feed_back_s": time.perf_counter() - t0, **feed})
        sess = session(ws, retrieval=True)
        for task in held_out:
            run_one(sess, task, base_searcher, "retrieval", round_no)

    # ---- summaries
    def pick(**kw: Any) -> list[dict[str, Any]]:
        return [r for r in records if all(r[k] == v for k, v in kw.items())]

    conditions = {}
    for cond in ("retrieval", "no_retrieval"):
        conditions[cond] = {"all": summarise(pick(condition=cond, round=1)),
                            "sample": summarise(pick(condition=cond, round=1, family="sample")),
                            "pubmedqa": summarise(pick(condition=cond, round=1, family="pubmedqa"))}
    rounds = [{"round": r, **summarise(pick(condition="retrieval", round=r, family="sample"))}
              for r in range(1, sizes["rounds"] + 1)]
    dropped = [r["task_id"] for r in records if r["prompt_tokens"] is not None and r["prompt_tokens"] < 32]
    if dropped:
        notes.append(f"{len(dropped)} run(s) reached the model with under 32 prompt tokens: the chat template lost "
                     f"the prompt (e.g. {dropped[0]})")
    route: dict[str, Any] = {}
    gold_recs = pick(condition="retrieval", round=1, family="pubmedqa")
    if gold_recs:
        weak = [int(bool(r["correct"])) for r in gold_recs]
        scores = [r["gate_score"] for r in gold_recs]
        if strong_ok and len(strong_correct) == len(gold_recs):
            route = {"strong_model": strong_why, **routing(weak, [strong_correct[r["task_id"]] for r in gold_recs], scores)}
        else:
            route = {"strong_model": None, "note": strong_why + "; the curve below assumes an ideal strong model (always "
                     "right): an upper bound, not a measurement", **routing(weak, [1] * len(weak), scores)}
    result = {
        "suite": "escalation", "quick": args.quick, "machine": info, "sizes": sizes,
        "backend": backend_desc, "backend_kind": backend_kind, "strong": {"configured": strong_ok, "why": strong_why},
        "backend_notes": notes, "timings_s": timings, "feedback_rounds": round_times,
        "conditions": conditions, "rounds": rounds, "routing": route,
        "tasks": [{"id": t.id, "family": t.family, "gold": t.gold, "text": t.text} for t in held_out + pqa],
        "runs": records, "wall_s": time.perf_counter() - t_start,
    }
    md = markdown(result)
    write_results(args.out_dir, name, result, md)
    plot_rates(result, args.out_dir / f"{name}_rates.png")
    plot_rounds(result, args.out_dir / f"{name}_rounds.png")
    if route:
        plot_routing(result, args.out_dir / f"{name}_routing.png")
    log(md)
    return 0


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for cond in ("retrieval", "no_retrieval"):
        for fam in ("sample", "pubmedqa", "all"):
            s = r["conditions"][cond][fam]
            if not s.get("n"):
                continue
            rows.append([cond, fam, s["n"], _pct(s["gate_pass_rate"]), _pct(s["escalation_rate"]), _pct(s["accuracy"]),
                         _pct(s["echo_rate"]),
                         round((s["latency_ms_mean"] or 0) / 1000, 1), s["prompt_tokens_mean"], s["completion_tokens_mean"]])
    sz = r["sizes"]
    lines = [
        f"### Escalation ({r['backend']}; {sz['sample_tasks']} held-out sample + {sz['pubmed_tasks']} PubMedQA tasks, "
        f"max_tokens {sz['max_tokens']}, num_ctx {sz['num_ctx']})\n",
        md_table(["condition", "tasks", "runs", "gate pass", "escalation", "accuracy", "echoes prompt", "latency s (mean)",
                  "prompt tok", "completion tok"], rows),
        "",
        "Escalation rate per feedback round (held-out sample tasks, with retrieval, own runs never retrieved): "
        + ", ".join(f"round {x['round']}: {_pct(x.get('escalation_rate'))}" for x in r["rounds"]),
        "",
        f"- strong model: {r['strong']['why']}",
    ]
    rt = r.get("routing") or {}
    if rt:
        label = "measured" if rt.get("strong_model") else "upper bound with an ideal strong model (none configured)"
        lines.append(f"- routing by gate score ({label}): APGR {rt['apgr'] if rt['apgr'] is None else round(rt['apgr'], 3)}, "
                     f"CPT(50%) {_pct(rt['cpt50'])}; random APGR 0.5 / CPT(50%) 50%; oracle CPT(50%) "
                     f"{_pct(rt['oracle']['cpt50'])}; weak accuracy {_pct(rt['q_weak'])}, strong {_pct(rt['q_strong'])}")
    for n in r["backend_notes"]:
        lines.append(f"- note: {n}")
    lines.append(f"- wall time {r['wall_s'] / 60:.1f} min; machine {r['machine']['cpu_count']} CPUs, load "
                 f"{r['machine']['loadavg_at_start']}; commit {r['machine']['git_commit']}")
    return "\n".join(lines) + "\n"


def plot_rates(r: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    groups = [(c, f) for c in ("retrieval", "no_retrieval") for f in ("sample", "pubmedqa") if r["conditions"][c][f].get("n")]
    xs = range(len(groups))
    ax.bar([x - 0.2 for x in xs], [r["conditions"][c][f]["gate_pass_rate"] for c, f in groups], 0.4, label="gate pass")
    ax.bar([x + 0.2 for x in xs], [r["conditions"][c][f]["escalation_rate"] for c, f in groups], 0.4, label="escalation")
    ax.set_xticks(list(xs), [f"{f}\n{c}" for c, f in groups])
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"gate pass / escalation rate ({r['backend']})")
    return save_figure(fig, path)


def plot_rounds(r: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = [x["round"] for x in r["rounds"]]
    ax.plot(xs, [x.get("escalation_rate", 0) for x in r["rounds"]], marker="o")
    ax.set_xticks(xs)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("escalation rate")
    ax.set_title("held-out tasks, accepted runs fed back per round")
    return save_figure(fig, path)


def plot_routing(r: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    rt = r["routing"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    pts = rt["points"]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="gate-score router")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    ax.axhline(0.5, color="red", linewidth=0.8)
    ax.set_xlabel("share escalated (cost)")
    ax.set_ylabel("PGR")
    ax.set_title("routing curve" + ("" if rt.get("strong_model") else " (ideal strong model: upper bound)"))
    ax.legend()
    return save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())

"""Escalation on gold tasks: the local model with and without retrieval, the gate, the real strong
model, and rounds of feeding accepted runs back.

    python benchmarks/escalation.py                       # built-in suites: 60 PubMedQA + 60 SWE-bench + 30 sample
    python benchmarks/escalation.py --quick               # CI smoke: 2 tasks per family, 1 round, short answers
    python benchmarks/escalation.py --suite DIR --tasks 20 --rounds 3 --local-only --json

Any suite in one form (`--suite DIR`, repeatable; see benchmarks/suites.py): tasks.jsonl {id, task,
gold, judge, family} and corpus.jsonl {_id, title, text}. The corpus is indexed with the product's
own index (MiniLM + Chroma + BM25, hybrid), beside the RAG export of a workspace that collects the
benchmark's replay runs.

Conditions, each through runtime.replay.ReplaySession (the product's loop: retrieve, bundle, local
model, gate, escalation, log):
- retrieval: the tasks in R disjoint rounds (every family in each); after a round its runs are
  collected, scored, exported and indexed (distill's own stages) and the next round retrieves them;
  a task never retrieves its own runs or the documents its suite excludes for it;
- no_retrieval: the same tasks without retrieval.
Escalation goes to the configured strong model (by default the packaged Qwen2.5-Coder-1.5B);
--local-only calls no strong model (the escalation rate is then what would escalate). For the
routing curve every retrieval task also gets the strong model's answer to the same prompt.

Per condition and family: escalation rate, gate pass rate, gate precision (accuracy of what the gate
accepted), false-accept / false-reject against gold, system accuracy (the delivered answer: the local
one when the gate passed it, else the escalated one when the gate passed that, else none), the strong
model's accuracy, latency and tokens of local and strong calls; each gate check's false-accept /
false-reject contribution; the escalation rate per round; RouteLLM-style APGR and CPT(50%) of the
gate-score router against the real strong model, with random and oracle baselines.
Results: benchmarks/results/escalation[_quick].json/.md and _rates/_rounds/_routing.png, and
_answers.jsonl: every run's task, bundle and full answers, so that a later gate can judge the same
answers again without the models (benchmarks/escalation_rejudge.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import suites  # noqa: E402
from benchmarks.report import RESULTS, cli, count, log, machine, md_table, pyplot, save_figure, write_results  # noqa: E402

FULL = {"pubmedqa": 60, "swebench": 60, "sample": 30}
SIZES = {
    "quick": {"per_family": 2, "rounds": 1, "max_tokens": 32, "num_ctx": 2048, "item_max_chars": 500, "k": 4,
              "exemplars": 2, "warnings": 0, "timeout_s": 300.0, "corpus_per_suite": 40},
    "default": {"per_family": None, "rounds": 3, "max_tokens": 96, "num_ctx": 2048, "item_max_chars": 700, "k": 6,
                "exemplars": 2, "warnings": 1, "timeout_s": 600.0, "corpus_per_suite": None},
}
_WORD = re.compile(r"[a-z]+")


# ------------------------------------------------------------------------------------------ judging


def first_choice(answer: str, choices: Iterable[str]) -> str | None:
    """The first of `choices` among the answer's first five words (the tasks ask for it first)."""
    allowed = {c.lower() for c in choices}
    for word in _WORD.findall((answer or "").lower())[:5]:
        if word in allowed:
            return word
    return None


def parse_answer(text: str) -> str | None:
    """yes / no / maybe as the answer's first word (markup aside), else None."""
    words = _WORD.findall((text or "").lower())
    return words[0] if words and words[0] in suites.YES_NO_MAYBE else None


def judge(task: dict[str, Any], answer: str | None) -> bool:
    """Is `answer` right by the task's judge (exact | contains | choice | path)?"""
    if not answer:
        return False
    golds = [task["gold"]] if isinstance(task["gold"], str) else list(task["gold"])
    kind = task["judge"]
    if kind == "exact":
        return " ".join(answer.lower().split()) in {" ".join(g.lower().split()) for g in golds}
    if kind == "contains":
        return any(g.lower() in answer.lower() for g in golds)
    if kind == "choice":
        return first_choice(answer, task.get("choices") or suites.YES_NO_MAYBE) in {g.lower() for g in golds}
    if kind == "path":
        from runtime.gate import cited_paths

        # the full repository path (a bare file name like query.py is not an answer to "which file")
        return any(p == g or p.endswith("/" + g) for p in cited_paths(answer) for g in golds)
    raise ValueError(f"unknown judge {kind!r}")


# ------------------------------------------------------------------------------------------ retrieval


@dataclass
class ExcludingSearcher:
    """Never returns the given documents, nor any run logged for the given task ids."""

    inner: Any
    exclude_ids: frozenset[str]
    exclude_tasks: frozenset[str]

    def search(self, query: str, *, k: int = 8, mode: str = "hybrid", categories: list[str] | None = None) -> list[Any]:
        hits = self.inner.search(query, k=k + 40, mode=mode, categories=categories)
        kept = [h for h in hits if h.id not in self.exclude_ids
                and str((h.metadata or {}).get("task_id")) not in self.exclude_tasks][:k]
        return [h.model_copy(update={"rank": n}) for n, h in enumerate(kept, start=1)]

    def export_changed(self, ws: Any) -> bool:
        return False


def corpus_documents(corpus: list[dict[str, Any]]) -> list[Any]:
    from index.documents import Document

    return [
        Document(id=d["_id"], text=d["text"], title=d.get("title") or None, category=d.get("category", "accepted"),
                 metadata={"source_run_id": d["_id"], "task_id": d["_id"], "source_files": []})
        for d in corpus
    ]


def build_searcher(work: Path, corpus_docs: list[Any], ws: Any, settings: Any, embedder: Any) -> tuple[Any, int]:
    """One index over the suites' corpus and the feedback workspace's RAG export (incremental)."""
    from index.build import build_index
    from index.documents import load_rag_export
    from index.manifest import IndexPaths
    from index.fusion import Fusion
    from index.search import open_index
    from index.store import HnswParams

    fed = load_rag_export(ws.rag_path, relative_name="exports/rag/playbooks.jsonl").documents
    paths = IndexPaths(work / "index")
    report = build_index(paths, corpus_docs + fed, embedder, collection="escalation",
                         hnsw=HnswParams.from_settings(settings.index), progress=False)
    return open_index(paths, embedder, fusion=Fusion.from_settings(settings.index), search_ef=settings.index.hnsw_search_ef), report.embedded


def feed_back(ws: Any, settings: Any) -> dict[str, Any]:
    """collect -> score -> export rag: the product's loop that turns replay runs into playbooks."""
    from distill.collect import run_collect
    from distill.export import run_export
    from distill.score import run_score

    out: dict[str, Any] = {}
    for name, fn in (("collect", run_collect), ("score", run_score)):
        t0 = time.perf_counter()
        fn(ws, settings)
        out[f"{name}_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    report = run_export(ws, settings, "rag")
    out["export_rag_s"] = round(time.perf_counter() - t0, 3)
    out["rag_rows_written"] = report.totals.written
    return out


# ------------------------------------------------------------------------------------------ one task


def gate_score(attempt: Any) -> float:
    """Share of gate checks passed (0 for an error): the router's score for the routing curve."""
    if attempt is None or attempt.error is not None or attempt.gate is None:
        return 0.0
    checks = attempt.gate.checks
    return sum(c.passed for c in checks) / len(checks) if checks else 0.0


def _failed(attempt: Any) -> list[str]:
    if attempt is None or attempt.gate is None:
        return []
    return [c.name for c in attempt.gate.checks if not c.passed]


def strong_attempt(run: Any, strong_extra: Any = None) -> Any:
    """The strong model's answer to this run's prompt: the escalation, else the routing curve's extra call."""
    return (run.attempts[1] if len(run.attempts) > 1 else None) or strong_extra


def record(run: Any, task: dict[str, Any], condition: str, round_no: int, strong_extra: Any = None) -> dict[str, Any]:
    local = run.attempts[0]
    strong = strong_attempt(run, strong_extra)
    local_passed = bool(local.error is None and local.gate is not None and local.gate.passed)
    delivered = run.final_output if run.final_verdict in ("validated_local", "escalated_validated") else None
    return {
        "task_id": task["id"], "family": task["family"], "condition": condition, "round": round_no,
        "gold": task["gold"], "verdict": run.final_verdict, "escalated": run.escalated,
        "gate_passed": local_passed, "gate_score": gate_score(local), "failed_checks": _failed(local),
        "error": local.error,
        "correct": judge(task, local.output) if local.error is None else False,
        "strong_correct": judge(task, strong.output) if strong is not None and strong.error is None else None,
        "strong_gate_passed": bool(strong is not None and strong.error is None and strong.gate is not None and strong.gate.passed),
        "strong_failed_checks": _failed(strong),
        "system_correct": judge(task, delivered) if delivered else False,
        "delivered": delivered is not None,
        "latency_ms": local.latency_ms, "prompt_tokens": local.prompt_tokens, "completion_tokens": local.completion_tokens,
        "strong_latency_ms": strong.latency_ms if strong is not None else None,
        "strong_prompt_tokens": strong.prompt_tokens if strong is not None else None,
        "strong_completion_tokens": strong.completion_tokens if strong is not None else None,
        "total_ms": run.timings_ms.get("total"), "retrieve_ms": run.timings_ms.get("retrieve"),
        "retrieved": len(run.retrieved), "bundle_items": len(run.bundle.exemplars) + len(run.bundle.warnings),
        "answer": (local.output or "")[:600], "strong_answer": (strong.output or "")[:600] if strong is not None else None,
    }


# ------------------------------------------------------------------------------------------ summaries


def gate_input(run: Any, task: dict[str, Any], condition: str, round_no: int, strong_extra: Any = None) -> dict[str, Any]:
    """What the gate judged in one run (the task, the bundle, the local answer and the strong one),
    in full: the record keeps 600 characters of each answer and no bundle."""
    local = run.attempts[0]
    strong = strong_attempt(run, strong_extra)
    return {"task_id": task["id"], "condition": condition, "round": round_no, "task": task["task"],
            "bundle": run.bundle.model_dump(mode="json"),
            "answer": local.output if local.error is None else None,
            "strong_answer": strong.output if strong is not None and strong.error is None else None}


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def summarise(recs: list[dict[str, Any]]) -> dict[str, Any]:
    if not recs:
        return {"n": 0}
    n = len(recs)
    accepted = [r for r in recs if r["gate_passed"]]
    rejected = [r for r in recs if not r["gate_passed"]]
    correct = [r for r in recs if r["correct"]]
    strong_known = [r for r in recs if r["strong_correct"] is not None]
    lat = [r["latency_ms"] for r in recs if r["latency_ms"]]
    slat = [r["strong_latency_ms"] for r in recs if r["strong_latency_ms"]]
    out = {
        "n": n,
        "escalation_rate": len(rejected) / n,
        "gate_pass_rate": len(accepted) / n,
        "local_accuracy": len(correct) / n,
        "gate_precision": _rate(sum(r["correct"] for r in accepted), len(accepted)),
        "false_accept": _rate(sum(not r["correct"] for r in accepted), len(accepted)),
        "false_reject": _rate(sum(r["correct"] for r in rejected), len(correct)),
        "system_accuracy": sum(r["system_correct"] for r in recs) / n,
        "delivered_rate": sum(r["delivered"] for r in recs) / n,
        "strong_accuracy": _rate(sum(bool(r["strong_correct"]) for r in strong_known), len(strong_known)),
        "local_latency_s_p50": statistics.median(lat) / 1000 if lat else None,
        "local_latency_s_mean": statistics.fmean(lat) / 1000 if lat else None,
        "strong_latency_s_p50": statistics.median(slat) / 1000 if slat else None,
        "strong_calls": len(slat),
        "prompt_tokens_mean": statistics.fmean([r["prompt_tokens"] for r in recs if r["prompt_tokens"]] or [0]),
        "completion_tokens_mean": statistics.fmean([r["completion_tokens"] for r in recs if r["completion_tokens"]] or [0]),
        "strong_prompt_tokens_mean": statistics.fmean([r["strong_prompt_tokens"] for r in recs if r["strong_prompt_tokens"]] or [0]),
        "errors": sum(r["error"] is not None for r in recs),
    }
    out["checks"] = check_contributions(recs)
    return out


def check_contributions(recs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per gate check: wrong answers it rejected (alone or with others), correct answers it rejected,
    and how many of each it rejected alone (what removing it would let through / give back)."""
    names = sorted({c for r in recs for c in r["failed_checks"]})
    out: dict[str, dict[str, int]] = {}
    for name in names:
        hit = [r for r in recs if name in r["failed_checks"]]
        alone = [r for r in hit if r["failed_checks"] == [name]]
        out[name] = {
            "rejected_wrong": sum(not r["correct"] for r in hit),
            "rejected_correct": sum(r["correct"] for r in hit),
            "only_check_wrong": sum(not r["correct"] for r in alone),
            "only_check_correct": sum(r["correct"] for r in alone),
        }
    return out


def routing(weak: list[int], strong: list[int], scores: list[float]) -> dict[str, Any]:
    """RouteLLM-style curve: escalate tasks whose gate score is below a threshold, sweep it.

    PGR(c) = (quality(c) - q_weak) / (q_strong - q_weak) at escalated share c; APGR is the area under
    PGR over c in [0, 1] (trapezoids); CPT(50%) the smallest share reaching PGR >= 0.5. Random
    escalation is the diagonal (APGR 0.5, CPT 50%); the oracle escalates only tasks the weak model
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


# ------------------------------------------------------------------------------------------ main


def trim_corpus(corpus: list[dict[str, Any]], tasks: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The documents named after a task (e.g. a PubMedQA question's own abstract) and the first others,
    n in all (--quick: embedding a whole corpus would dominate a smoke run)."""
    keys = {t["id"].split(":", 1)[-1] for t in tasks}
    own = [d for d in corpus if d["_id"].split(":", 1)[-1] in keys]
    rest = [d for d in corpus if d not in own][: max(0, n - len(own))]
    return own + rest


def load_tasks(args: Any, sizes: dict[str, Any], work: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    notes: list[str] = []
    tasks: list[dict[str, Any]] = []
    corpus: list[dict[str, Any]] = []
    specs = args.suite or list(suites.FAMILIES)
    for spec in specs:
        folder = Path(spec)
        if spec in suites.FAMILIES and not (folder / "tasks.jsonl").is_file():
            n = sizes["per_family"] or FULL[spec]
            try:
                folder = suites.build(spec, n, work / "suites" / spec, split=args.split)
            except FileNotFoundError as exc:
                notes.append(f"suite {spec} skipped: its data is not here ({exc.filename})")
                continue
        t, c = suites.load_suite(folder)
        t = t[: args.tasks] if args.tasks else t
        if sizes["corpus_per_suite"]:
            c = trim_corpus(c, t, sizes["corpus_per_suite"])
        seen = {d["_id"] for d in corpus}
        corpus += [d for d in c if d["_id"] not in seen]
        tasks += t
    return tasks, corpus, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", action="append", help="a suite folder or a built-in name (pubmedqa, swebench, sample); repeatable")
    ap.add_argument("--tasks", type=count, help="the first N tasks of each suite")
    ap.add_argument("--split", choices=("test", "dev"), default="test",
                    help="built-in suites: the test split (reported) or the dev split (for tuning)")
    ap.add_argument("--rounds", type=count, help="feedback rounds of the retrieval condition (default 3)")
    ap.add_argument("--local-only", action="store_true", help="no strong model: the escalation rate is what would escalate")
    ap.add_argument("--quick", action="store_true", help="CI smoke: 2 tasks per family, 1 round, short answers")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument("--max-tokens", type=count)
    ap.add_argument("--k", type=count, help="retrieved items per prompt (default 6)")
    ap.add_argument("--item-max-chars", type=count, help="characters kept per retrieved item (default 700)")
    ap.add_argument("--routing-every", type=count, default=1,
                    help="the routing curve on every N-th retrieval task (the strong model answers each of them; default 1 = all)")
    ap.add_argument("--backend", default="llamacpp", help="local backend (default: the embedded packaged Qwen 0.5B)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--work-dir", type=Path)
    ap.add_argument("--name", help="results file stem (default escalation / escalation_quick)")
    args = ap.parse_args(argv)
    from distill.jsonl import write_atomic

    sizes = dict(SIZES["quick" if args.quick else "default"])
    if args.rounds is not None:
        sizes["rounds"] = max(1, args.rounds)
    if args.max_tokens is not None:
        sizes["max_tokens"] = args.max_tokens
    if args.k is not None:
        sizes["k"] = max(1, args.k)
    if args.item_max_chars is not None:
        sizes["item_max_chars"] = max(100, args.item_max_chars)
    sizes["routing_every"] = max(1, args.routing_every)
    name = args.name or ("escalation_quick" if args.quick else "escalation")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="distill-escalation-"))
    try:
        result = run(args, sizes, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    gate_inputs = result.pop("gate_inputs")
    md = markdown(result)
    write_results(args.out_dir, name, result, md)
    write_atomic(args.out_dir / f"{name}_answers.jsonl",
                 b"".join(json.dumps(g, sort_keys=True).encode() + b"\n" for g in gate_inputs))
    plot_rates(result, args.out_dir / f"{name}_rates.png")
    plot_rounds(result, args.out_dir / f"{name}_rounds.png")
    if result["routing"].get("points"):
        plot_routing(result, args.out_dir / f"{name}_routing.png")
    if args.json:
        sys.stdout.write(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2, default=str) + "\n")
    log(md)
    return 0


def run(args: Any, sizes: dict[str, Any], work: Path) -> dict[str, Any]:
    from distill.config import load_settings
    from distill.workspace import Workspace
    from index.embedder import Embedder
    from runtime.backends import BackendError, EscalationTarget, escalation_backend, make_backend
    from runtime.prompt import Prompt, render
    from runtime.replay import ReplayOptions, ReplaySession, run_attempt

    info = machine()
    t_start = time.perf_counter()
    tasks, corpus, notes = load_tasks(args, sizes, work)
    if not tasks:
        raise SystemExit("no tasks: every suite was skipped (" + "; ".join(notes) + ")")
    families = sorted({t["family"] for t in tasks})
    counts = ", ".join(f"{f}: {sum(t['family'] == f for t in tasks)}" for f in families)
    log(f"{len(tasks)} tasks ({counts}), {len(corpus)} corpus documents")

    ws_ret = Workspace.resolve(work / "ws-retrieval")
    ws_none = Workspace.resolve(work / "ws-no-retrieval")
    for w in (ws_ret, ws_none):
        w.kb_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(ws_ret.root)
    rt = settings.runtime.model_copy(update={k: sizes[k] for k in
                                             ("max_tokens", "num_ctx", "item_max_chars", "exemplars", "warnings", "timeout_s")})
    settings = settings.model_copy(update={"runtime": rt})

    timings: dict[str, Any] = {}
    t0 = time.perf_counter()
    embedder = Embedder(settings.index.model, batch_size=settings.index.batch_size)
    docs = corpus_documents(corpus)
    searcher, embedded = build_searcher(work, docs, ws_ret, settings, embedder)
    timings["index_s"] = round(time.perf_counter() - t0, 2)
    timings["index_embedded"] = embedded

    t0 = time.perf_counter()
    local = make_backend(args.backend, rt)  # type: ignore[arg-type]
    timings["local_load_s"] = round(time.perf_counter() - t0, 2)
    strong = None
    strong_desc = "none (--local-only): the escalation rate is what would escalate"
    if not args.local_only:
        target = EscalationTarget.from_settings(rt)
        t0 = time.perf_counter()
        try:
            strong = escalation_backend(rt)
        except BackendError as exc:
            raise SystemExit(f"no strong model: {exc} (use --local-only)") from exc
        timings["strong_load_s"] = round(time.perf_counter() - t0, 2)
        strong_desc = f"{target.backend} / {strong.model}"
    local_desc = f"{local.name} / {local.model}"
    log(f"local model: {local_desc}; strong model: {strong_desc}")

    def session(ws: Any, retrieval: bool) -> ReplaySession:
        opts = ReplayOptions(k=sizes["k"], mode=rt.mode, backend=args.backend, no_retrieval=not retrieval,
                             allow_escalation=strong is not None, local_only=strong is None)
        return ReplaySession(ws, settings, opts, local=local, escalation=strong)

    records: list[dict[str, Any]] = []
    judged: list[dict[str, Any]] = []

    routed: set[str] = {t["id"] for i, t in enumerate(tasks) if i % sizes["routing_every"] == 0}

    def one(sess: ReplaySession, task: dict[str, Any], condition: str, round_no: int) -> None:
        if not sess.options.no_retrieval:
            sess.searcher = ExcludingSearcher(searcher, frozenset(task.get("exclude") or []), frozenset({task["id"]}))
        run = sess.run(task["task"], task_id=task["id"])
        extra = None
        if strong is not None and not run.escalated and condition == "retrieval" and task["id"] in routed:
            # the routing curve needs the strong model's answer to the same prompt on every task
            messages = render(task["task"], run.bundle, run.bundle.nonce or "")
            extra = run_attempt(strong, Prompt(messages, run.bundle, 0), task["task"], settings, escalation=True)
        rec = record(run, task, condition, round_no, extra)
        records.append(rec)
        judged.append(gate_input(run, task, condition, round_no, extra))
        log(f"  r{round_no} {condition:12s} {task['id'][:44]:44s} gate={'pass' if rec['gate_passed'] else 'FAIL'} "
            f"correct={int(rec['correct'])} strong={rec['strong_correct']} system={int(rec['system_correct'])} "
            f"{(rec['latency_ms'] or 0) / 1000:5.1f}s {rec['prompt_tokens']}+{rec['completion_tokens']} tok "
            f"{','.join(rec['failed_checks'])}")

    rounds_info: list[dict[str, Any]] = []
    splits = suites.split_rounds(tasks, sizes["rounds"])
    ret_session = session(ws_ret, True)
    for round_no, round_tasks in enumerate(splits, start=1):
        log(f"round {round_no}: {len(round_tasks)} tasks with retrieval")
        t0 = time.perf_counter()
        for task in round_tasks:
            one(ret_session, task, "retrieval", round_no)
        info_round: dict[str, Any] = {"round": round_no, "tasks": len(round_tasks), "run_s": round(time.perf_counter() - t0, 1)}
        if round_no < len(splits):
            t0 = time.perf_counter()
            info_round["feed_back"] = feed_back(ws_ret, settings)
            searcher, info_round["embedded"] = build_searcher(work, docs, ws_ret, settings, embedder)
            info_round["feed_back_s"] = round(time.perf_counter() - t0, 2)
        rounds_info.append(info_round)
    log(f"no retrieval: {len(tasks)} tasks")
    none_session = session(ws_none, False)
    for task in tasks:
        one(none_session, task, "no_retrieval", 0)

    def pick(**kw: Any) -> list[dict[str, Any]]:
        return [r for r in records if all(r[k] == v for k, v in kw.items())]

    conditions = {}
    for cond in ("retrieval", "no_retrieval"):
        recs = pick(condition=cond)
        conditions[cond] = {**summarise(recs), "by_family": {f: summarise(pick(condition=cond, family=f)) for f in families}}
    per_round = [{"round": r, "by_family": {f: summarise(pick(condition="retrieval", round=r, family=f)) for f in families},
                  **{k: v for k, v in summarise(pick(condition="retrieval", round=r)).items() if k != "checks"}}
                 for r in range(1, sizes["rounds"] + 1)]
    route: dict[str, Any] = {"strong_model": None, "note": "no strong model (--local-only): no routing curve"}
    # the sampled tasks only (escalated or not), so that escalated tasks are not over-represented
    ret = [r for r in pick(condition="retrieval") if r["strong_correct"] is not None and r["task_id"] in routed]
    if strong is not None and ret:
        route = {"strong_model": strong_desc, "n": len(ret),
                 **routing([int(r["correct"]) for r in ret], [int(bool(r["strong_correct"])) for r in ret],
                           [r["gate_score"] for r in ret]),
                 "gate_point": {"escalated_share": sum(not r["gate_passed"] for r in ret) / len(ret)}}
    return {
        "suite": "escalation", "quick": args.quick, "split": args.split, "machine": info, "sizes": sizes, "families": families,
        "local_model": local_desc, "strong_model": strong_desc, "local_only": strong is None, "notes": notes,
        "timings_s": timings, "conditions": conditions, "rounds": per_round, "rounds_info": rounds_info,
        "routing": route, "runs": records, "gate_inputs": judged, "wall_s": round(time.perf_counter() - t_start, 1),
        "loadavg_at_end": list(os.getloadavg()),
    }


# ------------------------------------------------------------------------------------------ report


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for cond in ("retrieval", "no_retrieval"):
        c = r["conditions"][cond]
        for fam, s in [*c["by_family"].items(), ("all", c)]:
            if not s.get("n"):
                continue
            rows.append([cond, fam, s["n"], _pct(s["escalation_rate"]), _pct(s["local_accuracy"]), _pct(s["gate_precision"]),
                         _pct(s["false_accept"]), _pct(s["false_reject"]), _pct(s["system_accuracy"]), _pct(s["strong_accuracy"]),
                         s["local_latency_s_p50"] and round(s["local_latency_s_p50"], 1),
                         s["strong_latency_s_p50"] and round(s["strong_latency_s_p50"], 1),
                         round(s["prompt_tokens_mean"]), round(s["completion_tokens_mean"])])
    lines = [
        f"### Escalation ({r['local_model']} local, {r['strong_model']} strong; {sum(1 for x in r['runs'] if x['condition'] == 'retrieval')} tasks, "
        f"{len(r['rounds'])} round(s))\n",
        md_table(["condition", "family", "n", "escalation", "local acc", "gate precision", "false accept", "false reject",
                  "system acc", "strong acc", "local s p50", "strong s p50", "prompt tok", "completion tok"], rows),
        "",
        "Escalation rate per feedback round (retrieval; each round's accepted runs are indexed for the next): "
        + "; ".join(f"round {x['round']}: " + ", ".join(f"{f} {_pct(s.get('escalation_rate'))}" for f, s in x["by_family"].items())
                    for x in r["rounds"]),
        "",
    ]
    checks = r["conditions"]["retrieval"].get("checks") or {}
    if checks:
        lines.append("Gate checks (retrieval): wrong answers rejected / correct answers rejected (rejected by this check alone)\n")
        lines.append(md_table(["check", "wrong rejected", "correct rejected", "wrong, alone", "correct, alone"],
                              [[k, v["rejected_wrong"], v["rejected_correct"], v["only_check_wrong"], v["only_check_correct"]]
                               for k, v in sorted(checks.items())]))
    rt = r["routing"]
    if rt.get("points"):
        lines.append(f"- routing by gate score against {rt['strong_model']} (n={rt['n']}): APGR {rt['apgr'] and round(rt['apgr'], 3)}, "
                     f"CPT(50%) {_pct(rt['cpt50'])}; random APGR 0.5 / CPT(50%) 50%; oracle APGR "
                     f"{rt['oracle']['apgr'] and round(rt['oracle']['apgr'], 3)} / CPT(50%) {_pct(rt['oracle']['cpt50'])}; "
                     f"weak accuracy {_pct(rt['q_weak'])}, strong {_pct(rt['q_strong'])}; the gate itself escalated "
                     f"{_pct(rt['gate_point']['escalated_share'])}")
    else:
        lines.append(f"- routing: {rt.get('note')}")
    for n in r["notes"]:
        lines.append(f"- note: {n}")
    m = r["machine"]
    lines.append(f"- wall time {r['wall_s'] / 60:.1f} min; {m['cpu_count']} CPUs, load {m['loadavg_at_start']} at start, "
                 f"{[round(x, 2) for x in r['loadavg_at_end']]} at end; commit {m['git_commit']}")
    return "\n".join(lines) + "\n"


def plot_rates(r: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    groups = [(c, f) for c in ("retrieval", "no_retrieval") for f in r["families"] if r["conditions"][c]["by_family"][f].get("n")]
    xs = list(range(len(groups)))
    for offset, key, label in ((-0.27, "escalation_rate", "escalation"), (0, "system_accuracy", "system accuracy"),
                               (0.27, "gate_precision", "gate precision")):
        ax.bar([x + offset for x in xs], [r["conditions"][c]["by_family"][f][key] or 0 for c, f in groups], 0.27, label=label)
    ax.set_xticks(xs, [f"{f}\n{c}" for c, f in groups])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"escalation, accuracy and gate precision ({r['local_model']})")
    return save_figure(fig, path)


def plot_rounds(r: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    xs = [x["round"] for x in r["rounds"]]
    for fam in r["families"]:
        ax.plot(xs, [x["by_family"][fam].get("escalation_rate", 0) for x in r["rounds"]], marker="o", label=fam)
    ax.set_xticks(xs)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("round (earlier rounds' accepted runs indexed)")
    ax.set_ylabel("escalation rate")
    ax.legend(fontsize=8)
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
    ax.set_title(f"routing vs {rt['strong_model']}")
    ax.legend()
    return save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(cli(main))

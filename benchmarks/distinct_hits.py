"""Repeated texts among the hits: what a search returns when several runs wrote the same text.

The sample workspace (collect -> score -> export rag -> index, the product's own stages) holds the
same text under several ids: a fact distilled twice, one verdict given to two reviews. Each query is
answered twice in one process, alternating: by the rankers' own top k (what `distill search` and the
replay runtime returned before a search showed a text once) and by `IndexSearcher.search` (a text
several rows hold is one hit naming the others, and the next texts take the repeats' places).
Counted: hits that repeat an earlier hit's title, text and category; distinct texts per query; the
replay bundle built from the hits (`[runtime] k`, exemplars, warnings: the local model's prompt) and
the characters of it that repeat; and the CPU time of both searches. The index build encodes each
text once: its report's texts encoded and vectors shared, and (full run only) the CPU time of
encoding every row's text against every distinct text, side by side.

    python benchmarks/distinct_hits.py            # every review task and RAG row title of the sample
    python benchmarks/distinct_hits.py --quick    # 60 queries of each set

Results: benchmarks/results/distinct_hits[_quick].json/.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import RESULTS, cli, log, machine, md_table, write_results  # noqa: E402
from benchmarks.suites import sample  # noqa: E402

MODES = ("hybrid", "dense", "bm25")
KS = (3, 8)
Content = tuple[str | None, str, str | None]


def own_top_k(searcher: Any, query: str, k: int, mode: str) -> list[Any]:
    """The hits as the rankers order them, repeats and all: the search before this benchmark's change
    (the same rankings and fusion, cut at k)."""
    if mode == "dense":
        ranked = searcher.dense(query, k)
    elif mode == "bm25":
        ranked = searcher.lexical(query, k)
    else:
        dense, lexical = searcher.rankings(query, max(searcher.hybrid_depth, 2 * k), None)
        ranked = searcher.fusion.fuse(dense, lexical, k=k)
    return searcher._hits(ranked, extra={})


def repeats(hits: Sequence[Any]) -> int:
    contents: list[Content] = [(h.title, h.text, h.category) for h in hits]
    return len(contents) - len(set(contents))


def bundle_repeats(hits: Sequence[Any], exemplars: int, warnings: int) -> tuple[int, int, int, int]:
    """(items, items whose text repeats an earlier item's, characters of those, those of another
    category: the same text as an exemplar and a warning) in the replay bundle."""
    from runtime.bundle import build_bundle

    bundle = build_bundle(hits, exemplars=exemplars, warnings=warnings)
    items = [*bundle.exemplars, *bundle.warnings]
    seen: set[tuple[str | None, str]] = set()
    seen_in_category: set[Content] = set()
    repeated = chars = other_category = 0
    for item in items:
        key = (item.title, item.text)
        if key in seen:
            repeated += 1
            chars += len(item.text) + len(item.title or "")
            other_category += (*key, item.category) not in seen_in_category
        seen.add(key)
        seen_in_category.add((*key, item.category))
    return len(items), repeated, chars, other_category


def measure(searcher: Any, queries: list[str], k: int, mode: str) -> dict[str, Any]:
    before: dict[str, Any] = {"hits": 0, "repeated": 0, "queries_with_repeat": 0, "distinct": []}
    after: dict[str, Any] = {"hits": 0, "repeated": 0, "queries_with_repeat": 0, "distinct": []}
    cpu = {"before": 0.0, "after": 0.0}
    searches: list[tuple[str, Callable[[str], list[Any]], dict[str, Any]]] = [
        ("before", lambda q: own_top_k(searcher, q, k, mode), before),
        ("after", lambda q: searcher.search(q, k=k, mode=mode), after)]
    for n, query in enumerate(queries):
        for name, search, tally in searches if n % 2 == 0 else searches[::-1]:  # alternate which goes first
            t0 = time.process_time()
            hits = search(query)
            cpu[name] += time.process_time() - t0
            r = repeats(hits)
            tally["hits"] += len(hits)
            tally["repeated"] += r
            tally["queries_with_repeat"] += r > 0
            tally["distinct"].append(len(hits) - r)
    for tally in (before, after):
        tally["distinct_per_query"] = round(statistics.fmean(tally.pop("distinct")), 3) if queries else None
    return {"mode": mode, "k": k, "queries": len(queries), "before": before, "after": after,
            "cpu_ms_per_query": {name: round(1000 * s / max(1, len(queries)), 3) for name, s in cpu.items()}}


def bundles(searcher: Any, queries: list[str], k: int, mode: str, exemplars: int, warnings: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, search in (("before", lambda q: own_top_k(searcher, q, k, mode)),
                         ("after", lambda q: searcher.search(q, k=k, mode=mode))):
        items = repeated = chars = with_repeat = other_category = 0
        for query in queries:
            n, r, c, o = bundle_repeats(search(query), exemplars, warnings)
            items, repeated, chars, with_repeat = items + n, repeated + r, chars + c, with_repeat + (r > 0)
            other_category += o
        out[name] = {"items": items, "repeated_items": repeated, "repeated_chars": chars, "bundles_with_repeat": with_repeat,
                     "repeated_under_another_category": other_category}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 queries of each set (CI smoke)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    from distill.config import load_settings
    from distill.jsonl import iter_json
    from distill.workspace import Workspace
    from index.build import run_index
    from index.search import open_searcher

    with tempfile.TemporaryDirectory(prefix="distill-distinct-hits-") as tmp:
        work = Path(tmp) / "ws"
        test_tasks, _ = sample(10_000, work, split="test")
        dev_tasks, _ = sample(10_000, Path(tmp) / "dev", split="dev")
        ws = Workspace.resolve(work)
        settings = load_settings(ws.root)
        built = run_index(ws, settings)
        rows = [r for r in iter_json(ws.rag_path) if isinstance(r, dict)]
        limit = 60 if args.quick else None
        query_sets = {
            "review tasks": [t["task"] for t in [*test_tasks, *dev_tasks]][:limit],
            "RAG row titles": list(dict.fromkeys(str(r.get("title") or r["id"]) for r in rows))[:limit],
        }
        searcher = open_searcher(ws, settings)
        searcher.search("warm up", k=1)  # the model loads once, outside the timed searches
        groups = set(searcher.same_content.values())
        rt = settings.runtime
        build: dict[str, Any] = {"documents": built.count, "texts_encoded": built.embedded,
                                 "vectors_shared": built.shared_vectors, "embed_s": built.timings_s.get("embed")}
        if not args.quick:
            texts = [d.embed_text for d in searcher.bm25.docs]
            cpu: dict[str, float] = {}
            for name, batch in (("every_row", texts), ("distinct_texts", list(dict.fromkeys(texts)))) * 2:
                t0 = time.process_time()
                searcher.embedder.encode_documents(batch, progress=False)
                cpu[name] = min(cpu.get(name, float("inf")), time.process_time() - t0)  # best of two, alternating
            build["encode_cpu_s"] = {k: round(v, 2) for k, v in cpu.items()}
        result: dict[str, Any] = {
            "suite": "distinct_hits", "quick": args.quick, "machine": machine(),
            "index": {"documents": searcher.count, "texts_held_more_than_once": len(groups),
                      "documents_repeating_another": sum(len(g) - 1 for g in groups)},
            "build": build,
            "runs": [{"queries_set": name, **measure(searcher, queries, k, mode)}
                     for name, queries in query_sets.items() for mode in MODES for k in KS],
            "bundle": {"k": rt.k, "mode": rt.mode, "exemplars": rt.exemplars, "warnings": rt.warnings,
                       **{name: bundles(searcher, queries, rt.k, rt.mode, rt.exemplars, rt.warnings)
                          for name, queries in query_sets.items()}},
        }
        searcher.close()
    md = markdown(result)
    write_results(args.out_dir, "distinct_hits" + ("_quick" if args.quick else ""), result, md)
    log(md)
    return 0


def _pct(part: int, whole: int) -> str:
    return f"{part:,} ({part / whole:.1%})" if whole else "0"


def markdown(r: dict[str, Any]) -> str:
    ix = r["index"]
    lines = [f"### Repeated texts among the hits (sample workspace: {ix['documents']:,} indexed RAG rows, "
             f"{ix['texts_held_more_than_once']:,} texts held by more than one, {ix['documents_repeating_another']:,} "
             "rows repeating another's title, text and category)\n",
             md_table(["queries", "mode", "k", "n", "repeated hits before", "after", "queries with a repeat before",
                       "after", "distinct texts per query before", "after", "CPU ms/query before", "after"],
                      [[x["queries_set"], x["mode"], x["k"], x["queries"], _pct(x["before"]["repeated"], x["before"]["hits"]),
                        x["after"]["repeated"], x["before"]["queries_with_repeat"], x["after"]["queries_with_repeat"],
                        x["before"]["distinct_per_query"], x["after"]["distinct_per_query"],
                        x["cpu_ms_per_query"]["before"], x["cpu_ms_per_query"]["after"]] for x in r["runs"]])]
    bd = r["build"]
    cpu = bd.get("encode_cpu_s")
    lines.append(f"\nIndex build: {bd['documents']:,} rows, {bd['texts_encoded']:,} texts encoded, "
                 f"{bd['vectors_shared']:,} vectors shared by rows of the same text"
                 + (f"; encoding every row's text {cpu['every_row']} s CPU vs every distinct text "
                    f"{cpu['distinct_texts']} s (best of two each, alternating)" if cpu else "") + ".\n")
    b = r["bundle"]
    rows = []
    for name, v in b.items():
        if isinstance(v, dict):
            rows.append([name, _pct(v["before"]["repeated_items"], v["before"]["items"]),
                         f'{v["after"]["repeated_items"]} ({v["after"]["repeated_under_another_category"]} under another category)',
                         v["before"]["bundles_with_repeat"], v["after"]["bundles_with_repeat"],
                         f"{v['before']['repeated_chars']:,}", f"{v['after']['repeated_chars']:,}"])
    lines += [f"\nThe replay bundle (`[runtime]` k = {b['k']}, {b['mode']}, up to {b['exemplars']} exemplars and "
              f"{b['warnings']} warnings: what the local model reads):\n",
              md_table(["queries", "repeated items before", "after", "bundles with a repeat before", "after",
                        "prompt characters repeated before", "after"], rows),
              "\n- A text held under two categories (an extraction row joined to an accepted and to a partially "
              "accepted parent) is two hits, an exemplar and a warning: the same text judged two ways is two pieces of "
              "evidence, and the exemplars/warnings split is by category.",
              "- before: the rankers' own top k (the search before it showed a text once); after: "
              "`IndexSearcher.search`. Both in one process, alternating per query; CPU is process time.",
              f"- machine: {r['machine']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(cli(main))

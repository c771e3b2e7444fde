"""Hybrid fusion chosen on data: does hybrid beat both of its parts on held-out queries?

    python benchmarks/fusion.py [--quick] [--work-dir DIR]

Two BEIR-format sets, each with a dev split (to choose the fusion) and a test split (to report):
- SciFact: qrels/train.tsv is dev, qrels/test.tsv is test (5,183 abstracts);
- PubMedQA: every PQA-L question against all 1,000 of its abstracts (title-less contexts joined),
  its own abstract the one relevant document; questions split in half by a hash of the PMID.

Each corpus is indexed once through the product's own path (index.build.build_index; the index is
kept in --work-dir, so a re-run reuses it). Per query the benchmark takes the top 100 of dense and of
BM25 from the product's searcher, then scores every fusion of index/fusion.py over a grid of weights
on the dev splits. The chosen fusion is, among those that beat or tie the better of their two parts on
every dev set, the one with the largest mean margin. The test splits are then searched through `searcher.search(mode=
"hybrid")` with that fusion (not recomputed offline). The query embedding runs through ONNX Runtime
and, for the parity check, through torch on the same index.

Results: benchmarks/results/fusion[_quick].json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.beir import BeirDataset, load_beir  # noqa: E402
from benchmarks.ir_metrics import evaluate  # noqa: E402
from benchmarks.report import RESULTS, cli, log, machine, md_table, targets_line, write_results  # noqa: E402
from benchmarks.suites import shared_dataset  # noqa: E402

DEPTH = 100
RRF_WEIGHTS = [round(0.1 * i, 2) for i in range(1, 10)]
SCORE_WEIGHTS = [round(0.05 * i, 2) for i in range(0, 21)]
SCIFACT_TARGET = 0.72


def pubmedqa_beir() -> tuple[BeirDataset, BeirDataset]:
    """(dev, test): PQA-L questions against all 1,000 abstracts, split by a hash of the PMID."""
    data = json.loads((shared_dataset("pubmedqa_pqal") / "ori_pqal.json").read_text())
    corpus = {pmid: ("", " ".join(row["CONTEXTS"])) for pmid, row in data.items()}
    queries = {pmid: row["QUESTION"] for pmid, row in data.items()}
    split: dict[str, dict[str, dict[str, int]]] = {"dev": {}, "test": {}}
    for pmid in data:
        half = "dev" if hashlib.sha256(pmid.encode()).digest()[0] % 2 == 0 else "test"
        split[half][pmid] = {pmid: 1}
    return (BeirDataset("pubmedqa", corpus, queries, split["dev"]), BeirDataset("pubmedqa", corpus, queries, split["test"]))


def scifact() -> tuple[BeirDataset, BeirDataset]:
    folder = shared_dataset("scifact")
    return load_beir(folder, split="train"), load_beir(folder, split="test")


def slice_for_quick(dev: BeirDataset, test: BeirDataset, n: int) -> tuple[BeirDataset, BeirDataset]:
    dq = sorted(dev.qrels)[:n]
    tq = sorted(test.qrels)[:n]
    keep = {d for q in dq for d in dev.qrels[q]} | {d for q in tq for d in test.qrels[q]}
    ids = [d for d in dev.corpus if d in keep] + [d for d in dev.corpus if d not in keep][: 6 * n]
    corpus = {d: dev.corpus[d] for d in ids}
    return (BeirDataset(dev.name, corpus, dev.queries, {q: dev.qrels[q] for q in dq}),
            BeirDataset(test.name, corpus, test.queries, {q: test.qrels[q] for q in tq}))


def ndcg(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> float:
    return round(evaluate(runs, qrels, ndcg_k=10, recall_k=DEPTH, mrr_k=10)["ndcg@10"], 4)


def retrieve(searcher: Any, queries: dict[str, str], qids: list[str]) -> dict[str, dict[str, list]]:
    """Per query: the dense and BM25 top DEPTH as (id, score), from the product's own retrievers."""
    out: dict[str, dict[str, list]] = {}
    for q in qids:
        text = queries[q]
        dense = searcher.dense(text, DEPTH)
        lexical = [(searcher.bm25.docs[i].id, s) for i, s in searcher.bm25.top(text, DEPTH)]
        out[q] = {"dense": dense, "bm25": lexical}
    return out


def grid_scores(ranked: dict[str, dict[str, list]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    from index.fusion import Fusion

    scores = {
        "dense": ndcg({q: [d for d, _ in r["dense"]] for q, r in ranked.items()}, qrels),
        "bm25": ndcg({q: [d for d, _ in r["bm25"]] for q, r in ranked.items()}, qrels),
    }
    for method, weights in (("rrf", RRF_WEIGHTS), ("score", SCORE_WEIGHTS)):
        for w in weights:
            fusion = Fusion(method=method, dense_weight=w)
            runs = {q: [d for d, _ in fusion.fuse(r["dense"], r["bm25"], k=DEPTH)] for q, r in ranked.items()}
            scores[f"{method}:{w}"] = ndcg(runs, qrels)
    return scores


def choose(dev_scores: dict[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    """Among the fusions that beat or tie the better of dense and BM25 on every dev set, the one with
    the largest mean margin (none: the largest worst margin). Returns (name, mean margin per name)."""
    worst: dict[str, float] = {}
    mean: dict[str, float] = {}
    for name in next(iter(dev_scores.values())):
        if name in ("dense", "bm25"):
            continue
        per = [s[name] - max(s["dense"], s["bm25"]) for s in dev_scores.values()]
        worst[name], mean[name] = min(per), sum(per) / len(per)
    safe = [n for n in worst if worst[n] >= 0]
    best = max(safe, key=lambda n: (mean[n], worst[n])) if safe else max(worst, key=lambda n: (worst[n], mean[n]))
    return best, mean


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="25 queries per split over a small corpus slice (CI smoke)")
    ap.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "distill-bench" / "fusion",
                    help="where the indexes are built and kept")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from distill.config import IndexSettings
    from index.build import build_index
    from index.documents import Document
    from index.embedder import Embedder
    from index.fusion import Fusion
    from index.manifest import IndexPaths
    from index.search import open_index
    from index.store import HnswParams

    cfg = IndexSettings()
    onnx = Embedder.from_settings(cfg.model_copy(update={"query_backend": "onnx"}))
    torch_q = Embedder.from_settings(cfg.model_copy(update={"query_backend": "torch"}))
    sets = {"scifact": scifact(), "pubmedqa": pubmedqa_beir()}
    if args.quick:
        sets = {k: slice_for_quick(*v, 25) for k, v in sets.items()}

    result: dict[str, Any] = {"suite": "fusion", "quick": args.quick, "depth": DEPTH, "datasets": {}}
    ranked: dict[str, dict[str, Any]] = {}
    for name, (dev, test) in sets.items():
        docs = [Document(id=d, text=t or title, title=title or None) for d, (title, t) in dev.corpus.items()]
        paths = IndexPaths(args.work_dir / ("quick-" if args.quick else "") / name)
        t = time.perf_counter()
        report = build_index(paths, docs, onnx, collection=f"fusion-{name}", hnsw=HnswParams.from_settings(cfg),
                             progress=False)
        log(f"{name}: {len(docs)} docs indexed in {time.perf_counter() - t:.1f}s (embedded {report.embedded})")
        searcher = open_index(paths, onnx)
        qids_dev, qids_test = sorted(dev.qrels), sorted(test.qrels)
        ranked[name] = {"dev": retrieve(searcher, dev.queries, qids_dev), "paths": paths}
        result["datasets"][name] = {
            "documents": len(docs), "dev_queries": len(qids_dev), "test_queries": len(qids_test),
            "index_embedded_this_run": report.embedded,
        }
        ranked[name]["test"] = (test, qids_test)

    dev_scores = {name: grid_scores(r["dev"], sets[name][0].qrels) for name, r in ranked.items()}
    chosen, margins = choose(dev_scores)
    method, weight = chosen.split(":")
    fusion = Fusion(method=method, dense_weight=float(weight), rrf_k=cfg.rrf_k)  # type: ignore[arg-type]
    default = Fusion.from_settings(cfg)
    log(f"chosen on dev: {chosen} (mean dev margin {margins[chosen]:+.4f}); settings default {default}")

    for name, r in ranked.items():
        test, qids = r["test"]
        per: dict[str, Any] = {}
        for label, emb, fuse in (("onnx", onnx, fusion), ("torch", torch_q, fusion)):
            s = open_index(r["paths"], emb, fusion=fuse)
            runs: dict[str, dict[str, list[str]]] = {"hybrid": {}, "dense": {}, "bm25": {}, "hybrid_rrf_equal": {}}
            classic = open_index(r["paths"], emb, fusion=Fusion(method="rrf", dense_weight=0.5, rrf_k=cfg.rrf_k))
            for q in qids:
                text = test.queries[q]
                runs["hybrid"][q] = [h.id for h in s.search(text, k=DEPTH, mode="hybrid")]
                runs["dense"][q] = [h.id for h in s.search(text, k=DEPTH, mode="dense")]
                runs["bm25"][q] = [h.id for h in s.search(text, k=DEPTH, mode="bm25")]
                runs["hybrid_rrf_equal"][q] = [h.id for h in classic.search(text, k=DEPTH, mode="hybrid")]
            per[label] = {mode: ndcg(run, test.qrels) for mode, run in runs.items()}
        best_part = max(per["onnx"]["dense"], per["onnx"]["bm25"])
        result["datasets"][name].update({
            "dev_ndcg@10": {k: dev_scores[name][k] for k in ("dense", "bm25", "rrf:0.5", chosen)},
            "test_ndcg@10": per,
            "hybrid_minus_best_part": round(per["onnx"]["hybrid"] - best_part, 4),
            "hybrid_ge_best_part": per["onnx"]["hybrid"] >= best_part,
            "onnx_vs_torch_delta": {m: round(per["onnx"][m] - per["torch"][m], 4) for m in ("dense", "hybrid")},
        })
    sf = result["datasets"]["scifact"]["test_ndcg@10"]["onnx"]["hybrid"]
    result.update({
        "chosen_fusion": fusion.model_dump(),
        "query_precision": cfg.query_precision,
        "onnx_model": onnx.onnx_path.name if onnx.onnx_path else None,
        "chosen_on": "largest mean margin over max(dense, bm25) among fusions with no negative margin on any dev split",
        "dev_grid": dev_scores,
        "settings_default": default.model_dump(),
        "settings_default_is_chosen": default == fusion,
        "targets": {
            "hybrid >= best part on each test split": all(d["hybrid_ge_best_part"] for d in result["datasets"].values()),
            f"scifact hybrid >= {SCIFACT_TARGET}": sf >= SCIFACT_TARGET,
            "onnx within 0.005 of torch (dense, hybrid)": all(
                abs(v) <= 0.005 for d in result["datasets"].values() for v in d["onnx_vs_torch_delta"].values()),
        },
        "machine": machine(),
    })
    write_results(args.out_dir, "fusion" + ("_quick" if args.quick else ""), result, markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    f = r["chosen_fusion"]
    lines = [
        f"# Hybrid fusion{' (quick)' if r['quick'] else ''}",
        "",
        f"Chosen on the dev splits: **{f['method']} fusion, dense weight {f['dense_weight']}** "
        f"({r['chosen_on']}); the settings default is {'this fusion' if r['settings_default_is_chosen'] else r['settings_default']}.",
        f"Test-split nDCG@10 through `searcher.search` (query embedding through ONNX Runtime, {r.get('query_precision', 'fp32')} "
        "weights; torch on the same index for parity):",
        "",
    ]
    rows = []
    for name, d in r["datasets"].items():
        t = d["test_ndcg@10"]
        rows.append([name, d["documents"], f"{d['dev_queries']}/{d['test_queries']}", t["onnx"]["dense"], t["onnx"]["bm25"],
                     t["onnx"]["hybrid_rrf_equal"], f"**{t['onnx']['hybrid']}**", f"{d['hybrid_minus_best_part']:+.4f}",
                     f"{t['torch']['dense']} / {t['torch']['hybrid']}"])
    lines.append(md_table(["set", "docs", "dev/test queries", "dense", "bm25", "hybrid (equal RRF)", "hybrid (chosen)",
                           "vs best part", "torch dense / hybrid"], rows))
    lines += ["", targets_line(r["targets"]), ""]
    if r.get("note"):
        lines += [f"Note: {r['note']}", ""]
    lines.append(f"Machine: {r['machine']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(cli(main))

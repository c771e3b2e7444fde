"""Retrieval quality on a BEIR-format dataset: nDCG@10, recall@100, MRR@10 per mode, and index build time.

    python benchmarks/retrieval.py [--dataset DIR] [--modes hybrid dense bm25 jaccard] [--model M] [--quick] [--json]

The corpus goes through the product's own path (index.build.build_index on (id, text, metadata)
documents, index.search.open_index), into a fresh index in a temporary folder, so the build time
is a full build. Results: benchmarks/results/retrieval_<dataset>[_quick].json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.beir import load_beir, resolve_dataset  # noqa: E402
from benchmarks.ir_metrics import evaluate, percentile  # noqa: E402
from benchmarks.report import cli, count  # noqa: E402

ALL_MODES = ("hybrid", "dense", "bm25", "jaccard")
RESULTS = REPO / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", help="BEIR folder (default: ../shared/datasets/scifact)")
    ap.add_argument("--modes", nargs="+", default=list(ALL_MODES), choices=ALL_MODES)
    ap.add_argument("--model", help="sentence-transformers model dir/name (default: settings / packaged MiniLM)")
    ap.add_argument("--quick", action="store_true", help="30 queries over a ~600-document slice (CI smoke)")
    ap.add_argument("--depth", type=count, default=100, help="hits retrieved per query (recall@100 needs 100)")
    ap.add_argument("--batch-size", type=count, default=None)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--json", action="store_true", help="print the results JSON on stdout")
    args = ap.parse_args(argv)

    from distill.config import IndexSettings
    from index.build import build_index
    from index.documents import Document
    from index.embedder import Embedder
    from index.fusion import Fusion
    from index.manifest import IndexPaths
    from index.search import open_index
    from index.store import HnswParams

    folder = resolve_dataset(args.dataset)
    data = load_beir(folder)
    qids = sorted(data.qrels, key=lambda q: (len(q), q))
    corpus_ids = list(data.corpus)
    if args.quick:
        qids = qids[:30]
        keep = {d for q in qids for d in data.qrels[q]}
        corpus_ids = [d for d in corpus_ids if d in keep] + [d for d in corpus_ids if d not in keep][:500]
    docs = [Document(id=d, text=data.corpus[d][1] or data.corpus[d][0], title=data.corpus[d][0] or None) for d in corpus_ids]
    qrels = {q: data.qrels[q] for q in qids}

    cfg = IndexSettings()
    batch = args.batch_size or cfg.batch_size
    t = time.perf_counter()
    embedder = Embedder.from_settings(cfg.model_copy(update={'batch_size': batch}), model=args.model)
    load_s = time.perf_counter() - t
    hnsw = HnswParams.from_settings(cfg)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{data.name}: {len(docs)} docs, {len(qids)} queries, model {embedder.model_id} ({embedder.dimension}d)")

    with tempfile.TemporaryDirectory(prefix="distill-retrieval-") as tmp:
        paths = IndexPaths(Path(tmp))
        t = time.perf_counter()
        report = build_index(paths, docs, embedder, collection="beir-bench", hnsw=hnsw, progress=not args.json)
        build_s = time.perf_counter() - t
        log(f"built in {build_s:.1f}s (embed {report.timings_s['embed']:.1f}s)")
        searcher = open_index(paths, embedder, fusion=Fusion.from_settings(cfg))
        per_mode: dict[str, dict] = {}
        for mode in args.modes:
            runs: dict[str, list[str]] = {}
            lat: list[float] = []
            for q in qids:
                t = time.perf_counter()
                hits = searcher.search(data.queries[q], k=args.depth, mode=mode)  # type: ignore[arg-type]
                lat.append(time.perf_counter() - t)
                runs[q] = [h.id for h in hits]
            metrics = evaluate(runs, qrels, ndcg_k=10, recall_k=100, mrr_k=10)
            per_mode[mode] = {
                **{k: round(v, 4) for k, v in metrics.items()},
                "query_ms_p50": round(percentile(lat, 50) * 1000, 2),
                "query_ms_p95": round(percentile(lat, 95) * 1000, 2),
            }
            log(f"{mode:8s} " + " ".join(f"{k}={v}" for k, v in per_mode[mode].items()))

    result = {
        "suite": "retrieval",
        "dataset": data.name,
        "dataset_path": str(folder),
        "quick": args.quick,
        "documents": len(docs),
        "queries": len(qids),
        "model": embedder.model_id,
        "dimension": embedder.dimension,
        "batch_size": batch,
        "hnsw": hnsw.model_dump(),
        "fusion": Fusion.from_settings(cfg).model_dump(),
        "hybrid_depth": searcher.hybrid_depth,
        "retrieval_depth": args.depth,
        "model_load_s": round(load_s, 2),
        "index_build_s": round(build_s, 2),
        "index_build_timings_s": report.timings_s,
        "modes": per_mode,
        "reference": {"bm25_ndcg@10_beir_paper": 0.665, "hybrid_target_ndcg@10": 0.70} if data.name == "scifact" else {},
        "machine": {"python": platform.python_version(), "cpus": _cpus(), "platform": platform.platform(),
                    "loadavg_1_5_15_at_end": [round(x, 2) for x in __import__("os").getloadavg()]},
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    stem = f"retrieval_{data.name}" + ("_quick" if args.quick else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / f"{stem}.md").write_text(markdown(result))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(result))
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def markdown(r: dict) -> str:
    lines = [
        f"# Retrieval: {r['dataset']}{' (quick)' if r['quick'] else ''}",
        "",
        f"{r['documents']} documents, {r['queries']} judged queries; model `{r['model']}` ({r['dimension']}d), "
        f"HNSW {r['hnsw']}, fusion {r.get('fusion', {'method': 'rrf', 'rrf_k': r.get('rrf_k')})} over the top {r['hybrid_depth']} of dense and BM25.",
        f"Full index build: {r['index_build_s']} s (embedding {r['index_build_timings_s']['embed']} s), "
        f"on {r['machine']['cpus']} CPU cores (shared; load average at the end {r['machine'].get('loadavg_1_5_15_at_end', 'not recorded')}), "
        f"finished {r['finished_at']}.",
        "",
        "| mode | nDCG@10 | recall@100 | MRR@10 | query p50 ms | query p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    for mode, m in r["modes"].items():
        lines.append(
            f"| {mode} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr@10']:.4f} | {m['query_ms_p50']} | {m['query_ms_p95']} |"
        )
    if r.get("note"):
        lines += ["", f"Note: {r['note']}"]
    if r.get("reference"):
        lines += ["", "Reference: BM25 nDCG@10 on SciFact is 0.665 in the BEIR paper; hybrid target 0.70."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(cli(main))

"""Index performance: build throughput vs raw encode, incremental runs, query latency, HNSW recall.

    python benchmarks/index.py [--quick] [--json] [--sizes 10000 100000] [--throughput-docs 1000]

1. Throughput: the same SciFact texts through raw `model.encode` (same batch size, normalised)
   and through a full `build_index` (embedding + Chroma upserts + BM25 + manifest); ratio of the two.
2. Incremental: a no-change run (embeds 0) and a run after changing 1% of the documents (embeds
   exactly that 1%), timed against the full build.
3. Latency p50/p95 per mode (query embedding included, warm searcher) at 10k and 100k documents.
   Those corpora are generated: each document joins two 6-word fragments of SciFact sentences
   (seeded, distinct). Their embeddings are computed once with the same model and cached outside the repo
   (~/.cache/distill-bench, override with $DISTILL_BENCH_CACHE); the index is then built through
   the product's own build_index with an embedder that serves cached vectors by text hash (and
   falls back to the model), and kept there so later runs are incremental no-ops.
4. HNSW recall@10 of Chroma's dense search against exact (brute-force) search on those real
   embeddings, for a range of search ef values; reports the smallest ef reaching 0.98.

Results: benchmarks/results/index[_quick].json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

# This file is named like the `index` package: make sure `import index` finds the package.
_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.beir import load_beir, resolve_dataset  # noqa: E402
from benchmarks.ir_metrics import percentile  # noqa: E402
from benchmarks.report import cli, count  # noqa: E402

if TYPE_CHECKING:
    from index.fusion import Fusion

RESULTS = REPO / "benchmarks" / "results"
MODES = ("hybrid", "dense", "bm25", "jaccard")
EF_GRID = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    d = Path(os.environ.get("DISTILL_BENCH_CACHE", Path.home() / ".cache" / "distill-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------- generated corpus + cached vectors
def sentence_pool(corpus: dict[str, tuple[str, str]]) -> list[str]:
    """Short fragments (5-7 words) of SciFact sentences: real vocabulary, cheap to embed."""
    pool = set()
    for _title, text in corpus.values():
        for s in re.split(r"(?<=[.!?])\s+", text):
            words = s.split()
            for start in range(0, len(words) - 5, 7):
                pool.add(" ".join(words[start : start + 6]))
    return sorted(pool)


def generated_pairs(pool_size: int, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """n distinct (fragment, fragment) index pairs, seeded."""
    rng = np.random.default_rng(seed)
    out: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(out) < n:
        a, b = (int(x) for x in rng.integers(0, pool_size, size=2))
        if a != b and (a, b) not in seen:
            seen.add((a, b))
            out.append((a, b))
    return out


def generated_corpus(embedder, corpus: dict[str, tuple[str, str]], size: int, *, real: int, fragments: int) -> tuple[list[str], np.ndarray, dict]:
    """`size` generated documents (two SciFact fragments each) and their vectors.

    The first `real` documents get their own model embedding (cached). Beyond that, embedding
    every text on this shared 2-core machine takes hours, so a document's vector is the
    normalised sum of the (cached, real) embeddings of its two fragments: the same distribution
    of directions, not the exact embedding of the joined text. Said in the results.
    """
    pool_all = sentence_pool(corpus)
    rng = np.random.default_rng(1)
    pool = [pool_all[i] for i in sorted(rng.choice(len(pool_all), size=min(fragments, len(pool_all)), replace=False))]
    pairs = generated_pairs(len(pool), size)
    texts = [f"{pool[a]} {pool[b]}" for a, b in pairs]
    n_real = min(real, size)
    real_vecs = cached_vectors(embedder, texts[:n_real], "generated-real")
    vecs = np.empty((size, embedder.dimension), dtype=np.float32)
    vecs[:n_real] = real_vecs
    if size > n_real:
        frag = cached_vectors(embedder, pool, "fragments")
        idx = np.array(pairs[n_real:])
        comp = frag[idx[:, 0]] + frag[idx[:, 1]]
        vecs[n_real:] = comp / np.linalg.norm(comp, axis=1, keepdims=True)
    info = {"fragment_pool": len(pool), "real_embeddings": n_real, "composite_embeddings": size - n_real}
    return texts, vecs, info


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached_vectors(embedder, texts: Sequence[str], name: str) -> np.ndarray:
    """Embeddings of `texts`, computed once and stored in the cache folder (keyed by model and texts)."""
    digest = hashlib.sha256(("\n".join(texts) + embedder.model_id).encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}-{embedder.model_id.replace('/', '_')}-{len(texts)}-{digest}.npy"
    if path.exists():
        vecs = np.load(path)
        if vecs.shape == (len(texts), embedder.dimension):
            log(f"cached vectors: {path}")
            return vecs
    log(f"embedding {len(texts)} generated texts once (cached at {path})")
    t = time.perf_counter()
    vecs = embedder.encode_documents(list(texts), progress=True)
    log(f"  {len(texts) / (time.perf_counter() - t):.0f} texts/s")
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vecs)
    os.replace(tmp, path)
    return vecs


class CachedEmbedder:
    """Serves precomputed document vectors by text hash; anything else goes to the real model."""

    def __init__(self, embedder, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.inner = embedder
        self.model_id = embedder.model_id
        self.dimension = embedder.dimension
        self.normalize = embedder.normalize
        self.table = {text_key(t): i for i, t in enumerate(texts)}
        self.vectors = vectors
        self.from_model = 0

    def encode_query(self, text: str) -> np.ndarray:
        return self.inner.encode_query(text)

    def encode_documents(self, texts: Sequence[str], *, progress: bool | None = None) -> np.ndarray:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        missing = []
        for j, t in enumerate(texts):
            i = self.table.get(text_key(t))
            if i is None:
                missing.append(j)
            else:
                out[j] = self.vectors[i]
        if missing:
            out[missing] = self.inner.encode_documents([texts[j] for j in missing], progress=progress)
            self.from_model += len(missing)
        return out


# ---------------------------------------------------------------- sections
def throughput(embedder, docs, *, hnsw, repeats: int) -> dict:
    """Raw encode vs full build on the same texts, same batch size; best of `repeats` each.

    "Raw" is the build's own document encoder alone (`encode_documents`: ONNX Runtime fp32 by
    default); torch's `model.encode` is timed beside it, so the table shows both what the build
    costs over its encoder and what the encoder gains over torch."""
    from index.build import build_index
    from index.manifest import IndexPaths

    texts = [d.embed_text for d in docs]
    embedder.model.encode(texts[:64], batch_size=embedder.batch_size, show_progress_bar=False)  # warm-up
    embedder.encode_documents(texts[:64], progress=False)
    raw_times, build_times, reports, raw_cpu, build_cpu, torch_times, torch_cpu = [], [], [], [], [], [], []
    for r in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        embedder.model.encode(texts, batch_size=embedder.batch_size, normalize_embeddings=True, show_progress_bar=False)
        torch_times.append(time.perf_counter() - t)
        torch_cpu.append(time.process_time() - c)
        c, t = time.process_time(), time.perf_counter()
        embedder.encode_documents(texts, progress=False)
        raw_times.append(time.perf_counter() - t)
        raw_cpu.append(time.process_time() - c)
        log(f"raw encode {len(texts)} texts: torch {torch_times[-1]:.1f}s wall, {torch_cpu[-1]:.1f}s CPU; "
            f"{embedder.document_backend} {raw_times[-1]:.1f}s wall, {raw_cpu[-1]:.1f}s CPU")
        with tempfile.TemporaryDirectory(prefix="distill-bench-build-") as tmp:
            c, t = time.process_time(), time.perf_counter()
            rep = build_index(IndexPaths(Path(tmp)), docs, embedder, collection="bench-throughput", hnsw=hnsw, progress=False)
            build_times.append(time.perf_counter() - t)
            build_cpu.append(time.process_time() - c)
            reports.append(rep)
        log(f"full build {len(docs)} docs: {build_times[-1]:.1f}s wall, {build_cpu[-1]:.1f}s CPU (embed {rep.timings_s['embed']:.1f}s)")
    raw, build, raw_torch = min(raw_times), min(build_times), min(torch_times)
    rc, bc, tc = min(raw_cpu), min(build_cpu), min(torch_cpu)
    return {
        "document_backend": embedder.document_backend,
        "raw_encode_cpu_s": round(rc, 2),
        "full_build_cpu_s": round(bc, 2),
        "build_vs_raw_throughput_cpu": round(rc / bc, 3),
        "torch_encode_s": round(raw_torch, 2),
        "torch_encode_cpu_s": round(tc, 2),
        "build_vs_torch_throughput_cpu": round(tc / bc, 3),
        "build_vs_torch_throughput": round(raw_torch / build, 3),
        "documents": len(docs),
        "batch_size": embedder.batch_size,
        "repeats": repeats,
        "raw_encode_s": round(raw, 2),
        "full_build_s": round(build, 2),
        "raw_docs_per_s": round(len(docs) / raw, 1),
        "build_docs_per_s": round(len(docs) / build, 1),
        "build_vs_raw_throughput": round(raw / build, 3),
        "build_breakdown_s": reports[build_times.index(build)].timings_s,
        "all_raw_s": [round(x, 2) for x in raw_times],
        "all_build_s": [round(x, 2) for x in build_times],
        "all_torch_s": [round(x, 2) for x in torch_times],
    }


def incremental(embedder, docs, *, hnsw) -> dict:
    """Full build, then a no-change run, then a run after editing 1% of the documents."""
    from dataclasses import replace

    from index.build import build_index
    from index.manifest import IndexPaths

    with tempfile.TemporaryDirectory(prefix="distill-bench-inc-") as tmp:
        paths = IndexPaths(Path(tmp))
        t = time.perf_counter()
        full = build_index(paths, docs, embedder, collection="bench-incremental", hnsw=hnsw, progress=False)
        full_s = time.perf_counter() - t
        t = time.perf_counter()
        same = build_index(paths, docs, embedder, collection="bench-incremental", hnsw=hnsw, progress=False)
        same_s = time.perf_counter() - t
        n_change = max(1, round(len(docs) * 0.01))
        step = len(docs) // n_change
        changed_idx = set(range(0, step * n_change, step))
        edited = [replace(d, text=d.text + " (revised)") if i in changed_idx else d for i, d in enumerate(docs)]
        t = time.perf_counter()
        one = build_index(paths, edited, embedder, collection="bench-incremental", hnsw=hnsw, progress=False)
        one_s = time.perf_counter() - t
    return {
        "documents": len(docs),
        "full_build_s": round(full_s, 2),
        "full_embedded": full.embedded,
        "no_change": {"embedded": same.embedded, "unchanged": same.unchanged, "seconds": round(same_s, 3),
                      "fraction_of_full": round(same_s / full_s, 4)},
        "one_percent": {"changed": n_change, "embedded": one.embedded, "updated": one.updated,
                        "unchanged": one.unchanged, "seconds": round(one_s, 2),
                        "fraction_of_full": round(one_s / full_s, 4), "embeds_exactly_the_change": one.embedded == n_change},
    }


def latency_and_recall(embedder, texts: Sequence[str], vectors: np.ndarray, size: int, queries: Sequence[str], *,
                       hnsw, fusion: Fusion, n_queries: int, recall: bool, k: int = 8,
                       torch_queries: Any = None) -> dict:
    """`torch_queries`: an embedder on the torch query path, timed beside the default one."""
    from index.build import build_index
    from index.documents import Document
    from index.manifest import IndexPaths
    from index.search import open_index

    all_texts = list(texts[:size])
    vecs = vectors[:size]
    docs = [Document(id=f"g{i}", text=t, category=("accepted", "partially_accepted", "needs_human_review")[i % 3])
            for i, t in enumerate(all_texts)]
    cached = CachedEmbedder(embedder, all_texts, vecs)
    paths = IndexPaths(cache_dir() / f"index-generated{size}-{embedder.model_id.replace('/', '_')}")
    t = time.perf_counter()
    rep = build_index(paths, docs, cached, collection="bench-latency", hnsw=hnsw, progress=True)
    build_s = time.perf_counter() - t
    log(f"{size} docs index ready in {build_s:.1f}s (embedded {rep.embedded}, from model {cached.from_model}, unchanged {rep.unchanged})")
    t = time.perf_counter()
    searcher = open_index(paths, embedder, fusion=fusion)
    open_s = time.perf_counter() - t
    qs = list(queries)[:n_queries]
    out: dict = {"documents": size, "index_ready_s": round(build_s, 2), "searcher_open_s": round(open_s, 2),
                 "queries": len(qs), "k": k, "modes": {}}
    for mode in MODES:
        for q in qs[:5]:
            searcher.search(q, k=k, mode=mode)  # warm (jaccard builds its token sets on first use)
        lat, cpu = [], []
        for q in qs:
            c = time.process_time()
            t = time.perf_counter()
            searcher.search(q, k=k, mode=mode)  # type: ignore[arg-type]
            lat.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out["modes"][mode] = {"p50_ms": round(percentile(lat, 50) * 1000, 2), "p95_ms": round(percentile(lat, 95) * 1000, 2),
                              "mean_ms": round(float(np.mean(lat)) * 1000, 2),
                              "cpu_p50_ms": round(percentile(cpu, 50) * 1000, 2), "cpu_p95_ms": round(percentile(cpu, 95) * 1000, 2)}
        log(f"  {size} {mode:8s} p50={out['modes'][mode]['p50_ms']}ms p95={out['modes'][mode]['p95_ms']}ms "
            f"cpu p50={out['modes'][mode]['cpu_p50_ms']}ms p95={out['modes'][mode]['cpu_p95_ms']}ms")
    # where hybrid's time goes: query embedding alone, and the lookups given the vector
    parts: dict[str, tuple[list[float], list[float]]] = {"query_embedding": ([], []), "chroma_ann_depth": ([], []), "bm25_depth": ([], [])}
    if torch_queries is not None:
        parts["query_embedding_torch"] = ([], [])
        torch_queries.encode_query(qs[0])  # warm
    depth = max(searcher.hybrid_depth, 2 * k)
    for q in qs:
        v = None
        for name in parts:
            c, t = time.process_time(), time.perf_counter()
            if name == "query_embedding":
                v = embedder.encode_query(q)
            elif name == "query_embedding_torch":
                torch_queries.encode_query(q)
            elif name == "chroma_ann_depth":
                searcher.store.query(v, depth)
            else:
                searcher.bm25.top(q, depth)
            parts[name][0].append(time.perf_counter() - t)
            parts[name][1].append(time.process_time() - c)
    out["hybrid_parts_ms"] = {
        name: {"p50": round(percentile(w, 50) * 1000, 2), "p95": round(percentile(w, 95) * 1000, 2),
               "cpu_p50": round(percentile(c, 50) * 1000, 2), "cpu_p95": round(percentile(c, 95) * 1000, 2)}
        for name, (w, c) in parts.items()
    }
    if recall:
        out["hnsw_recall"] = hnsw_recall(searcher, vecs, [f"g{i}" for i in range(size)], embedder.encode_queries(qs), hnsw)
    return out


_RECALL_PROBE = r"""
import json, sys, time
import numpy as np
import chromadb
from chromadb.config import Settings
path, name, ef, qfile, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
col = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False)).get_collection(name, embedding_function=None)
col.modify(configuration={"hnsw": {"ef_search": ef}})
q = np.load(qfile)
col.query(query_embeddings=q[:1], n_results=k, include=[])  # load the index
ids, lat = [], []
for v in q:
    t = time.perf_counter()
    r = col.query(query_embeddings=v[None, :], n_results=k, include=[])
    lat.append(time.perf_counter() - t)
    ids.append(r["ids"][0])
print(json.dumps({"ef": col.configuration["hnsw"]["ef_search"], "ids": ids, "lat": lat}))
"""


def hnsw_recall(searcher, vecs: np.ndarray, ids: list[str], qvecs: np.ndarray, hnsw, k: int = 10) -> dict:
    """Recall@k of Chroma's HNSW vs exact cosine search, over the ef grid.

    Chroma 1.5 applies a modified search ef only when a process loads the index, so each ef is
    measured in a fresh process (the probe above); the configured ef is restored afterwards.
    """
    import subprocess

    exact = np.argsort(-(qvecs @ vecs.T), axis=1)[:, :k]
    truth = [{ids[j] for j in row} for row in exact]
    paths = searcher.paths
    name = searcher.manifest.chroma_collection
    curve = {}
    with tempfile.TemporaryDirectory(prefix="distill-bench-recall-") as tmp:
        qfile = Path(tmp) / "q.npy"
        np.save(qfile, qvecs.astype(np.float32))
        for ef in (*EF_GRID, hnsw.search_ef):
            if ef in curve and ef != hnsw.search_ef:
                continue
            proc = subprocess.run(
                [sys.executable, "-c", _RECALL_PROBE, str(paths.chroma), name, str(ef), str(qfile), str(k)],
                capture_output=True, text=True, check=True,
            )
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            if ef == hnsw.search_ef and ef in curve:
                break  # the last call only restored the configured ef
            got = out["ids"]
            hits = sum(len(want & set(g)) for want, g in zip(truth, got, strict=True))
            curve[ef] = {"recall@10": round(hits / (k * len(truth)), 4), "ann_p50_ms": round(percentile(out["lat"], 50) * 1000, 3),
                         "applied_ef": out["ef"]}
            log(f"  ef={ef}: recall@10={curve[ef]['recall@10']} ann p50 {curve[ef]['ann_p50_ms']}ms")
    enough = [ef for ef in EF_GRID if curve[ef]["recall@10"] >= 0.98]
    return {
        "queries": len(truth),
        "k": k,
        "M": hnsw.m,
        "construction_ef": hnsw.construction_ef,
        "curve": {str(ef): curve[ef] for ef in EF_GRID},
        "min_ef_for_0.98": enough[0] if enough else None,
        "configured_search_ef": hnsw.search_ef,
        "recall_at_configured_ef": curve.get(hnsw.search_ef, {}).get("recall@10"),
        "method": "each ef measured in a fresh process (Chroma applies a modified ef_search when it loads the index)",
    }


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", help="BEIR folder whose corpus feeds the texts (default SciFact)")
    ap.add_argument("--quick", action="store_true", help="small sizes for CI smoke")
    ap.add_argument("--sizes", nargs="+", type=count, default=None, help="latency corpus sizes (default 10000 100000)")
    ap.add_argument("--throughput-docs", type=count, default=None, help="SciFact docs for throughput/incremental (default 1000)")
    ap.add_argument("--repeats", type=count, default=1)
    ap.add_argument("--queries", type=count, default=100, help="latency queries per mode")
    ap.add_argument("--fragments", type=count, default=4000, help="fragment pool whose embeddings compose vectors beyond the first size")
    ap.add_argument("--model", default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "incremental", "latency"])
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--merge", action="store_true", help="keep sections of an earlier results file that this run skips")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from distill.config import IndexSettings
    from index.documents import Document
    from index.embedder import Embedder
    from index.fusion import Fusion
    from index.store import HnswParams

    cfg = IndexSettings()
    hnsw = HnswParams.from_settings(cfg)
    embedder = Embedder.from_settings(cfg, model=args.model)
    data = load_beir(resolve_dataset(args.dataset))
    n_docs = args.throughput_docs or (200 if args.quick else 1000)
    ids = list(data.corpus)[:n_docs]
    docs = [Document(id=d, text=data.corpus[d][1] or data.corpus[d][0], title=data.corpus[d][0] or None) for d in ids]
    sizes = args.sizes or ([2000] if args.quick else [10000, 100000])
    queries = [data.queries[q] for q in sorted(data.qrels, key=lambda q: (len(q), q))]

    stem = "index" + ("_quick" if args.quick else "")
    earlier = args.out_dir / f"{stem}.json"
    result: dict = {}
    result.update({
        "suite": "index",
        "quick": args.quick,
        "model": embedder.model_id,
        "dimension": embedder.dimension,
        "hnsw": hnsw.model_dump(),
        "fusion": Fusion.from_settings(cfg).model_dump(),
        "machine": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "torch_threads": _torch_threads()},
        "generated_corpus": "each document joins two 6-word fragments of SciFact sentences (seeded, distinct pairs from a pool); "
                            "the first (smallest size) documents carry their own MiniLM embedding, the rest the normalised sum of "
                            "their two fragments' MiniLM embeddings (embedding 100k texts takes hours on this shared machine); "
                            f"vectors cached in {cache_dir()}; the index is built with build_index and kept there",
    })
    if "throughput" not in args.skip:
        log("== throughput")
        result["throughput"] = throughput(embedder, docs, hnsw=hnsw, repeats=args.repeats)
    if "incremental" not in args.skip:
        log("== incremental")
        result["incremental"] = incremental(embedder, docs, hnsw=hnsw)
    if "latency" not in args.skip:
        texts, vectors, gen_info = generated_corpus(embedder, data.corpus, max(sizes), real=min(sizes), fragments=args.fragments)
        result["generated_corpus_sizes"] = gen_info
        result["latency"] = {}
        torch_queries = (Embedder.from_settings(cfg.model_copy(update={"query_backend": "torch"}), model=args.model)
                         if embedder.query_backend != "torch" else None)
        for i, size in enumerate(sizes):
            log(f"== latency at {size}")
            result["latency"][str(size)] = latency_and_recall(
                embedder, texts, vectors, size, queries, hnsw=hnsw, fusion=Fusion.from_settings(cfg), n_queries=args.queries,
                recall=True, torch_queries=torch_queries,
            )
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["machine"]["loadavg_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["loadavg_by_section"] = {s: result["machine"]["loadavg_1_5_15_at_end"] for s in ("throughput", "incremental", "latency")
                                    if s not in args.skip}
    if args.merge and earlier.exists():  # read at the end: another run may have written it meanwhile
        base = json.loads(earlier.read_text())
        loads_before = base.get("loadavg_by_section", {})
        base.update(result)
        base["loadavg_by_section"] = {**loads_before, **result["loadavg_by_section"]}
        result = base
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / f"{stem}.md").write_text(markdown(result))
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return 0


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def markdown(r: dict) -> str:
    out = [f"# Index benchmark{' (quick)' if r['quick'] else ''}", "",
           f"Model `{r['model']}` ({r['dimension']}d), HNSW {r['hnsw']}, {r['machine']['cpus']} CPU cores "
           f"(torch threads {r['machine']['torch_threads']}), finished {r.get('finished_at')}; "
           f"load average at the end {r['machine'].get('loadavg_1_5_15_at_end')} (the machine is shared).", ""]
    if "throughput" in r:
        t = r["throughput"]
        out += ["## Build throughput vs raw encode", "",
                f"{t['documents']} SciFact documents, batch size {t['batch_size']}, best of {t['repeats']}.", "",
                "| | seconds | CPU s | docs/s |", "|---|---|---|---|",
                *([f"| raw torch `model.encode` | {t['torch_encode_s']} | {t['torch_encode_cpu_s']} | "
                   f"{round(t['documents'] / t['torch_encode_s'], 1)} |"] if "torch_encode_s" in t else []),
                f"| raw encode, the build's encoder ({t.get('document_backend', 'torch')}) | {t['raw_encode_s']} | "
                f"{t.get('raw_encode_cpu_s')} | {t['raw_docs_per_s']} |",
                f"| full `build_index` | {t['full_build_s']} | {t.get('full_build_cpu_s')} | {t['build_docs_per_s']} |", "",
                f"Build throughput = **{t['build_vs_raw_throughput'] * 100:.1f}%** of its raw encode by wall clock, "
                f"**{t.get('build_vs_raw_throughput_cpu', float('nan')) * 100:.1f}%** by process CPU time (the CPU figure "
                f"is the one that does not move with the machine's load)"
                + (f"; **{t['build_vs_torch_throughput_cpu'] * 100:.1f}%** of raw torch encode by CPU time "
                   f"({t['build_vs_torch_throughput'] * 100:.1f}% by wall clock)" if "build_vs_torch_throughput_cpu" in t else "")
                + f". Build breakdown s: {t['build_breakdown_s']}.", ""]
    if "incremental" in r:
        i = r["incremental"]
        out += ["## Incremental", "",
                f"Full build of {i['documents']} docs: {i['full_build_s']} s, embedded {i['full_embedded']}.", "",
                "| run | embedded | seconds | fraction of full build |", "|---|---|---|---|",
                f"| no change | {i['no_change']['embedded']} | {i['no_change']['seconds']} | {i['no_change']['fraction_of_full']} |",
                f"| 1% changed ({i['one_percent']['changed']} docs) | {i['one_percent']['embedded']} | "
                f"{i['one_percent']['seconds']} | {i['one_percent']['fraction_of_full']} |", ""]
    if "latency" in r:
        out += ["## Query latency (warm searcher, query embedding included, k=8)", "", r["generated_corpus"] + ".", "",
                "Wall-clock figures include waiting for a CPU on a shared, loaded machine (nice 10); the CPU columns are "
                "the process CPU time per query (all threads; one intra-op thread per query embedding), which does not depend on the load. "
                "Queries embed through the default query path (`[index] query_backend`, ONNX Runtime); `query_embedding_torch` "
                "below is the torch path timed beside it on the same queries.", "",
                "| docs | mode | wall p50 ms | wall p95 ms | CPU p50 ms | CPU p95 ms |", "|---|---|---|---|---|---|"]
        for size, lat in r["latency"].items():
            for mode, m in lat["modes"].items():
                out.append(f"| {size} | {mode} | {m['p50_ms']} | {m['p95_ms']} | {m.get('cpu_p50_ms')} | {m.get('cpu_p95_ms')} |")
        out.append("")
        for size, lat in r["latency"].items():
            parts = lat["hybrid_parts_ms"]
            out.append(f"Hybrid parts at {size} (wall p50/p95 ms; CPU p50/p95 ms): " + "; ".join(
                f"{name} {v['p50']}/{v['p95']}; {v.get('cpu_p50')}/{v.get('cpu_p95')}" for name, v in parts.items()) + ".")
        out.append("")
        for size, lat in r["latency"].items():
            rec = lat.get("hnsw_recall")
            if not rec:
                continue
            out += [f"## HNSW recall@10 vs exact search ({size} docs, {rec['queries']} queries, M={rec['M']}, "
                    f"construction ef={rec['construction_ef']})", "", "| search ef | recall@10 | ANN p50 ms |", "|---|---|---|"]
            out += [f"| {ef} | {v['recall@10']} | {v['ann_p50_ms']} |" for ef, v in rec["curve"].items()]
            out += ["", f"Smallest ef with recall@10 >= 0.98: **{rec['min_ef_for_0.98']}**; configured search ef "
                        f"{rec['configured_search_ef']} gives {rec['recall_at_configured_ef']}.", ""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(cli(main))

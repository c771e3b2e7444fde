"""Query embedding through ONNX Runtime: torch's vectors (fp32) or its rankings (int8), no torch on the search path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index.onnx_encoder import onnx_layout
from tests.fixtures_index import rag_row
from tests.shared_datasets import shared_dataset

REPO = Path(__file__).resolve().parents[1]
SCIFACT = shared_dataset("scifact")

TEXTS = [
    "how does the retry policy handle a flaky network test?",
    "",
    "Ünïcödé — 東京 naïve café, emoji 🚀 and tabs\tinside",
    "x",
    " ".join(["long input that must be truncated at the model's max_seq_length"] * 80),
    "SELECT * FROM orders WHERE created_at > now() - interval '1 day';",
]


@pytest.fixture(scope="module")
def torch_embedder():
    from index.embedder import Embedder

    return Embedder(None, batch_size=32, query_backend="torch", document_backend="torch")


@pytest.fixture(scope="module")
def fp32_embedder():
    from index.embedder import Embedder

    return Embedder(None, batch_size=32, query_precision="fp32")


def test_the_default_embedder_answers_queries_through_int8_onnx(embedder) -> None:  # noqa: F811
    assert embedder.query_backend == "onnx", embedder.query_backend_note
    assert embedder.dimension == 384
    assert embedder.onnx_path is not None and "-int8-" in embedder.onnx_path.name


def test_fp32_onnx_query_vectors_equal_the_torch_ones(fp32_embedder, torch_embedder) -> None:
    assert fp32_embedder.onnx_path is not None and "-fp32-" in fp32_embedder.onnx_path.name
    for text in TEXTS:
        fast, ref = fp32_embedder.encode_query(text), torch_embedder.encode_query(text)
        assert fast.dtype == np.float32 and fast.shape == ref.shape == (384,)
        assert abs(float(np.linalg.norm(fast)) - 1.0) < 1e-5
        assert float(fast @ ref) > 0.99999, text[:40]
    batch = fp32_embedder.encode_queries(TEXTS)
    assert batch.shape == (len(TEXTS), 384)
    assert np.allclose(batch, np.stack([torch_embedder.encode_query(t) for t in TEXTS]), atol=2e-5)


@pytest.mark.slow
def test_document_vectors_through_onnx_equal_the_torch_ones(embedder, torch_embedder) -> None:  # noqa: F811
    """Documents go through fp32 ONNX Runtime (index builds); int8 is for queries only."""
    corpus, _, _ = _beir_slice(5, 40)
    texts = TEXTS + list(corpus.values())
    fast, ref = embedder.encode_documents(texts), torch_embedder.encode_documents(texts)
    assert embedder.document_backend == "onnx", embedder.document_backend_note
    assert torch_embedder.document_backend == "torch"
    assert fast.dtype == np.float32 and fast.shape == ref.shape == (len(texts), 384)
    cos = (fast * ref).sum(axis=1)
    assert float(cos.min()) > 0.99999, [t[:30] for t, c in zip(texts, cos, strict=True) if c <= 0.99999]


def test_int8_query_vectors_stay_close_to_torch_and_do_not_depend_on_their_batch(embedder, torch_embedder) -> None:  # noqa: F811
    """Quantised weights move a vector a little (cosine ~0.99; rankings are checked below); the
    activation scale is per call, so each text is encoded alone and a batch equals its singles."""
    singles = np.stack([embedder.encode_query(t) for t in TEXTS])
    for text, fast in zip(TEXTS, singles, strict=True):
        ref = torch_embedder.encode_query(text)
        assert fast.dtype == np.float32 and fast.shape == (384,)
        assert abs(float(np.linalg.norm(fast)) - 1.0) < 1e-5
        assert float(fast @ ref) > 0.97, text[:40]
    assert np.array_equal(embedder.encode_queries(TEXTS), singles)
    assert np.array_equal(embedder.encode_queries(list(reversed(TEXTS))), singles[::-1])


def _beir_slice(n_queries: int, n_docs: int) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    from benchmarks.beir import load_beir

    data = load_beir(SCIFACT)
    qids = sorted(data.qrels, key=lambda q: (len(q), q))[:n_queries]
    keep = {d for q in qids for d in data.qrels[q]}
    ids = [d for d in data.corpus if d in keep] + [d for d in data.corpus if d not in keep][: n_docs - len(keep)]
    corpus = {d: (data.corpus[d][0] + ". " + data.corpus[d][1])[:600] for d in ids}
    return corpus, {q: data.queries[q] for q in qids}, {q: data.qrels[q] for q in qids}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_dense_rankings_match_torch_on_a_scifact_slice(
    precision, embedder, fp32_embedder, torch_embedder  # noqa: F811
) -> None:
    """nDCG@10 of the ONNX query path within 0.005 of torch's over the same document vectors."""
    from benchmarks.ir_metrics import evaluate

    corpus, queries, qrels = _beir_slice(40, 240)
    ids = list(corpus)
    doc_vecs = torch_embedder.encode_documents([corpus[d] for d in ids])
    runs: dict[str, dict[str, list[str]]] = {"onnx": {}, "torch": {}}
    fast_embedder = embedder if precision == "int8" else fp32_embedder
    for name, emb in (("onnx", fast_embedder), ("torch", torch_embedder)):
        for q, text in queries.items():
            order = np.argsort(-(doc_vecs @ emb.encode_query(text)), kind="stable")[:10]
            runs[name][q] = [ids[i] for i in order]
    same = sum(runs["onnx"][q] == runs["torch"][q] for q in queries)
    fast = evaluate(runs["onnx"], qrels, ndcg_k=10, recall_k=10, mrr_k=10)["ndcg@10"]
    ref = evaluate(runs["torch"], qrels, ndcg_k=10, recall_k=10, mrr_k=10)["ndcg@10"]
    assert abs(fast - ref) <= 0.005, (fast, ref)
    if precision == "fp32":
        assert same >= len(queries) - 1, f"only {same}/{len(queries)} top-10 lists identical"
    else:  # near-ties deeper in the list may swap; the head and the membership hold
        top1 = sum(runs["onnx"][q][0] == runs["torch"][q][0] for q in queries)
        overlap = np.mean([len(set(runs["onnx"][q]) & set(runs["torch"][q])) for q in queries])
        assert top1 >= len(queries) - 2 and overlap >= 8.5, (top1, overlap)


def test_index_build_and_search_do_not_import_torch(tmp_path: Path, embedder) -> None:  # noqa: F811
    rows = [(rag_row(i)["text"], rag_row(i)["title"]) for i in range(12)]
    embedder.encode_documents(["the fp32 export exists before the child process starts"])
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from distill.config import IndexSettings\n"
        "from index.build import build_index\n"
        "from index.documents import Document\n"
        "from index.embedder import Embedder\n"
        "from index.manifest import IndexPaths\n"
        "from index.search import open_index\n"
        "from index.store import HnswParams\n"
        f"docs = [Document(id=f'd{{i}}', text=t, title=h) for i, (t, h) in enumerate({rows!r})]\n"
        f"paths = IndexPaths(Path({str(tmp_path / 'index')!r}))\n"
        "e = Embedder.from_settings(IndexSettings())\n"
        "build_index(paths, docs, e, collection='onnx-check', hnsw=HnswParams.from_settings(IndexSettings()), progress=False)\n"
        "s = open_index(paths, e)\n"
        "hits = s.search('flaky migration test fixture', k=3, mode='hybrid')\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'st': 'sentence_transformers' in sys.modules,"
        " 'top': hits[0].id}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"torch": False, "st": False, "top": "d0"}


def _st_folder(root: Path, modules: list[dict], pooling: dict) -> Path:
    root.mkdir(parents=True)
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (root / "tokenizer.json").write_text("{}")
    (root / "model.safetensors").write_bytes(b"")
    return root


TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
DENSE = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}


@pytest.mark.parametrize(
    ("modules", "pooling", "why"),
    [
        ([TRANSFORMER, POOLING, DENSE], {"pooling_mode_mean_tokens": True}, "not Transformer + Pooling"),
        ([TRANSFORMER, POOLING], {"pooling_mode_max_tokens": True}, "not plain mean or CLS"),
        ([TRANSFORMER, POOLING], {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, "not plain mean"),
    ],
)
def test_models_the_onnx_path_cannot_reproduce_fall_back_to_torch(tmp_path: Path, modules, pooling, why) -> None:
    layout, reason = onnx_layout(_st_folder(tmp_path / "m", modules, pooling))
    assert layout is None and why in reason


def test_a_supported_layout_is_read_from_the_folder(tmp_path: Path) -> None:
    folder = _st_folder(tmp_path / "m", [TRANSFORMER, POOLING], {"pooling_mode_cls_token": True,
                                                                  "word_embedding_dimension": 8})
    layout, reason = onnx_layout(folder)
    assert reason == "" and layout is not None
    assert (layout.pooling, layout.normalize, layout.dimension, layout.max_seq_length) == ("cls", False, 8, 512)
    assert (layout.query_prompt, layout.document_prompt) == ("", "")
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "q: ", "corpus": "c: ",
                                                                                      "passage": "p: "}}))
    layout, _ = onnx_layout(folder)
    assert layout is not None and (layout.query_prompt, layout.document_prompt) == ("q: ", "p: ")  # sentence-transformers' order
    assert onnx_layout(tmp_path / "missing")[0] is None


def test_exports_no_key_can_name_again_are_removed(tmp_path: Path) -> None:
    """Each reinstall (new weights mtime) or deleted virtualenv left a ~110 MB export in the model
    cache that no key would ever name again (six pairs, 680 MB, on the development machine)."""
    from filelock import FileLock

    from distill.jsonl import dumps
    from index.onnx_encoder import SOURCE_SUFFIX, _export_key, prune_stale_exports

    cache = tmp_path / "onnx"
    cache.mkdir()
    weights = {name: tmp_path / name / "model.safetensors" for name in ("live", "reinstalled", "deleted", "busy")}
    for w in weights.values():
        w.parent.mkdir()
        w.write_bytes(b"weights")

    def export(name: str, *, source: bool = True) -> Path:
        path = cache / f"{name}-int8-{_export_key(weights[name], 'int8')}.onnx"
        path.write_bytes(b"onnx")
        if source:
            Path(str(path) + SOURCE_SUFFIX).write_bytes(dumps({"weights": str(weights[name].resolve()), "precision": "int8"}))
        return path

    live, reinstalled, deleted, busy = (export(n) for n in ("live", "reinstalled", "deleted", "busy"))
    legacy = cache / "legacy-int8-0123456789abcdef.onnx"
    legacy.write_bytes(b"onnx")  # made before source files existed: nothing says what it came from
    garbled = cache / "garbled-int8-fedcba9876543210.onnx"
    garbled.write_bytes(b"onnx")
    Path(str(garbled) + SOURCE_SUFFIX).write_bytes(b"{not json")
    import os

    st = weights["reinstalled"].stat()
    os.utime(weights["reinstalled"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a reinstall rewrote it
    weights["deleted"].unlink()
    weights["busy"].unlink()
    with FileLock(str(busy) + ".lock"):  # another process is exporting or replacing it
        removed = prune_stale_exports(cache)
    assert sorted(removed) == sorted([reinstalled, deleted])
    assert not reinstalled.exists() and not Path(str(reinstalled) + SOURCE_SUFFIX).exists()
    assert not deleted.exists() and not Path(str(deleted) + ".lock").exists()
    assert live.exists() and busy.exists() and legacy.exists() and garbled.exists()
    assert prune_stale_exports(cache) == [busy]  # once free, it goes too


def test_scratch_files_of_a_killed_export_are_removed(tmp_path: Path) -> None:
    """A SIGKILL during the first use's export (tens of seconds of torch) left its scratch files,
    up to ~200 MB, in the model cache for good: the cleanup is a `finally` no SIGKILL runs. Now the
    next export's pruning removes them, unless that export's lock is held (it is running)."""
    from filelock import FileLock

    from index.onnx_encoder import prune_stale_exports

    cache = tmp_path / "onnx"
    cache.mkdir()
    export = "model-int8-0123456789abcdef.onnx"
    killed = [cache / f"{export}.4242.tmp", cache / f"{export}.4242.fused.tmp", cache / f"{export}.4242.final.tmp"]
    running = cache / "other-fp32-fedcba9876543210.onnx.77.tmp"
    unrelated = [cache / "notes.tmp", cache / f"{export}.tmp", cache / f"{export}.x1.tmp"]
    for path in (*killed, running, *unrelated):
        path.write_bytes(b"scratch")
    with FileLock(str(cache / "other-fp32-fedcba9876543210.onnx") + ".lock"):
        assert prune_stale_exports(cache) == []
    assert not [p for p in killed if p.exists()]
    assert running.exists() and all(p.exists() for p in unrelated)
    prune_stale_exports(cache)
    assert not running.exists()

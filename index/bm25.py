"""BM25 (bm25s, English stopwords + Snowball stemming), persisted beside the Chroma data.

bm25s indexes are immutable, so a change to the document set rebuilds the index from the
documents (cheap next to embedding). The saved folder also holds the document table (id, text,
title, category, metadata) that search uses to turn BM25/Jaccard positions into hits; it is
written to a temporary folder and swapped in, so a reader sees the old index or the new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import DistillError
from distill.jsonl import atomic_temp_path, dumps, iter_json, loads, write_atomic, write_errors_named, write_jsonl_atomic
from index.documents import Document

BM25_FORMAT = 1
TOKENIZER = {"stopwords": "en", "stemmer": "english", "pattern": r"(?u)\b\w\w+\b", "method": "lucene", "k1": 1.5, "b": 0.75}


def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer(TOKENIZER["stemmer"])


def tokenize(texts: Sequence[str], stemmer: Any) -> list[list[str]]:
    import bm25s

    tokens = bm25s.tokenize(
        list(texts),
        lower=True,
        token_pattern=TOKENIZER["pattern"],
        stopwords=TOKENIZER["stopwords"],
        stemmer=stemmer,
        return_ids=False,
        show_progress=False,
    )
    return [list(t) for t in tokens]  # type: ignore[union-attr]


@dataclass
class Bm25Index:
    """A loaded BM25 retriever plus the document table aligned with its positions."""

    retriever: Any
    docs: list[Document]
    stemmer: Any
    _categories: np.ndarray | None = field(default=None, repr=False)

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.docs]

    def categories(self) -> np.ndarray:
        if self._categories is None:
            self._categories = np.array([d.category or "" for d in self.docs], dtype=object)
        return self._categories

    def mask(self, categories: Sequence[str] | None) -> np.ndarray | None:
        if not categories:
            return None
        return np.isin(self.categories(), list(categories))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for `query` (zeros when no query term is indexed)."""
        n = len(self.docs)
        if self.retriever is None or n == 0:
            return np.zeros(n, dtype=np.float32)
        q = tokenize([query], self.stemmer)[0]
        ids = self.retriever.get_tokens_ids(q)
        if not ids:
            return np.zeros(n, dtype=np.float32)
        return np.asarray(self.retriever.get_scores_from_ids(ids), dtype=np.float32)

    def top(self, query: str, k: int, *, categories: Sequence[str] | None = None) -> list[tuple[int, float]]:
        """(position, score) of the best k documents with a positive score, best first."""
        scores = self.scores(query)
        mask = self.mask(categories)
        if mask is not None:
            scores = np.where(mask, scores, 0.0)
        return top_positive(scores, k)


def top_positive(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Indices of the k largest positive scores, ties broken by position (deterministic)."""
    if k <= 0 or scores.size == 0:
        return []
    positive = np.flatnonzero(scores > 0)
    if positive.size == 0:
        return []
    if positive.size > k:
        part = np.argpartition(-scores[positive], k - 1)[:k]
        positive = positive[part]
    order = np.lexsort((positive, -scores[positive]))
    chosen = positive[order]
    return [(int(i), float(scores[i])) for i in chosen]


def build(docs: Sequence[Document]) -> Bm25Index:
    """Tokenise and index `docs` in memory."""
    import bm25s

    stemmer = _stemmer()
    retriever = None
    if docs:
        retriever = bm25s.BM25(method=TOKENIZER["method"], k1=TOKENIZER["k1"], b=TOKENIZER["b"])
        retriever.index(tokenize([d.embed_text for d in docs], stemmer), show_progress=False)
    return Bm25Index(retriever=retriever, docs=list(docs), stemmer=stemmer)


def save(index: Bm25Index, directory: Path, *, fingerprint: str) -> None:
    """Write the index and its document table to a temp folder, then swap it in."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    # named as an atomic write's temp: the next lock holder removes one a killed build left
    tmp = atomic_temp_path(directory)
    tmp.mkdir()
    try:
        if index.retriever is not None:
            with write_errors_named(tmp / "bm25s"):  # bm25s/numpy's own writes name no file
                index.retriever.save(str(tmp / "bm25s"), show_progress=False)
        write_jsonl_atomic(tmp / "docs.jsonl", (d.to_row() for d in index.docs))
        info = {"format": BM25_FORMAT, "tokenizer": TOKENIZER, "count": len(index.docs), "fingerprint": fingerprint}
        write_atomic(tmp / "info.json", dumps(info))
        _swap_in(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = atomic_temp_path(target)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_info(directory: Path) -> dict[str, Any] | None:
    path = directory / "info.json"
    if not path.exists():
        return None
    with contextlib.suppress(ValueError, OSError):
        info = loads(path.read_bytes())
        return info if isinstance(info, dict) else None
    return None


def load(directory: Path) -> Bm25Index:
    """Load a saved index; a missing or foreign folder is an error naming the rebuild."""
    info = read_info(directory)
    if info is None or info.get("format") != BM25_FORMAT or info.get("tokenizer") != TOKENIZER:
        raise DistillError(f"BM25 index at {directory} is missing or from another version: run `distill index --rebuild`")
    import bm25s

    docs = [Document.from_row(r) for r in iter_json(directory / "docs.jsonl")]
    if len(docs) != info.get("count"):
        raise DistillError(f"BM25 document table at {directory} is incomplete: run `distill index --rebuild`")
    retriever = None
    if docs:
        retriever = bm25s.BM25.load(str(directory / "bm25s"), mmap=False, show_progress=False, verbosity=0)
    return Bm25Index(retriever=retriever, docs=docs, stemmer=_stemmer())

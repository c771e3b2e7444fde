"""One replay: retrieve -> bundle -> prompt -> local model -> gate -> (escalate) -> log.

A `ReplaySession` holds what is expensive to open (the searcher, the backends) so a batch opens
each once; `run(task)` returns the ReplayRun it appended to ROOT/_kb/replay_runs.jsonl. Every
run is logged, including one whose backend call failed (the attempt carries the error).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from distill.config import RuntimeSettings, Settings
from distill.errors import RunNotLogged, UsageError
from distill.hashing import sha256_hex
from distill.jsonl import append_json
from distill.records.common import is_blank_text, unicode_problem
from distill.records.replay import Attempt, ContextBundle, FinalVerdict, ReplayRun
from distill.workspace import Workspace
from index.hits import SearchHit, Searcher
from runtime.backends import Backend, BackendError, BackendKind, escalation_backend, make_backend
from runtime.backends.base import TextSink
from runtime.bundle import build_bundle, retrieved_list
from runtime.gate import validate
from runtime.prompt import Prompt, assemble

PASSING_VERDICTS: frozenset[str] = frozenset({"validated_local", "escalated_validated"})


@dataclass(frozen=True)
class ReplayOptions:
    k: int = 8
    mode: str = "hybrid"
    backend: BackendKind = "auto"
    model: str | None = None
    local_only: bool = False
    allow_escalation: bool = False
    no_retrieval: bool = False
    chroma_url: str | None = None

    @classmethod
    def from_settings(cls, rt: RuntimeSettings, **given: Any) -> ReplayOptions:
        """Options for one session: what the caller gave (CLI flags), else [runtime] settings.
        A None value means 'not given'."""
        chosen = {key: value for key, value in given.items() if value is not None}
        return cls(
            k=chosen.pop("k", rt.k),
            mode=chosen.pop("mode", rt.mode),
            backend=chosen.pop("backend", rt.backend),
            **chosen,
        )

    def __post_init__(self) -> None:
        if self.local_only and self.allow_escalation:
            raise UsageError("--local-only and --allow-escalation contradict each other: pick one")
        if self.k < 1:
            raise UsageError("--k must be at least 1")


def task_hash(task: str) -> str:
    """Whitespace-normalised so re-running the same task gives the same hash."""
    return sha256_hex(" ".join(task.split()))


def index_staleness(ws: Workspace, searcher: Searcher | None = None) -> str | None:
    """A warning when the index manifest is older than the RAG export it should reflect.

    The mtime comparison is the cheap test; when the searcher can compare the export's content
    hash with the one it was built from (IndexSearcher.export_changed), a rewrite of identical
    content does not count as stale.
    """
    manifest = ws.index_dir / "manifest.json"
    try:
        export_mtime = ws.rag_path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        index_mtime = manifest.stat().st_mtime
    except FileNotFoundError:
        return f"no index manifest at {manifest}: run `distill index --root {ws.root}`"
    if index_mtime >= export_mtime:
        return None
    if searcher is not None and not searcher.export_changed(ws):
        return None
    return (
        f"the index ({manifest}) is older than {ws.rag_path}: "
        f"run `distill index --root {ws.root}` to pick up the new export"
    )


def run_attempt(
    backend: Backend, prompt: Prompt, task: str, settings: Settings, *, escalation: bool,
    on_text: TextSink | None = None, timings: dict[str, float] | None = None,
) -> Attempt:
    """One model call on the prompt and the gate on its answer; a backend failure is an attempt with
    its error, never an exception. `on_text` gets the answer's pieces as the model writes them
    (before the gate has judged it); `timings` gets the model's own prompt time when it reports one."""
    rt = settings.runtime
    try:
        gen = backend.generate(
            prompt.messages, max_tokens=rt.max_tokens, temperature=rt.temperature, timeout=rt.timeout_s,
            on_text=on_text,
        )
    except BackendError as exc:
        return Attempt(backend=backend.name, model=backend.model, error=str(exc), escalation=escalation)
    if timings is not None and gen.prompt_ms is not None:
        timings["escalation_prompt" if escalation else "local_prompt"] = gen.prompt_ms
    gate = validate(gen.text, prompt.bundle, task, settings.gate)
    return Attempt(
        backend=backend.name,
        model=backend.model,
        output=gen.text,
        gate=gate,
        latency_ms=round(gen.latency_ms, 3),
        prompt_tokens=gen.prompt_tokens,
        completion_tokens=gen.completion_tokens,
        truncated=gen.truncated,
        finish_reason=gen.finish_reason,
        escalation=escalation,
    )


def _passed(a: Attempt) -> bool:
    return a.error is None and a.gate is not None and a.gate.passed


@dataclass
class ReplaySession:
    ws: Workspace
    settings: Settings
    options: ReplayOptions
    searcher: Searcher | None = None
    local: Backend | None = None
    escalation: Backend | None = None
    log: bool = True
    warnings: list[str] = field(default_factory=list)
    _local_error: str | None = None

    _staleness_checked: bool = False
    # the index manifest's (inode, size, mtime) when this session opened its searcher: a long-lived
    # session (`distill serve`, a long tasks file) reopens the index when `distill index` rewrote it
    _index_seen: tuple[int, int, int] | None = None
    _opened_searcher: bool = False
    _index_warnings: dict[str, str] = field(default_factory=dict, repr=False)  # kind -> its current warning
    # held while the searcher is used or replaced, so a replaced one is closed with no query in it
    _search_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # lazily opened resources -------------------------------------------------------------
    def _searcher(self) -> Searcher:
        """The searcher, opened (or reopened after a rebuild) now. The caller holds _search_lock."""
        if self.searcher is None or (self._opened_searcher and self._index_rewritten()):
            self._open_searcher()
        assert self.searcher is not None
        return self.searcher

    def _index_rewritten(self) -> bool:
        from index.search import index_signature

        return index_signature(self.ws) != self._index_seen

    def _open_searcher(self) -> None:
        """Open the index, or reopen it after a rebuild, keeping the loaded model. A reopen that
        fails (a manifest out of step with the BM25 files) keeps the searcher already open and says
        so in every run's warnings, until the index changes again."""
        from distill.errors import DistillError
        from index.search import IndexSearcher, index_signature, open_searcher

        previous = self.searcher if self._opened_searcher else None
        seen = index_signature(self.ws)
        embedder = previous._embedder if isinstance(previous, IndexSearcher) else None
        try:
            searcher = open_searcher(self.ws, self.settings, chroma_url=self.options.chroma_url, embedder=embedder,
                                     reopen=previous is not None)
        except DistillError as exc:
            if previous is None:
                raise
            self._index_seen = seen
            self._index_warning("reopen", f"the index was rebuilt but could not be reopened, still searching the "
                                          f"one opened before: {exc}")
            return
        if isinstance(previous, IndexSearcher):
            previous.close()  # its store's memory and SQLite connections; no query holds it (the lock)
        self.searcher, self._index_seen, self._opened_searcher = searcher, seen, True
        self._staleness_checked = False
        self._index_warning("reopen", None)

    def _index_warning(self, kind: str, warning: str | None) -> None:
        """Set (or clear) the one warning of this kind that every run carries: a server that
        reopens its index many times must not pile them up."""
        old = self._index_warnings.pop(kind, None)
        if old in self.warnings:
            self.warnings.remove(old)
        if warning is not None:
            self._index_warnings[kind] = warning
            self.warnings.append(warning)

    def local_backend(self) -> Backend:
        """Built once; a failure to build is remembered so a batch does not retry it per task."""
        if self.local is None:
            if self._local_error is not None:
                raise BackendError(self._local_error, backend=self.options.backend)
            try:
                self.local = make_backend(self.options.backend, self.settings.runtime, model=self.options.model)
            except BackendError as exc:
                self._local_error = str(exc)
                raise
        return self.local

    def search(self, query: str, *, k: int, mode: str, categories: list[str] | None = None) -> list[SearchHit]:
        """The session's index, queried directly (`distill serve`'s /v1/search)."""
        with self._search_lock:
            return self._search(query, k=k, mode=mode, categories=categories)

    def _search(self, query: str, *, k: int, mode: str, categories: list[str] | None = None) -> list[SearchHit]:
        """One search (the caller holds _search_lock), done again once on the reopened index when
        the index was rewritten while it ran (`unless_rewritten` says why)."""
        from index.search import unless_rewritten

        def search(searcher: Searcher) -> list[SearchHit]:
            return list(searcher.search(query, k=k, mode=mode, categories=categories))

        searcher = self._searcher()
        if not self._opened_searcher:  # a searcher handed in: no manifest of its own to watch
            return search(searcher)
        hits = unless_rewritten(self.ws, self._index_seen, lambda: search(searcher))
        if hits is not None:
            return hits
        self._open_searcher()
        return search(self._searcher())

    def open_index(self) -> None:
        """Open the index now rather than on the first task (a server loads it at start)."""
        if not self.options.no_retrieval:
            with self._search_lock:
                self._searcher()

    # one task ------------------------------------------------------------------------------
    def retrieve(self, task: str) -> list[SearchHit]:
        if self.options.no_retrieval:
            return []
        with self._search_lock:
            searcher = self._searcher()
            if not self._staleness_checked:
                self._staleness_checked = True
                self._index_warning("stale", index_staleness(self.ws, searcher))
            return self._search(task, k=self.options.k, mode=self.options.mode)

    def run(self, task: str, *, task_id: str | None = None, on_text: TextSink | None = None) -> ReplayRun:
        """One task through the loop, logged. `on_text` gets the local model's answer as it is
        written (`distill serve`'s live stream): only a session that never escalates may take it,
        since a streamed answer cannot be replaced by an escalated one."""
        if on_text is not None and self.options.allow_escalation and not self.options.local_only:
            raise UsageError("a live stream of the local answer cannot be escalated: replay it local-only")
        if is_blank_text(task):
            raise UsageError("the task is empty (no visible character)")
        if (problem := unicode_problem(task)) is not None:
            raise UsageError(f"the task is {problem}")
        rt = self.settings.runtime
        t0 = time.perf_counter()
        timings: dict[str, float] = {}

        # the backend first: a dead backend is reported at once, not after seconds of retrieval
        local: Backend | None = None
        local_error: BackendError | None = None
        try:
            local = self.local_backend()
            local.ready()
        except BackendError as exc:
            local, local_error = None, exc
        hits = self.retrieve(task) if local is not None else []
        t1 = time.perf_counter()
        timings["retrieve"] = (t1 - t0) * 1000
        bundle: ContextBundle = build_bundle(
            hits, exemplars=rt.exemplars, warnings=rt.warnings, max_steps=rt.max_validation_steps
        )
        prompt = assemble(
            task,
            bundle,
            num_ctx=rt.num_ctx,
            max_tokens=rt.max_tokens,
            chars_per_token=rt.chars_per_token,
            item_max_chars=rt.item_max_chars,
        )
        t2 = time.perf_counter()
        timings["bundle"] = (t2 - t1) * 1000

        attempts: list[Attempt] = []
        if local is None:
            assert local_error is not None
            attempts.append(Attempt(backend=local_error.backend or self.options.backend, model=self.options.model or "-",
                                    error=str(local_error)))
        else:
            first_text: list[float] = []  # when the first piece of a live answer went out

            def sink(piece: str) -> None:
                if not first_text:
                    first_text.append(time.perf_counter())
                assert on_text is not None
                on_text(piece)

            attempts.append(run_attempt(local, prompt, task, self.settings, escalation=False,
                                        on_text=None if on_text is None else sink, timings=timings))
            if first_text:
                timings["local_first_text"] = (first_text[0] - t0) * 1000
        t3 = time.perf_counter()
        timings["local"] = (t3 - t2) * 1000

        escalated = False
        if not _passed(attempts[0]) and self.options.allow_escalation and not self.options.local_only:
            escalated = True
            try:
                if self.escalation is None:
                    self.escalation = escalation_backend(rt)
                attempts.append(run_attempt(self.escalation, prompt, task, self.settings, escalation=True,
                                            timings=timings))
            except BackendError as exc:
                attempts.append(
                    Attempt(backend=rt.escalation_backend, model=rt.escalation_model or "-", error=str(exc), escalation=True)
                )
            timings["escalation"] = (time.perf_counter() - t3) * 1000

        verdict: FinalVerdict
        final = attempts[-1]
        if not escalated:
            if _passed(final):
                verdict = "validated_local"
            elif final.error is not None:
                verdict = "error"
            else:
                verdict = "failed"
        else:
            verdict = "escalated_validated" if _passed(final) else "escalated_failed"
        timings["total"] = (time.perf_counter() - t0) * 1000

        run = ReplayRun(
            run_id=f"replay-{uuid.uuid4().hex}",
            task=task,
            task_hash=task_hash(task),
            task_id=task_id,
            retrieval_mode="none" if self.options.no_retrieval else self.options.mode,
            k=0 if self.options.no_retrieval else self.options.k,
            retrieved=retrieved_list(hits),
            bundle=prompt.bundle,
            attempts=attempts,
            escalated=escalated,
            final_verdict=verdict,
            final_output=next((a.output for a in reversed(attempts) if a.error is None), ""),
            warnings=list(self.warnings),
            timings_ms={key: round(v, 3) for key, v in timings.items()},
            created_at=datetime.now(UTC),
        )
        if self.log:
            try:
                append_json(self.ws.replay_log, [run.to_json_dict()])
            except OSError as exc:
                from distill.command import os_error_message

                raise RunNotLogged("the run could not be logged as evidence, so its answer is not given: "
                                   f"{os_error_message(exc)}"[:500]) from exc
        return run

"""Trainer-ready views of the native exports: TRL and OpenAI fine-tuning JSONL.

The native files (the paths in docs/DESIGN.md) are the ledger: append-only, content-addressed ids, full
provenance. The views are a function of them, line by line, refreshed on every export
(byte-identical for identical native files): rendered whole into new files that replace the old
ones together, or, when the native file only grew since the last rendering and the view files
still hold what it wrote, with the rows after it rendered and appended to them in place
(distill.export.view_state), which gives the bytes of a whole rendering. View rows hold only what trainers read;
provenance sits in a sidecar next to each view, one row per view line, same order
({"line": n, "id", "provenance"...}), so trainers accept the view files unchanged.

Paths (relative to ROOT/exports):
  sft/trl/messages.jsonl            {"messages": [system?, user, assistant]}
  sft/trl/prompt_completion.jsonl   {"prompt": [system?, user], "completion": [assistant]}
  sft/trl/provenance.jsonl
  sft/openai/chat.jsonl             {"messages": [system?, user, assistant]}
  sft/openai/provenance.jsonl
  preference/trl/dpo.jsonl          {"prompt": [user...], "chosen": [assistant], "rejected": [assistant]}
  preference/trl/provenance.jsonl
  preference/openai/preference.jsonl {"input": {"messages": [...]}, "preferred_output": [...],
                                      "non_preferred_output": [...]}
  preference/openai/provenance.jsonl
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from distill.export.view_state import HashingSink, StaleView, ViewState, appending
from distill.hashing import LineEndHash, PrefixHash
from distill.jsonl import atomic_writer, dumps, json_rows
from distill.receipts import code_fingerprint
from distill.records import PreferenceSample, SftSample
from distill.workspace import Workspace

Format = Literal["native", "trl", "openai"]
FORMATS: tuple[str, ...] = ("native", "trl", "openai")
Message = dict[str, str]

_TURN = re.compile(r"\n\n(Human|Assistant): ")
_ROLE = {"Human": "user", "Assistant": "assistant"}
_SPEAKER = {"user": "Human", "assistant": "Assistant"}


def view_paths(ws: Workspace, kind: str, fmt: str) -> dict[str, Path]:
    """Files a (kind, format) view writes: name -> path. native: the dataset file itself."""
    base = ws.exports_dir
    if fmt == "native":
        native = {"rag": ws.rag_path, "sft": ws.sft_path, "preference": ws.preference_path}
        return {"data": native[kind]} if kind in native else {}
    if kind == "sft" and fmt == "trl":
        return {
            "messages": base / "sft" / "trl" / "messages.jsonl",
            "prompt_completion": base / "sft" / "trl" / "prompt_completion.jsonl",
            "provenance": base / "sft" / "trl" / "provenance.jsonl",
        }
    if kind == "sft" and fmt == "openai":
        return {"chat": base / "sft" / "openai" / "chat.jsonl", "provenance": base / "sft" / "openai" / "provenance.jsonl"}
    if kind == "preference" and fmt == "trl":
        return {"dpo": base / "preference" / "trl" / "dpo.jsonl",
                "provenance": base / "preference" / "trl" / "provenance.jsonl"}
    if kind == "preference" and fmt == "openai":
        return {"preference": base / "preference" / "openai" / "preference.jsonl",
                "provenance": base / "preference" / "openai" / "provenance.jsonl"}
    return {}


# --- conversations ---------------------------------------------------------------------------


def parse_transcript(text: str) -> list[Message] | None:
    """An hh-rlhf style transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as messages, else None.

    render_transcript(parse_transcript(t)) == t for every t this accepts (lossless).
    """
    if not _TURN.match(text):
        return None
    parts = _TURN.split(text)
    # parts: ["", speaker, content, speaker, content, ...]
    return [{"role": _ROLE[parts[k]], "content": parts[k + 1]} for k in range(1, len(parts), 2)]


def render_transcript(messages: list[Message]) -> str:
    return "".join(f"\n\n{_SPEAKER[m['role']]}: {m['content']}" for m in messages)


def prompt_messages(prompt: str) -> list[Message]:
    """A prompt as conversation turns: a transcript keeps its turns, plain text is one user turn."""
    return parse_transcript(prompt) or [{"role": "user", "content": prompt}]


def answer_messages(text: str) -> list[Message]:
    """A chosen/rejected side: one assistant turn (a transcript continuation keeps its turns)."""
    if text.startswith("\n\nAssistant: "):
        parsed = parse_transcript(text)
        if parsed:
            return parsed
    return [{"role": "assistant", "content": text}]


def sft_messages(s: SftSample) -> list[Message]:
    msgs: list[Message] = []
    if s.context.strip():
        msgs.append({"role": "system", "content": f"Context:\n{s.context}"})
    msgs.append({"role": "user", "content": s.instruction})
    msgs.append({"role": "assistant", "content": s.response})
    return msgs


def sft_to_trl_messages(s: SftSample) -> dict[str, Any]:
    return {"messages": sft_messages(s)}


def sft_to_trl_prompt_completion(s: SftSample) -> dict[str, Any]:
    msgs = sft_messages(s)
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


def sft_to_openai(s: SftSample) -> dict[str, Any]:
    return {"messages": sft_messages(s)}


def preference_to_trl(p: PreferenceSample) -> dict[str, Any]:
    """TRL DPO, conversational: prompt turns, assistant-only chosen and rejected."""
    return {"prompt": prompt_messages(p.prompt), "chosen": answer_messages(p.chosen),
            "rejected": answer_messages(p.rejected)}


def preference_to_openai(p: PreferenceSample) -> dict[str, Any]:
    """OpenAI preference (DPO) fine-tuning row."""
    return {
        "input": {"messages": prompt_messages(p.prompt)},
        "preferred_output": answer_messages(p.chosen),
        "non_preferred_output": answer_messages(p.rejected),
    }


# --- rendering views -------------------------------------------------------------------------


def _valid_rows(path: Path, model: Any, *, start: int = 0, lines_before: int = 0,
                on_chunk: Callable[[bytes], None] | None = None) -> Iterator[Any]:
    """Rows of a native file (from byte `start`, a line start) that pass the schema; a row that
    does not (a hand edit) is never rendered into a view, and verify_export reports it as a
    firewall violation."""
    for _, row in json_rows(path, start=start, lines_before=lines_before, on_chunk=on_chunk):
        try:
            yield model.model_validate(row)
        except ValidationError:
            continue


def _sft_sidecar(n: int, s: SftSample) -> dict[str, Any]:
    return {"line": n, "id": s.id, "source_run_id": s.source_run_id, "quality_score": s.quality_score,
            "provenance": s.provenance.to_json_dict()}


def _pref_sidecar(n: int, p: PreferenceSample) -> dict[str, Any]:
    return {"line": n, "id": p.id, "pairing": p.pairing, "task_id": p.task_id,
            "chosen_run_id": p.chosen_run_id, "rejected_run_id": p.rejected_run_id,
            "chosen_provenance": p.chosen_provenance.to_json_dict(),
            "rejected_provenance": p.rejected_provenance.to_json_dict()}


def render_view(ws: Workspace, kind: str, fmt: str) -> list[Path]:
    """(Re)write one view from the native file, in one streaming pass: every file of the view
    (and its provenance sidecar) gets its line as each row is read, so memory does not grow with
    the export. A whole rendering replaces the files together, or none on an error; when the
    native file only grew since the last rendering, the rows after it are appended to the files
    in place (all cut back on an error: distill.export.view_state)."""
    paths = view_paths(ws, kind, fmt)
    if fmt == "native" or not paths:
        return []
    state_path = ws.view_state_path(kind, fmt)
    code = code_fingerprint(["distill"])
    state = ViewState.load(state_path, code)
    if state is not None and set(state.files) == set(paths):
        try:
            return _render(ws, kind, fmt, paths, state_path, code, state)
        except StaleView:
            pass  # a view file changed under us: render it whole
    return _render(ws, kind, fmt, paths, state_path, code, None)


def _render(ws: Workspace, kind: str, fmt: str, paths: dict[str, Path], state_path: Path, code: str,
            state: ViewState | None) -> list[Path]:
    native = view_paths(ws, kind, "native")["data"]
    hasher = state.resume(native) if state is not None else None
    if hasher is None:
        state = None  # the native file was rewritten (or the state is gone): start from its first byte
    start, lines_before, rendered = (state.native_end, state.native_lines, state.rows) if state else (0, 0, 0)
    read = LineEndHash(hasher if hasher is not None else PrefixHash())
    model: Any
    shapes: dict[str, Callable[[Any], dict[str, Any]]]
    if kind == "sft":
        model, sidecar = SftSample, _sft_sidecar
        shapes = ({"messages": sft_to_trl_messages, "prompt_completion": sft_to_trl_prompt_completion}
                  if fmt == "trl" else {"chat": sft_to_openai})
    else:
        model, sidecar = PreferenceSample, _pref_sidecar
        shapes = {"dpo": preference_to_trl} if fmt == "trl" else {"preference": preference_to_openai}
    rows = _valid_rows(native, model, start=start, lines_before=lines_before, on_chunk=read)
    names = [*shapes, "provenance"]
    with contextlib.ExitStack() as stack:
        sinks: dict[str, HashingSink]
        if state is not None:
            # the old files are the rendering of the native prefix: the new rows go after them
            sinks = stack.enter_context(appending({name: paths[name] for name in names}, state.files))
        else:
            sinks = {name: HashingSink(stack.enter_context(atomic_writer(paths[name]))) for name in names}
        n = rendered
        for n, sample in enumerate(rows, start=rendered + 1):
            for name, shape in shapes.items():
                sinks[name].write(dumps(shape(sample)) + b"\n")
            sinks["provenance"].write(dumps(sidecar(n, sample)) + b"\n")
        sha = read.hexdigest(native)
        new_state = None if sha is None else ViewState(
            code=code, native_end=read.end, native_lines=lines_before + read.newlines,
            native_hash=sha, rows=n, files={name: sink.recorded() for name, sink in sinks.items()})
    # saved only once the view files are in place: a state never describes files not written
    if new_state is not None:
        new_state.save(state_path)
    else:
        state_path.unlink(missing_ok=True)
    return list(paths.values())


def views_to_refresh(ws: Workspace, kind: str, requested: str) -> list[str]:
    """The requested view plus any view already on disk (so no view goes stale)."""
    out = []
    for fmt in FORMATS[1:]:
        paths = view_paths(ws, kind, fmt)
        if paths and (fmt == requested or any(p.exists() for p in paths.values())):
            out.append(fmt)
    return out

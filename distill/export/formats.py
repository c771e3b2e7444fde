"""Trainer-ready views of the native exports: TRL and OpenAI fine-tuning JSONL.

The native files (the paths in docs/DESIGN.md) are the ledger: append-only, content-addressed ids, full
provenance. The views are rendered whole from them on every export (atomic rename), so they
are byte-identical for identical native files. View rows hold only what trainers read;
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

from distill.jsonl import atomic_writer, dumps, json_rows
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


def _valid_rows(path: Path, model: Any) -> Iterator[Any]:
    """Rows of a native file that pass the schema; a row that does not (a hand edit) is never
    rendered into a view, and verify_export reports it as a firewall violation."""
    for _, row in json_rows(path):
        try:
            yield model.model_validate(row)
        except ValidationError:
            continue


def _sft_rows(ws: Workspace) -> Iterator[SftSample]:
    return _valid_rows(ws.sft_path, SftSample)


def _pref_rows(ws: Workspace) -> Iterator[PreferenceSample]:
    return _valid_rows(ws.preference_path, PreferenceSample)


def _sft_sidecar(n: int, s: SftSample) -> dict[str, Any]:
    return {"line": n, "id": s.id, "source_run_id": s.source_run_id, "quality_score": s.quality_score,
            "provenance": s.provenance.to_json_dict()}


def _pref_sidecar(n: int, p: PreferenceSample) -> dict[str, Any]:
    return {"line": n, "id": p.id, "pairing": p.pairing, "task_id": p.task_id,
            "chosen_run_id": p.chosen_run_id, "rejected_run_id": p.rejected_run_id,
            "chosen_provenance": p.chosen_provenance.to_json_dict(),
            "rejected_provenance": p.rejected_provenance.to_json_dict()}


def render_view(ws: Workspace, kind: str, fmt: str) -> list[Path]:
    """(Re)write one view whole from the native file, in one streaming pass: every file of the
    view (and its provenance sidecar) gets its line as each row is read, so memory does not grow
    with the export; the files are replaced together, or none is on an error."""
    paths = view_paths(ws, kind, fmt)
    if fmt == "native" or not paths:
        return []
    rows: Iterator[Any]
    shapes: dict[str, Callable[[Any], dict[str, Any]]]
    if kind == "sft":
        rows, sidecar = _sft_rows(ws), _sft_sidecar
        shapes = ({"messages": sft_to_trl_messages, "prompt_completion": sft_to_trl_prompt_completion}
                  if fmt == "trl" else {"chat": sft_to_openai})
    else:
        rows, sidecar = _pref_rows(ws), _pref_sidecar
        shapes = {"dpo": preference_to_trl} if fmt == "trl" else {"preference": preference_to_openai}
    with contextlib.ExitStack() as stack:
        sinks = {name: stack.enter_context(atomic_writer(paths[name])) for name in [*shapes, "provenance"]}
        for n, sample in enumerate(rows, start=1):
            for name, shape in shapes.items():
                sinks[name].write(dumps(shape(sample)) + b"\n")
            sinks["provenance"].write(dumps(sidecar(n, sample)) + b"\n")
    return list(paths.values())


def views_to_refresh(ws: Workspace, kind: str, requested: str) -> list[str]:
    """The requested view plus any view already on disk (so no view goes stale)."""
    out = []
    for fmt in FORMATS[1:]:
        paths = view_paths(ws, kind, fmt)
        if paths and (fmt == requested or any(p.exists() for p in paths.values())):
            out.append(fmt)
    return out

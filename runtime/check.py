"""`replay --check FILE.jsonl`: the validation gate alone, on answers from any system.

Each input line is `{"id", "task", "answer", "context": [{"id", "text"}]}`; the context items are
the evidence the answer was given (they play the retrieved bundle's part). No retrieval, no model,
nothing logged: one verdict per answer, with every check and its reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from distill.config import GateSettings
from distill.errors import UsageError
from distill.jsonl import iter_raw_lines, loads
from distill.records.common import UnicodeStr
from distill.records.replay import ContextBundle, GateCheck, RetrievedItem
from distill.validation_steps import extract_validation_steps
from runtime.gate import validate

MAX_LINE_BYTES = 16 << 20


class ContextItem(BaseModel):
    id: UnicodeStr = Field(min_length=1)
    text: UnicodeStr


class CheckInput(BaseModel):
    id: UnicodeStr = Field(min_length=1)
    task: UnicodeStr
    answer: UnicodeStr
    context: list[ContextItem] = Field(default_factory=list)


class CheckVerdict(BaseModel):
    id: str
    passed: bool
    checks: list[GateCheck] = Field(default_factory=list)
    error: str | None = Field(None, description="the line could not be checked (bad input), and why")


def bundle_of(item: CheckInput, *, max_steps: int = 10) -> ContextBundle:
    """The context items as the bundle a replay would have built: exemplars in the given order,
    with the checklist lines found in them as validation steps."""
    exemplars = [
        RetrievedItem(id=c.id, score=0.0, rank=n, category="accepted", text=c.text)
        for n, c in enumerate(item.context, start=1)
    ]
    steps: list[str] = []
    for c in item.context:
        for step in extract_validation_steps(c.text):
            if step not in steps and len(steps) < max_steps:
                steps.append(step)
    return ContextBundle(exemplars=exemplars, validation_steps=steps)


def check_one(item: CheckInput, settings: GateSettings) -> CheckVerdict:
    result = validate(item.answer, bundle_of(item), item.task, settings)
    return CheckVerdict(id=item.id, passed=result.passed, checks=result.checks)


def check_file(path: Path, settings: GateSettings) -> Iterator[CheckVerdict]:
    """One verdict per non-blank line; a line that is not a valid input gets a verdict with its error."""
    if not path.is_file():
        raise UsageError(f"--check: {path} is not a file")
    for raw in iter_raw_lines(path, max_line_bytes=MAX_LINE_BYTES):
        where = f"line {raw.number}"
        if raw.too_long:
            yield CheckVerdict(id=where, passed=False, error=f"{where}: longer than {MAX_LINE_BYTES} bytes")
            continue
        if raw.data is None or not raw.data.strip():
            continue
        try:
            value: Any = loads(raw.data)
        except ValueError as exc:
            yield CheckVerdict(id=where, passed=False, error=f"{where}: not JSON ({exc})")
            continue
        try:
            item = CheckInput.model_validate(value)
        except ValidationError as exc:
            ident = value.get("id") if isinstance(value, dict) and isinstance(value.get("id"), str) else where
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "<line>"
            yield CheckVerdict(id=ident, passed=False, error=f"{where}: {field}: {first['msg']}")
            continue
        yield check_one(item, settings)

"""Interop with public preference data: Anthropic hh-rlhf <-> PreferenceSample <-> TRL DPO.

hh-rlhf rows are {"chosen": transcript, "rejected": transcript}, two whole conversations that
share their opening turns. We keep the shared turns as the prompt (as a transcript) and the
turns after them as chosen / rejected (normally one assistant turn each). The conversion is
lossless: trl_dpo_to_hh_rlhf(preference_to_trl(hh_rlhf_to_preference(row))) == row.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from distill.errors import ConversionError
from distill.export.formats import Message, parse_transcript, preference_to_trl, render_transcript
from distill.hashing import content_id, sig_hash
from distill.jsonl import iter_raw_lines, loads
from distill.records import Category, PreferenceSample, Provenance

HH_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _split_common(chosen: list[Message], rejected: list[Message]) -> int:
    """Number of leading turns both conversations share, ending before an assistant turn."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    # the answers start at an assistant turn: back off to the turn after the last user turn
    while n > 0 and chosen[n - 1]["role"] != "user":
        n -= 1
    return n


def hh_rlhf_to_preference(
    row: dict[str, Any],
    *,
    line_number: int,
    line_offset: int = 0,
    source_file: str = "hh-rlhf",
    created_at: datetime = HH_EPOCH,
) -> PreferenceSample:
    """One hh-rlhf row as a PreferenceSample (raises ConversionError / ValidationError)."""
    chosen_t, rejected_t = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen_t, str) or not isinstance(rejected_t, str):
        raise ConversionError("row needs string 'chosen' and 'rejected'")
    chosen, rejected = parse_transcript(chosen_t), parse_transcript(rejected_t)
    if chosen is None or rejected is None:
        raise ConversionError("not a Human/Assistant transcript")
    n = _split_common(chosen, rejected)
    if n == 0:
        raise ConversionError("the two conversations share no opening user turn")
    prompt = render_transcript(chosen[:n])
    tail_c, tail_r = chosen[n:], rejected[n:]
    if not tail_c or not tail_r:
        raise ConversionError("one side has no answer after the shared turns")
    # one assistant turn: its text; a longer continuation stays a transcript (lossless)
    chosen_text = tail_c[0]["content"] if len(tail_c) == 1 and tail_c[0]["role"] == "assistant" else render_transcript(tail_c)
    rejected_text = tail_r[0]["content"] if len(tail_r) == 1 and tail_r[0]["role"] == "assistant" else render_transcript(tail_r)
    sig = sig_hash(row)
    task = f"hh-rlhf:{line_number}"
    chosen_id, rejected_id = f"{task}:chosen", f"{task}:rejected"
    prov = Provenance(source_file=source_file, line_offset=line_offset, line_number=line_number, sig_hash=sig,
                      recorded_at=created_at)
    return PreferenceSample(
        id=content_id("pref", chosen_id, rejected_id, sig, sig),
        prompt=prompt,
        chosen=chosen_text,
        rejected=rejected_text,
        chosen_run_id=chosen_id,
        rejected_run_id=rejected_id,
        chosen_category=Category.ACCEPTED,
        rejected_category=Category.REJECTED,
        task_id=task,
        pairing="same_task",
        reason="human preference label (hh-rlhf)",
        created_at=created_at,
        chosen_provenance=prov,
        rejected_provenance=prov,
    )


def trl_dpo_to_hh_rlhf(row: dict[str, Any]) -> dict[str, str]:
    """A conversational TRL DPO row back to hh-rlhf's two transcripts."""
    prompt: list[Message] = row["prompt"]
    return {
        "chosen": render_transcript(prompt + list(row["chosen"])),
        "rejected": render_transcript(prompt + list(row["rejected"])),
    }


def preference_to_hh_rlhf(sample: PreferenceSample) -> dict[str, str]:
    return trl_dpo_to_hh_rlhf(preference_to_trl(sample))


@dataclass(frozen=True, slots=True)
class HHResult:
    line_number: int
    sample: PreferenceSample | None
    error: str | None
    original: dict[str, Any] | None


def convert_hh_rlhf_file(path: Path, *, source_file: str | None = None) -> Iterator[HHResult]:
    """Every line of an hh-rlhf JSONL (optionally .gz) file: a sample, or why not."""
    name = source_file or path.name
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            data = fh.read()
        lines: list[tuple[int, int, bytes]] = []
        offset = 0
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if raw.strip():
                lines.append((number, offset, raw))
            offset += len(raw) + 1
    else:
        lines = [(r.number, r.offset, r.data) for r in iter_raw_lines(path) if r.data and r.data.strip()]
    for number, offset, raw in lines:
        try:
            row = loads(raw)
            if not isinstance(row, dict):
                raise ConversionError("not a JSON object")
            sample = hh_rlhf_to_preference(row, line_number=number, line_offset=offset, source_file=name)
        except ValidationError as exc:
            msg = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            yield HHResult(number, None, msg[:200], None)
            continue
        except ValueError as exc:
            yield HHResult(number, None, str(exc)[:200], None)
            continue
        yield HHResult(number, sample, None, row)

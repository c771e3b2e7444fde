"""Text with no character that shows is blank, wherever it comes from.

`str.strip()` keeps a NUL, a zero-width space, a BOM or a line separator, so a row whose text or
instruction held only those passed every "is it empty?" check: found by probe, a `distill serve`
request whose message was "\\u0000" was answered, logged, and the next `distill run` shipped it to
the SFT export as the instruction of an accepted row. One rule (`is_blank_text`) now decides, and
the export schemas refuse such text as a last layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from distill.collect import run_collect
from distill.config import load_settings
from distill.export import run_export
from distill.records import QuarantineReason, SftSample
from distill.records.common import is_blank_text
from distill.score import run_score
from distill.workspace import Workspace

INVISIBLE = ["", " \t\n", "\x00", "\u200b\u200d", "\ufeff", "\u2028\u2029", " \x00\u200b\x7f\u00ad "]
VISIBLE = ["a", " \x00 ok", "\u200bword", "é", "\ue000", "0", "…"]


@pytest.mark.parametrize("text", [*INVISIBLE, "\ud800"])  # a lone surrogate: collect quarantines it as undecodable
def test_text_with_nothing_that_shows_is_blank(text: str) -> None:
    assert is_blank_text(text)


@pytest.mark.parametrize("text", VISIBLE)
def test_one_character_that_shows_is_text(text: str) -> None:
    assert not is_blank_text(text)


def test_the_sft_schema_refuses_an_instruction_or_response_nobody_can_read() -> None:
    good = {"id": "sft-1", "instruction": "Fix the retry loop", "response": "Done.", "source_run_id": "s:1",
            "quality_score": "accepted", "created_at": "2026-03-01T10:00:00Z",
            "provenance": {"source_file": "_kb/x.jsonl", "line_number": 1, "line_offset": 0, "sig_hash": "0" * 64,
                           "recorded_at": "2026-03-01T10:00:00Z"}}
    SftSample.model_validate(good)
    for field in ("instruction", "response"):
        with pytest.raises(ValidationError, match="no visible character"):
            SftSample.model_validate({**good, field: "\x00\u200b"})


MAPPING = """
[[sources]]
name = "bot"
path = "bot.jsonl"
role = "executor"
score_class = "A"
natural_key = ["run"]
task_id = "task"
text = "reply"
instruction = "prompt"
created_at = "when"
verdict = "outcome"
verdict_map = { merged = "accepted", closed = "rejected" }
"""


def test_rows_whose_text_shows_nothing_are_quarantined_and_never_shipped(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "_kb").mkdir(parents=True)
    (root / "distill.toml").write_text(MAPPING)
    rows = []
    for i, text in enumerate(INVISIBLE[1:]):  # the reply is the row's text: nothing to learn from or retrieve
        rows.append({"run": f"blank-{i}", "task": f"t{i}", "reply": text, "prompt": "Fix the loop",
                     "when": f"2026-03-01T10:{i:02d}:00Z", "outcome": "merged"})
    for i, prompt in enumerate(INVISIBLE[1:]):  # a blank prompt: the row ships with the source's template instead
        rows.append({"run": f"prompt-{i}", "task": f"p{i}", "reply": f"Added a backoff to the retry loop ({i}).",
                     "prompt": prompt, "when": f"2026-03-02T10:{i:02d}:00Z", "outcome": "merged"})
    with (root / "_kb" / "bot.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    ws, settings = Workspace(root), load_settings(root)

    collect = run_collect(ws, settings)
    quarantined = [json.loads(line) for line in ws.quarantine_path("collect").read_text().splitlines()]
    assert sorted(q["source_ref"]["line_number"] for q in quarantined) == list(range(1, len(INVISIBLE)))
    assert {q["reason"] for q in quarantined} == {QuarantineReason.EMPTY_TEXT.value}
    assert collect.totals.rows_in == len(rows) and collect.totals.quarantined == len(INVISIBLE) - 1

    run_score(ws, settings)
    sft = run_export(ws, settings, "sft")
    rag = run_export(ws, settings, "rag")
    assert sft.totals.written == rag.totals.written == len(INVISIBLE) - 1
    shipped = [json.loads(line) for line in ws.sft_path.read_text().splitlines()]
    assert len(shipped) == len(INVISIBLE) - 1
    for row in shipped:
        assert not is_blank_text(row["instruction"]) and not is_blank_text(row["response"])
    for row in (json.loads(line) for line in ws.rag_path.read_text().splitlines()):
        assert not is_blank_text(row["title"]) and not is_blank_text(row["text"])

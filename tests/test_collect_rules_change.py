"""Evidence follows the rules that make it.

Found by probe: a `[[sources]]` mapping that read the wrong field (`text = "reply"`) was fixed
(`text = "output"`) after a run; every later `distill run`, `--force` too, kept the wrong text in
the evidence, so the fix never reached score, the index or an `export --rebuild` (collect
deduplicates by run id and source-line hash, and evidence was append-only). Now a change of
distill's code, [collect] or [[sources]] (or `--force`) collects the evidence again: a row whose
source line is still there becomes what the current rules make of it (or goes, quarantined), and
only rows no source line backs any more (a rotated log) are kept as they were.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from distill.collect import run_collect
from distill.config import load_settings
from distill.jsonl import iter_json
from distill.pipeline import execute_run
from distill.workspace import Workspace, iter_partition_files

MAPPING = """
[[sources]]
name = "bot"
path = "bot*.jsonl"
role = "executor"
score_class = "A"
natural_key = ["{key}"]
task_id = "task"
text = "{text}"
instruction = "prompt"
created_at = "when"
verdict = "outcome"
verdict_map = {{ merged = "accepted", closed = "rejected" }}
"""


def _rows(n: int, *, start: int = 0, day: int = 1) -> list[dict[str, Any]]:
    return [{"run": f"r{i}", "ticket": f"T-{i}", "task": f"t{i}", "reply": f"WRONG FIELD {i}",
             "output": f"Added a backoff to the retry loop ({i}).", "prompt": "Fix the loop",
             "when": f"2026-03-0{day}T10:{i:02d}:00Z", "outcome": "merged"} for i in range(start, start + n)]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _workspace(root: Path, rows: list[dict[str, Any]], *, text: str = "reply", key: str = "run") -> Workspace:
    (root / "_kb").mkdir(parents=True, exist_ok=True)
    (root / "distill.toml").write_text(MAPPING.format(text=text, key=key))
    _write(root / "_kb" / "bot.jsonl", rows)
    return Workspace(root)


def _configure(root: Path, *, text: str = "reply", key: str = "run") -> None:
    (root / "distill.toml").write_text(MAPPING.format(text=text, key=key))


def _collect(root: Path) -> Any:
    return run_collect(Workspace(root), load_settings(root))


def _evidence(root: Path) -> list[dict[str, Any]]:
    return [row for path in iter_partition_files(root / "evidence") for row in iter_json(path)]


def _tree(root: Path) -> dict[str, bytes]:
    base = root / "evidence"
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in iter_partition_files(base)}


def test_a_fixed_mapping_reaches_the_rows_already_collected(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    _workspace(root, _rows(4))
    _collect(root)
    assert {r["text"] for r in _evidence(root)} == {f"WRONG FIELD {i}" for i in range(4)}

    _configure(root, text="output")
    report = _collect(root)
    assert sorted(r["text"] for r in _evidence(root)) == [f"Added a backoff to the retry loop ({i})." for i in range(4)]
    # the same runs as before: counted as collected already, not as new rows
    assert (report.totals.written, report.totals.deduped) == (0, 4)
    assert any("collected again" in note for note in report.notes)
    assert any(note.startswith("evidence: 4 rows differ") and "export all --rebuild" in note for note in report.notes)

    fresh = tmp_path / "fresh"
    _workspace(fresh, _rows(4), text="output")
    _collect(fresh)
    assert _tree(root) == _tree(fresh)  # as a workspace that never knew the old mapping


def test_a_changed_natural_key_replaces_the_runs_instead_of_doubling_them(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    _workspace(root, _rows(3))
    _collect(root)
    _configure(root, key="ticket")
    report = _collect(root)
    assert sorted(r["run_id"] for r in _evidence(root)) == ["bot:T-0", "bot:T-1", "bot:T-2"]
    assert (report.totals.written, report.totals.deduped) == (3, 0)


def test_a_row_the_rules_quarantine_now_leaves_the_evidence(tmp_path: Path) -> None:
    rows = _rows(3)
    rows[1]["output"] = "\u200b"  # blank once the mapping reads `output`
    root = tmp_path / "ws"
    _workspace(root, rows)
    _collect(root)
    _configure(root, text="output")
    report = _collect(root)
    assert sorted(r["run_id"] for r in _evidence(root)) == ["bot:r0", "bot:r2"]
    assert report.totals.quarantined == 1 and report.totals.by_reason == {"empty_text": 1}


def test_rows_whose_source_lines_are_gone_are_kept_as_they_were(tmp_path: Path) -> None:
    """A rotated log: the evidence is the only record of its old lines, whatever the rules now."""
    root = tmp_path / "ws"
    _workspace(root, _rows(5))
    _collect(root)
    _write(root / "_kb" / "bot.jsonl", _rows(2, start=3) + _rows(2, start=5, day=2))  # r0-r2 rotated away
    _configure(root, text="output")
    report = _collect(root)
    texts = {r["run_id"]: r["text"] for r in _evidence(root)}
    assert texts == {"bot:r0": "WRONG FIELD 0", "bot:r1": "WRONG FIELD 1", "bot:r2": "WRONG FIELD 2",
                     "bot:r3": "Added a backoff to the retry loop (3).", "bot:r4": "Added a backoff to the retry loop (4).",
                     "bot:r5": "Added a backoff to the retry loop (5).", "bot:r6": "Added a backoff to the retry loop (6)."}
    assert (report.totals.written, report.totals.deduped) == (2, 2)
    assert any("evidence: 3 rows kept" in note for note in report.notes)
    # kept rows first, in their old order, then the rows the current rules made
    day1 = [r["run_id"] for r in iter_json(root / "evidence" / "2026" / "03" / "01" / "bot.jsonl")]
    assert day1 == ["bot:r0", "bot:r1", "bot:r2", "bot:r3", "bot:r4"]


def test_an_append_after_a_rebuild_that_kept_rows_is_collected_as_by_a_full_read(tmp_path: Path) -> None:
    """A rebuild leaves checkpoints for the next collect; where it kept old rows ahead of the ones it
    wrote, an evidence file's checkpoint no longer matches its prefix and the file is read whole:
    either way the next collect gives what one without checkpoints gives."""
    root, twin = tmp_path / "ws", tmp_path / "twin"
    _workspace(root, _rows(5))
    _collect(root)
    _write(root / "_kb" / "bot.jsonl", _rows(2, start=3) + _rows(2, start=5, day=2))  # r0-r2 rotated away
    _configure(root, text="output")
    assert any("evidence: 3 rows kept" in note for note in _collect(root).notes)
    assert Workspace(root).collect_checkpoint_path.is_file()
    shutil.copytree(root, twin)
    Workspace(twin).collect_checkpoint_path.unlink()
    for ws in (root, twin):
        with open(ws / "_kb" / "bot.jsonl", "a") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in _rows(2, start=7, day=1)))
    resumed, full = _collect(root), _collect(twin)
    assert resumed.model_dump(exclude={"inputs", "outputs"}) == full.model_dump(exclude={"inputs", "outputs"})
    assert _tree(root) == _tree(twin) and (resumed.totals.written, resumed.totals.deduped) == (2, 4)


def test_unchanged_rules_append_and_force_rebuilds_to_the_same_bytes(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    _workspace(root, _rows(3))
    _collect(root)
    before = _tree(root)
    report = _collect(root)
    assert not any("collected again" in note for note in report.notes) and _tree(root) == before
    ws = Workspace(root)
    result = execute_run(ws, load_settings(root), include_index=False, force=True)
    assert result.summary.overall_passed and _tree(root) == before
    collect = next(r for r in result.receipts if r.stage == "collect")
    assert any("collected again" in note for note in collect.notes)
    assert not any("differ" in note for note in collect.notes)  # the same rules make the same rows


def test_a_rebuild_killed_half_way_ends_the_same_on_the_next_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each partition file is replaced whole and the new rules are recorded last: a crash between two
    files leaves a mix that the next run rebuilds to what an uninterrupted run gives."""
    import distill.collect as collect

    rows = _rows(3) + _rows(3, start=3, day=2)
    root, whole = tmp_path / "ws", tmp_path / "whole"
    for r in (root, whole):
        _workspace(r, rows)
        _collect(r)
        _configure(r, text="output")
    _collect(whole)

    real = collect.atomic_writer
    calls = {"n": 0}

    def dies_on_the_second_file(path: Path, **kw: Any) -> Any:
        if path.name == "bot.jsonl" and "evidence" in path.parts:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return real(path, **kw)

    monkeypatch.setattr(collect, "atomic_writer", dies_on_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        _collect(root)
    monkeypatch.setattr(collect, "atomic_writer", real)
    assert _tree(root) != _tree(whole)  # half old, half new
    assert not [p for p in os.listdir(root) if p.startswith(".distill-collect-")]  # scratch removed
    _collect(root)
    assert _tree(root) == _tree(whole)


def test_replay_runs_turned_off_leave_the_evidence_other_sources_stay(tmp_path: Path) -> None:
    from tests.test_sources import _replay_row

    root = tmp_path / "ws"
    _workspace(root, _rows(2))
    (root / "_kb" / "replay_runs.jsonl").write_text(json.dumps(_replay_row()) + "\n")
    _collect(root)
    assert {r["source"] for r in _evidence(root)} == {"bot", "replay_runs"}

    (root / "distill.toml").write_text(MAPPING.format(text="reply", key="run") + "\n[collect]\ninclude_replay_runs = false\n")
    report = _collect(root)
    assert {r["source"] for r in _evidence(root)} == {"bot"}
    assert any("evidence: 1 rows dropped" in note for note in report.notes)
    # a mapping removed from the settings: its rows are the only record left of them, and stay
    (root / "distill.toml").write_text("[collect]\ninclude_replay_runs = false\n")
    report = _collect(root)
    assert {r["source"] for r in _evidence(root)} == {"bot"}
    assert any("evidence: 2 rows kept" in note for note in report.notes)


def test_a_renamed_source_replaces_its_rows_instead_of_doubling_them(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    _workspace(root, _rows(3))
    _collect(root)
    (root / "distill.toml").write_text(MAPPING.format(text="reply", key="run").replace('name = "bot"', 'name = "helper"'))
    _collect(root)
    assert sorted(r["run_id"] for r in _evidence(root)) == ["helper:r0", "helper:r1", "helper:r2"]


def test_lines_rotated_into_another_file_are_one_row_each(tmp_path: Path) -> None:
    """bot.jsonl renamed bot-1.jsonl (the mapping's glob reads both) and a new bot.jsonl started:
    the moved lines make the rows they made before, not a second copy beside the old ones."""
    root = tmp_path / "ws"
    _workspace(root, _rows(3))
    _collect(root)
    (root / "_kb" / "bot.jsonl").rename(root / "_kb" / "bot-1.jsonl")
    _write(root / "_kb" / "bot.jsonl", _rows(1, start=3))
    _configure(root, text="output")
    report = _collect(root)
    rows = _evidence(root)
    assert sorted(r["run_id"] for r in rows) == ["bot:r0", "bot:r1", "bot:r2", "bot:r3"]
    assert {r["provenance"]["source_file"] for r in rows if r["run_id"] != "bot:r3"} == {"_kb/bot-1.jsonl"}
    assert (report.totals.written, report.totals.deduped) == (1, 3)

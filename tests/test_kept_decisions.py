"""The preference export keeps last run's decision for every row of a task no change touched
(distill.export.kept_decisions): its files and counters are exactly those of pairing every row,
whatever changed, and it falls back to pairing every row when the kept file does not check out.

Each case changes two twin copies of an exported adversarial workspace alike; the second has
lost its kept decisions (it replays its checkpoint and pairs every task), and both export twice
(the second time each starts from the decisions the first wrote)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import distill.export.preference as preference_module
from distill.config import Settings
from distill.export.checkpoints import LazyEntries
from distill.export.kept_decisions import NONE, Codes, NextDecisions, dirty_rows
from distill.export.run import run_export
from distill.jsonl import append_json
from distill.records import Category, ModelRole, PreferenceSample
from distill.records.stage import StageReport
from distill.workspace import Workspace, iter_partition_files, partition_path
from tests.export_helpers import Adversarial, adversarial_settings, build_adversarial, review_text
from tests.export_helpers import Row as SourceRow
from tests.fixtures_checkpoints import Calls

A, P, R = Category.ACCEPTED, Category.PARTIALLY_ACCEPTED, Category.REJECTED
FIX = "Review src/util.py for defects and give the fix."  # the question two tasks answer across sources


def _row(run_id: str, task: str, category: Category, text: str, *, source: str = "scrum_reviews",
         **kw: Any) -> SourceRow:
    return SourceRow(run_id=run_id, task_id=task, source=source, category=category, text=text, **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Settings]:
    """The adversarial workspace exported twice: the second export pairs again the tasks that made
    pairs in the first, then every task has settled (kept decisions written)."""
    adv = _adversarial(tmp_path_factory.mktemp("kept"))
    settings = adversarial_settings(adv)
    assert not run_export(adv.ws, settings, "preference").violations
    assert not run_export(adv.ws, settings, "preference").violations
    assert adv.ws.kept_decisions_path("preference").is_file()
    return adv.ws.root, settings


def _adversarial(tmp: Path) -> Adversarial:
    """The adversarial workspace without its broken scored lines and its score of a run never
    collected: a partition that ends mid-line, or whose evidence is looked for elsewhere, keeps no
    checkpoint, so nothing of it would be replayed (the test_export_checkpoints cases cover those)."""
    adv = build_adversarial(tmp)
    for path in iter_partition_files(adv.ws.scored_dir):
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(line for line in lines if line.endswith(b"\n") and _whole(line)))
    return adv


def _whole(line: bytes) -> bool:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(row, dict) and "provenance" in row and row.get("evidence_run_id") != "ghost-run"


def _export(ws: Workspace, settings: Settings, **kw: Any) -> StageReport:
    return run_export(ws, settings, "preference", **kw)


def _kept(report: StageReport) -> int:
    note = next(n for n in report.notes if n.startswith("first pass:"))
    return int(note.split("; ")[1].split(" rows kept")[0])


def _state(ws: Workspace, report: StageReport) -> tuple[bytes, dict[str, str]]:
    """The export's files and its report as JSON (keys in the order counted: a receipt keeps it)."""
    files = {p.relative_to(ws.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted([*(ws.exports_dir / "preference").rglob("*.jsonl"), ws.quarantine_path("preference")])}
    dumped = report.model_dump(mode="json", exclude={"inputs", "outputs"})
    dumped["notes"] = [n for n in dumped["notes"] if not n.startswith(("first pass:", "firewall: "))]
    return orjson.dumps(dumped), files


def _add(*rows: SourceRow, first_line: int = 900) -> Callable[[Workspace], None]:
    """Rows appended to their evidence and scored partitions (collect and score append)."""

    def change(ws: Workspace) -> None:
        for n, row in enumerate(rows, start=first_line):
            ev = row.evidence(n)
            append_json(partition_path(ws.evidence_dir, ev.created_at, ev.source), [ev.to_json_dict()])
            append_json(partition_path(ws.scored_dir, ev.created_at, ev.source), [row.scored(ev).to_json_dict()])

    return change


def _drop_scored(run_id: str) -> Callable[[Workspace], None]:
    """A scored line taken out of its partition (the file rewritten: later lines move up)."""

    def change(ws: Workspace) -> None:
        for path in iter_partition_files(ws.scored_dir):
            lines = path.read_bytes().splitlines(keepends=True)
            kept = [line for line in lines if f'"evidence_run_id":"{run_id}"'.encode() not in line]
            if len(kept) != len(lines):
                path.write_bytes(b"".join(kept))
                return
        raise AssertionError(f"{run_id} not found")

    return change


def _twins(tmp_path: Path, exported: tuple[Path, Settings],
           change: Callable[[Workspace], None]) -> tuple[Workspace, Workspace]:
    root, _ = exported
    shutil.copytree(root, tmp_path / "a")
    shutil.copytree(root, tmp_path / "b")
    a, b = Workspace(tmp_path / "a"), Workspace(tmp_path / "b")
    b.kept_decisions_path("preference").unlink()
    change(a)
    change(b)
    return a, b


def _compare(a: Workspace, b: Workspace, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int, int]:
    """Export both; the same files and counters. Returns the rows a kept and the rows each decided
    again (`_final`: a row that went through pairing). A kept row's decision is taken in bulk,
    with the run of kept rows it is in: only the others are decided a row at a time."""
    calls_a = Calls(monkeypatch, preference_module, "_final")
    one_at_a_time = Calls(monkeypatch, NextDecisions, "decided")
    report_a = _export(a, settings)
    monkeypatch.undo()
    rows = sum(report_a.totals.model_dump().get(k, 0) for k in ("written", "deduped", "quarantined"))
    assert one_at_a_time.rows == rows - _kept(report_a)
    calls_b = Calls(monkeypatch, preference_module, "_final")
    report_b = _export(b, settings)
    monkeypatch.undo()
    assert _state(a, report_a) == _state(b, report_b)
    return _kept(report_a), calls_a.rows, calls_b.rows


CHANGES: dict[str, Callable[[Workspace], None]] = {
    "an unrelated task appears": _add(_row("new-a", "task:new", A, "A new accepted answer.", minutes=3),
                                      _row("new-r", "task:new", R, "A new rejected answer.", minutes=4)),
    "a third task answers the cross-source question": _add(
        _row("obs-util-2", "audit2:src/util.py", R, "Critical: the slicer in src/util.py is off by two.",
                  source="audits", role=ModelRole.REVIEWER, source_files=["src/util.py"], instruction=FIX, minutes=6)),
    "a task that shares a question gains a row": _add(
        _row("sr-util-2", "review:src/util.py", R, review_text("src/util.py", "Claims the slicer is fine"),
                  source_files=["src/util.py"], instruction=FIX, minutes=7)),
    "the capped task gains an accepted row": _add(
        _row("sr-hot-a9", "review:src/store.py", A, review_text("src/store.py", "Accepted finding 9"),
                  source_files=["src/store.py"], minutes=8)),
    # (late in their partition: a removed line moves every later line, whose rows are then read again)
    "a row whose cross-source pair shipped is removed": _drop_scored("sr-util"),
    "a row of a task without pairs is removed": _drop_scored("sr-other"),
    "a cross-source row is removed": _drop_scored("obs-util"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_kept_decisions_give_what_pairing_every_row_gives(tmp_path: Path, exported: tuple[Path, Settings],
                                                          change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, settings = exported
    a, b = _twins(tmp_path, exported, CHANGES[change])
    kept, redone_a, redone_b = _compare(a, b, settings, monkeypatch)
    assert kept > 0 and redone_a < redone_b  # the clean tasks' rows were not paired again
    _compare(a, b, settings, monkeypatch)  # and again, from the decisions the first export kept


TEMPLATE = "Review the change and report what is wrong with it."  # a reviewer stream's one prompt


@pytest.fixture(scope="module")
def templated(tmp_path_factory: pytest.TempPathFactory, exported: tuple[Path, Settings]) -> tuple[Path, Settings]:
    """The exported workspace plus three tasks whose reviews, one accepted and one rejected each,
    all answer TEMPLATE and come from one source (a same-task pair each, no cross-source pair);
    exported twice, so every task has settled."""
    root, settings = exported
    base = tmp_path_factory.mktemp("templated") / "ws"
    shutil.copytree(root, base)
    ws = Workspace(base)
    rows = [_row(f"tpl-{k}-{side}", f"change:{k}", cat, f"{word} review {k}: {why}", instruction=TEMPLATE,
                 minutes=20 + 2 * k + (side == "r"))
            for k in range(3)
            for side, cat, word, why in (("a", A, "Accepted", "the loop bound is off by one."),
                                         ("r", R, "Rejected", "claims a leak that is not there."))]
    _add(*rows, first_line=700)(ws)
    for _ in range(2):
        assert not _export(ws, settings).violations
    assert "pairs written: 0 same_task + 0 cross_source" in " ".join(_export(ws, settings).notes)
    return base, settings


def test_a_question_no_cross_source_pair_can_have_makes_no_other_task_dirty(
        tmp_path: Path, templated: tuple[Path, Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """A new task's review answers the template question too, from the same reviewer stream: its
    answers come from one source, so no cross-source pair was or is possible and the three
    tasks that asked it before keep their decisions (until this was known, the shared question
    made every task that asked it pair again: here 7 rows, at a million rows ~100,000)."""
    _, settings = templated
    change = _add(_row("tpl-3-a", "change:3", A, "Accepted review 3: the cache is never invalidated.",
                       instruction=TEMPLATE, minutes=40), first_line=800)
    a, b = _twins(tmp_path, templated, change)
    kept, redone_a, redone_b = _compare(a, b, settings, monkeypatch)
    assert redone_a == 1 and redone_b > redone_a and kept > 0
    _compare(a, b, settings, monkeypatch)


def test_a_second_source_answering_the_question_pairs_every_task_that_asks_it(
        tmp_path: Path, templated: tuple[Path, Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """A rejected audit answers the template question from another source and task: now a
    cross-source pair is possible, so every row that asks the question is paired again, and one
    is made."""
    _, settings = templated
    change = _add(_row("tpl-audit-r", "audit:change", R, "Rejected audit: the change breaks the build.",
                       source="audits", role=ModelRole.REVIEWER, instruction=TEMPLATE, minutes=41), first_line=801)
    a, b = _twins(tmp_path, templated, change)
    kept, redone_a, redone_b = _compare(a, b, settings, monkeypatch)
    assert redone_a == 7 and redone_b > redone_a and kept > 0
    assert "tpl-audit-r" not in _reasons(a)  # written: its cross-source pair
    _compare(a, b, settings, monkeypatch)


def test_a_question_that_could_pair_before_still_pairs_its_tasks_again(
        tmp_path: Path, templated: tuple[Path, Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """The other way round: the audit that made the question pairable is removed again. Its kept
    row still counts (the question could pair last run), so every task that asks it pairs again
    and the decisions are those of pairing every row."""
    _, settings = templated
    audit = _add(_row("tpl-audit-r", "audit:change", R, "Rejected audit: the change breaks the build.",
                      source="audits", role=ModelRole.REVIEWER, instruction=TEMPLATE, minutes=41), first_line=801)
    a, b = _twins(tmp_path, templated, audit)
    _compare(a, b, settings, monkeypatch)
    for ws in (a, b):
        _drop_scored("tpl-audit-r")(ws)
    b.kept_decisions_path("preference").unlink()
    kept, redone_a, redone_b = _compare(a, b, settings, monkeypatch)
    assert redone_a == 6 and redone_b > redone_a and kept > 0


def _pairable_by_walk(rows: list[tuple[int, int, int, int]]) -> set[int]:
    """(question, task, source, side) rows -> the questions with both sides, two tasks, two sources."""
    out = set()
    for q in {q for q, *_ in rows if q != NONE}:
        answers = [(t, s, side) for qq, t, s, side in rows if qq == q and side]
        if ({side for *_, side in answers} == {1, 2} and len({t for t, *_ in answers}) > 1
                and len({s for _, s, _ in answers}) > 1):
            out.add(q)
    return out


_ANSWERS = st.lists(st.tuples(st.integers(-1, 3), st.integers(0, 3), st.integers(0, 2), st.integers(0, 2)), max_size=30)


@settings(max_examples=200, deadline=None)
@given(_ANSWERS, _ANSWERS)
def test_pairable_questions_need_both_sides_two_tasks_and_two_sources(
        last_run: list[tuple[int, int, int, int]], this_run: list[tuple[int, int, int, int]]) -> None:
    """Last run's rows (the kept arrays: codes) and this run's answers (source and category names)
    count together; only accepted and rejected answers count at all."""
    from distill.export.kept_decisions import KeptDecisions, pairable_questions

    names = ["partially_accepted", "accepted", "rejected"]  # side 0, 1, 2: the kept category codes
    sources = ["s0", "s1"]  # kept codes 0 and 1; this run's source 2 is a name the kept file never saw

    def arrays(rows: list[tuple[int, int, int, int]]) -> dict[str, np.ndarray]:
        return {"question": np.array([q for q, *_ in rows], dtype=np.int32),
                "task": np.array([t for _, t, _, _ in rows], dtype=np.int32),
                "source": np.array([min(s, 1) for _, _, s, _ in rows], dtype=np.int32),
                "category": np.array([side for *_, side in rows], dtype=np.int32)}

    kept = KeptDecisions(parts={}, rows=arrays(last_run), passed=np.zeros(len(last_run), dtype="S16"),
                         tasks=np.zeros(0, dtype="S16"), prompts=np.zeros(0, dtype="S16"), sources=sources,
                         categories=names, reasons=[], quarantine=Path("/nonexistent"))
    answers = [(q, t, f"s{s}", names[side]) for q, t, s, side in this_run if q != NONE]
    got = pairable_questions(kept, answers, question_count=4)
    walked = [(q, t, min(s, 1), {0: 0, 1: 1, 2: 2}[side]) for q, t, s, side in last_run]
    walked += [(q, t, s, side) for q, t, s, side in this_run if q != NONE]
    assert set(np.flatnonzero(got).tolist()) == _pairable_by_walk(walked)


LOCKS = "Review src/store.py for missing locks."  # a second question inside one task


def _second_group(task: str, file: str) -> Callable[[Workspace], None]:
    """An accepted and a rejected answer to another instruction, inside an existing task."""
    return _add(_row(f"{task}-locks-a", task, A, review_text(file, "The writer takes no lock"), source_files=[file],
                     instruction=LOCKS, minutes=8),
                _row(f"{task}-locks-r", task, R, review_text(file, "Claims the reader deadlocks"), source_files=[file],
                     instruction=LOCKS, minutes=9))


def test_a_capped_task_pairs_again_only_the_group_a_change_touched(tmp_path: Path, exported: tuple[Path, Settings],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """review:src/store.py already holds its cap of pairs, so no group of it makes a pair and each
    is decided by its own rows: a new group's two rows are paired (and refused with the cap's
    reason), the task's seven other rows keep their decisions."""
    _, settings = exported
    a, b = _twins(tmp_path, exported, _second_group("review:src/store.py", "src/store.py"))
    kept, redone_a, redone_b = _compare(a, b, settings, monkeypatch)
    assert redone_a == 2 and redone_b > redone_a and kept > 0
    assert _reasons(a)["review:src/store.py-locks-a"] == "invalid_preference_pairing"
    _compare(a, b, settings, monkeypatch)


STORE = "review:src/store.py"  # at its cap: 4 accepted x 3 rejected answers to one prompt, 5 pairs shipped


def _store_row(run_id: str, category: Category, finding: str, **kw: Any) -> SourceRow:
    return _row(run_id, STORE, category, review_text("src/store.py", finding), source_files=["src/store.py"], **kw)


def test_a_capped_group_that_gains_a_row_decides_only_that_row(tmp_path: Path, exported: tuple[Path, Settings],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """No run or text of the new row is on the other side of its group, and both sides held rows:
    every pair it is offered is refused for the cap, whatever their order, and no old row's
    first pair changes reason; the group's seven old rows keep their decisions."""
    _, settings = exported
    a, b = _twins(tmp_path, exported, CHANGES["the capped task gains an accepted row"])
    _, redone_a, redone_b = _compare(a, b, settings, monkeypatch)
    assert redone_a == 1 and redone_b > redone_a
    assert _reasons(a)["sr-hot-a9"] == "invalid_preference_pairing"
    _compare(a, b, settings, monkeypatch)


@pytest.mark.parametrize("row", [
    # its text is a rejected row's: that pair is refused as identical, wherever the grid puts it
    _store_row("sr-hot-a9", A, "Rejected finding 0", minutes=8),
    # another revision of an accepted row's run, rejected: a self-pair
    _store_row("sr-hot-a0", R, "On second thought, finding 0 is wrong", minutes=8, revision=1),
], ids=["identical text", "a revision of an old run"])
def test_a_capped_group_whose_new_row_shares_a_run_or_a_text_is_decided_whole(
        tmp_path: Path, exported: tuple[Path, Settings], row: SourceRow, monkeypatch: pytest.MonkeyPatch) -> None:
    _, settings = exported
    a, b = _twins(tmp_path, exported, _add(row))
    _, redone_a, _ = _compare(a, b, settings, monkeypatch)
    assert redone_a == 8  # the group's seven old rows and the new one
    _compare(a, b, settings, monkeypatch)


def test_a_capped_group_that_gains_its_first_row_on_a_side_is_decided_whole(
        tmp_path: Path, exported: tuple[Path, Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """An accepted answer alone in its group had no counterpart; a rejected one appended makes
    its first pair one the cap refuses: a new reason for the old row."""
    _, settings = exported
    alone = _store_row("sr-locks-a", A, "The writer takes no lock", instruction=LOCKS, minutes=8)
    a, b = _twins(tmp_path, exported, _add(alone))
    _compare(a, b, settings, monkeypatch)
    assert _errors(a)["sr-locks-a"].startswith("no counterpart")
    for ws in (a, b):
        _add(_store_row("sr-locks-r", R, "Claims the reader deadlocks", instruction=LOCKS, minutes=9),
             first_line=950)(ws)
    b.kept_decisions_path("preference").unlink()
    _, redone_a, _ = _compare(a, b, settings, monkeypatch)
    assert redone_a == 2 and "max_pairs_per_task" in _errors(a)["sr-locks-a"]


def test_a_task_under_its_cap_pairs_again_whole(tmp_path: Path, exported: tuple[Path, Settings],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """review:src/app.py holds fewer pairs than the cap, so its groups share what is left of it:
    a new group pairs the task's three other paired rows again too."""
    _, settings = exported
    a, b = _twins(tmp_path, exported, _second_group("review:src/app.py", "src/app.py"))
    kept, redone_a, redone_b = _compare(a, b, settings, monkeypatch)
    assert redone_a == 5 and redone_b > redone_a and kept > 0
    assert "review:src/app.py-locks-a" not in _reasons(a)  # written: a new pair
    _compare(a, b, settings, monkeypatch)


def test_a_dirty_task_s_rows_are_read_back_alone(tmp_path: Path, exported: tuple[Path, Settings],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows of a task a change touched are read back from their checkpoint entries one entry at
    a time (each entry's length is in the checkpoint): a partition's other entries, whose rows keep
    their decisions, are never parsed."""
    _, settings = exported
    a, b = _twins(tmp_path, exported, CHANGES["a task that shares a question gains a row"])
    whole, alone, settling = [], [], []
    real_parsed, real_json, real_settle = LazyEntries.parsed, LazyEntries.json, preference_module._Pass1.settle

    def parsed(self: LazyEntries) -> list[Any]:
        if settling and self._list is None:
            whole.append(len(self))
        return real_parsed(self)

    def one(self: LazyEntries, i: int) -> bytes:
        if settling:
            alone.append(i)
        return real_json(self, i)

    def settle(self: Any, *args: Any, **kw: Any) -> Any:
        settling.append(True)
        try:
            return real_settle(self, *args, **kw)
        finally:
            settling.clear()

    monkeypatch.setattr(LazyEntries, "parsed", parsed)
    monkeypatch.setattr(LazyEntries, "json", one)
    monkeypatch.setattr(preference_module._Pass1, "settle", settle)
    got_a = _export(a, settings)
    monkeypatch.undo()
    assert _state(a, got_a) == _state(b, _export(b, settings))
    assert alone and not whole and _kept(got_a) > 0


def test_a_removed_row_makes_its_task_pair_again(tmp_path: Path, exported: tuple[Path, Settings],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows before a removed last line are replayed where they were, yet their task lost a row:
    the accepted side of a pair whose rejected side is gone has no counterpart any more. (Not
    cross-source candidates, so no shared question makes the task dirty instead.)"""
    _, settings = exported
    pair = _add(_row("new-a", "task:new", A, "A new accepted answer.", role=ModelRole.APPLIER, minutes=3),
                _row("new-r", "task:new", R, "A new rejected answer.", role=ModelRole.APPLIER, minutes=4))
    a, b = _twins(tmp_path, exported, pair)
    _compare(a, b, settings, monkeypatch)
    assert "new-a" not in _reasons(a)  # written: the pair shipped
    for ws in (a, b):
        _drop_scored("new-r")(ws)  # the last line of its partition
    b.kept_decisions_path("preference").unlink()
    kept, redone, _ = _compare(a, b, settings, monkeypatch)
    assert kept > 0 and redone > 0 and _reasons(a)["new-a"] == "invalid_preference_pairing"


def test_after_an_export_that_made_pairs_nothing_unchanged_is_paired_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row a new pair used is `deduped` once that pair is in the export: its kept `written`
    says so without pairing its task again."""
    adv = _adversarial(tmp_path / "ws")
    settings = adversarial_settings(adv)
    first = _export(adv.ws, settings)
    assert "pairs written: 7 same_task + 1 cross_source" in " ".join(first.notes)
    a, b = _twins(tmp_path, (adv.ws.root, settings), lambda ws: None)
    kept, redone_a, redone_b = _compare(a, b, settings, monkeypatch)
    assert redone_a == 0 and redone_b > 0 and kept > 0


def _errors(ws: Workspace) -> dict[str, str]:
    return {row["record_id"]: row["errors"][0]
            for row in map(orjson.loads, ws.quarantine_path("preference").read_bytes().splitlines())}


def _reasons(ws: Workspace) -> dict[str, str]:
    return {row["record_id"]: row["reason"]
            for row in map(orjson.loads, ws.quarantine_path("preference").read_bytes().splitlines())}


def test_a_task_whose_pair_failed_the_schema_is_paired_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pair that fails the PreferenceSample schema before the task's cap is reached is refused
    with the cap's reason once the task's new pairs are in the export: such a task is not kept."""
    real = preference_module._build

    def failing(c: Any, r: Any, **kw: Any) -> Any:
        if r.key[0] == "sr-hot-r0":
            PreferenceSample.model_validate({})  # raises the schema's ValidationError
        return real(c, r, **kw)

    monkeypatch.setattr(preference_module, "_build", failing)
    adv = _adversarial(tmp_path / "ws")
    settings = adversarial_settings(adv)
    _export(adv.ws, settings)
    assert _reasons(adv.ws)["sr-hot-r0"] == "schema_violation"
    a, b = _twins(tmp_path, (adv.ws.root, settings), lambda ws: None)
    got_a, got_b = _export(a, settings), _export(b, settings)
    assert _state(a, got_a) == _state(b, got_b)
    assert _kept(got_a) > 0 and _reasons(a)["sr-hot-r0"] == "invalid_preference_pairing"  # the cap's, now


def _edit_quarantine(ws: Workspace) -> None:
    path = ws.quarantine_path("preference")
    path.write_bytes(path.read_bytes().replace(b"self_pairing", b"self_pairinG", 1))


def _junk_decisions(ws: Workspace) -> None:
    path = ws.kept_decisions_path("preference")
    if path.exists():
        path.write_bytes(path.read_bytes()[:200])


def _export_edited(ws: Workspace) -> None:
    path = ws.preference_path
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[1:]))


@pytest.mark.parametrize("change", [_edit_quarantine, _junk_decisions, _export_edited])
def test_a_kept_file_that_does_not_check_out_is_not_used(tmp_path: Path, exported: tuple[Path, Settings],
                                                          change: Callable[[Workspace], None],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _, settings = exported
    a, b = _twins(tmp_path, exported, change)
    kept, _, _ = _compare(a, b, settings, monkeypatch)
    assert kept == 0


def test_decisions_of_another_run_than_the_checkpoint_s_are_not_used(tmp_path: Path, exported: tuple[Path, Settings],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept decisions are tied to the checkpoint saved with them: a later run's checkpoint with an
    earlier run's decisions (a run that stopped between the two saves) pairs every task."""
    _, settings = exported
    a, b = _twins(tmp_path, exported, _add(_row("new-a", "task:new", A, "A new answer.", minutes=3)))
    earlier = a.kept_decisions_path("preference").read_bytes()
    _compare(a, b, settings, monkeypatch)
    a.kept_decisions_path("preference").write_bytes(earlier)
    b.kept_decisions_path("preference").unlink()
    kept, _, _ = _compare(a, b, settings, monkeypatch)
    assert kept == 0


def test_a_dry_run_uses_kept_decisions_and_writes_none(tmp_path: Path, exported: tuple[Path, Settings]) -> None:
    _, settings = exported
    a, b = _twins(tmp_path, exported, _add(_row("new-a", "task:new", A, "A new answer.", minutes=3)))
    before = a.kept_decisions_path("preference").read_bytes()
    dry_a, dry_b = _export(a, settings, dry_run=True), _export(b, settings, dry_run=True)
    assert _kept(dry_a) > 0 and _kept(dry_b) == 0
    assert _state(a, dry_a)[0] == _state(b, dry_b)[0]
    assert a.kept_decisions_path("preference").read_bytes() == before
    assert not b.kept_decisions_path("preference").exists()


def test_a_rebuild_pairs_every_task_and_the_next_run_too(tmp_path: Path, exported: tuple[Path, Settings],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _, settings = exported
    a, b = _twins(tmp_path, exported, lambda ws: None)
    rebuilt = _export(a, settings, rebuild=True)
    assert _kept(rebuilt) == 0 and not a.kept_decisions_path("preference").exists()
    _export(b, settings, rebuild=True)
    _compare(a, b, settings, monkeypatch)


def test_force_deletes_the_kept_decisions() -> None:
    from distill.export.stage import ExportStage
    from distill.firewall import ExportKind

    ws = Workspace(Path("/nonexistent"))
    assert ws.kept_decisions_path("preference") in ExportStage(ExportKind.PREFERENCE).caches(ws)


def _closure(rows: list[tuple[int, int, bool]], capped: set[int], seed_groups: set[tuple[int, int]],
             seed_tasks: set[int], seed_questions: set[int], pairable: set[int], alone: set[int]) -> set[int]:
    """The dirty rows by a plain graph walk over (task, prompt, asks) rows; only a `pairable`
    question joins the rows that ask it; a row in `alone` is dirty without its group until a dirty
    question reaches it (its own included): then its group is, as a group a new row's question
    reaches is paired whole."""
    rows = [(t, p, asks and p in pairable) for t, p, asks in rows]
    groups = {g for g in seed_groups if g[0] != NONE}
    whole = (set(seed_tasks) | {t for t, _ in groups if t not in capped}) - {NONE}
    asked = set(seed_questions) & pairable
    dirty = {i for i in alone if rows[i][0] != NONE}
    for i in dirty:
        t, p, asks = rows[i]
        if t not in capped:
            whole.add(t)
        if asks:
            asked.add(p)
    changed = True
    while changed:
        changed = False
        for i, (t, p, asks) in enumerate(rows):
            if t == NONE:
                continue
            if i in dirty:
                if asks and p in asked and (t, p) not in groups:  # an `alone` row a question reaches
                    groups.add((t, p))
                    changed = True
                continue
            if (t, p) in groups or t in whole or (asks and p in asked):
                dirty.add(i)
                groups.add((t, p))
                if t not in capped:
                    whole.add(t)
                if asks:
                    asked.add(p)
                changed = True
    return dirty


_ROWS = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 5), st.booleans()), max_size=40).map(
    lambda rows: [(NONE, NONE, False) if t == 7 else (t, p, a) for t, p, a in rows])  # task 7: refused early


@settings(max_examples=300, deadline=None)
@given(_ROWS, st.sets(st.integers(0, 6), max_size=7), st.sets(st.tuples(st.integers(-1, 6), st.integers(0, 5)), max_size=4),
       st.sets(st.integers(-1, 6), max_size=2), st.sets(st.integers(-1, 5), max_size=3),
       st.none() | st.sets(st.integers(0, 5)), st.sets(st.integers(0, 39), max_size=4))
# a row decided alone that asks its own pairable question: its group is paired whole
@example(rows=[(0, 0, True), (0, 0, False)], capped={0}, seed_groups=set(), seed_tasks=set(), seed_questions=set(),
         pairable=None, alone={0})
def test_dirty_rows_are_the_closure_over_groups_capped_tasks_and_questions(
        rows: list[tuple[int, int, bool]], capped: set[int], seed_groups: set[tuple[int, int]], seed_tasks: set[int],
        seed_questions: set[int], pairable: set[int] | None, alone: set[int]) -> None:
    alone = {i for i in alone if i < len(rows)}
    tasks = np.array([t for t, _, _ in rows], dtype=np.int32)
    prompts = np.array([p for _, p, _ in rows], dtype=np.int32)
    questions = np.array([p if a else NONE for _, p, a in rows], dtype=np.int32)
    ordered = sorted(seed_groups)
    mask = dirty_rows(tasks, prompts, questions, capped=np.array([t in capped for t in range(7)]), prompt_count=6,
                      seed_groups=(np.array([t for t, _ in ordered], dtype=np.int32),
                                   np.array([p for _, p in ordered], dtype=np.int32)),
                      seed_tasks=np.array(sorted(seed_tasks), dtype=np.int32),
                      seed_questions=np.array(sorted(seed_questions), dtype=np.int32),
                      pairable=None if pairable is None else np.array([p in pairable for p in range(6)]),
                      seed_rows=np.array([i in alone for i in range(len(rows))], dtype=bool))
    assert set(np.flatnonzero(mask).tolist()) == _closure(rows, capped, seed_groups, seed_tasks, seed_questions,
                                                          set(range(6)) if pairable is None else pairable, alone)


def test_codes_keep_digests_that_end_in_zero_bytes() -> None:
    """numpy drops an S16 value's trailing zero bytes in .tolist(): a table read back must not."""
    digests = np.array([b"\x01" + bytes(15), b"\x02" * 15 + b"\x00"], dtype="S16")
    codes = Codes(digests)
    assert len(codes) == 2 and codes.digests().tobytes() == digests.tobytes()
    assert orjson.dumps(codes.code("a task")) == b"2"  # a new string gets the next code

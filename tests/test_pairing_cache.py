"""The preference export's per-task pairing cache (distill.export.pairing_cache): a run that takes
tasks from it gives the files and counters of a pairing from scratch, whatever changed.

The adversarial workspace has what pairing decides differently: a task past the pair cap, self and
identical pairs, secret and path refusals, cross-source pairs. Each step runs the export on two
copies of one workspace, the second without the cache."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from distill.export.pairing_cache import after_append
from distill.export.run import run_export
from distill.records import Category
from distill.records.stage import StageReport
from distill.workspace import Workspace
from tests.export_helpers import Row, adversarial_settings, build_adversarial, review_text, write_rows

WORK_NOTES = ("first pass:", "firewall: ", "pairing: ")


def _state(ws: Workspace, report: StageReport) -> tuple[dict[str, Any], dict[str, str]]:
    files = {p.relative_to(ws.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted([*(ws.exports_dir / "preference").rglob("*.jsonl"), ws.quarantine_path("preference")])}
    dumped = report.model_dump(exclude={"inputs", "outputs"})
    dumped["notes"] = [n for n in dumped["notes"] if not n.startswith(WORK_NOTES)]
    return dumped, files


def _reused(report: StageReport) -> tuple[int, int]:
    note = next(n for n in report.notes if n.startswith("pairing: "))
    found = re.match(r"pairing: (\d+) of (\d+) tasks", note)
    assert found, note
    return int(found.group(1)), int(found.group(2))


def _export_both(a: Workspace, b: Workspace, settings: Any) -> tuple[int, int]:
    """Export both (b without its pairing cache); the same files and counters; a's reuse."""
    b.pairing_cache_path("preference").unlink(missing_ok=True)
    got_a = run_export(a, settings, "preference")
    got_b = run_export(b, settings, "preference")
    assert _state(a, got_a) == _state(b, got_b)
    assert not got_a.violations and got_a.balanced
    return _reused(got_a)


@pytest.fixture
def twins(tmp_path: Path) -> tuple[Workspace, Workspace, Any]:
    adv = build_adversarial(tmp_path / "adv")
    settings = adversarial_settings(adv)
    first = run_export(adv.ws, settings, "preference")
    assert not first.violations
    assert adv.ws.pairing_cache_path("preference").is_file()
    shutil.copytree(adv.ws.root, tmp_path / "b")
    return adv.ws, Workspace(tmp_path / "b"), settings


def test_every_task_is_taken_from_the_cache_on_a_run_with_nothing_new(twins: tuple[Workspace, Workspace, Any]) -> None:
    a, b, settings = twins
    reused, tasks = _export_both(a, b, settings)
    # the task past the cap is paired again once (its first run reached the cap), every other
    # task, including those that made pairs below the cap, comes from the cache
    assert tasks >= 5 and reused >= tasks - 2, (reused, tasks)
    reused, tasks = _export_both(a, b, settings)
    assert reused == tasks


def test_tasks_that_gained_rows_are_paired_again_and_agree_with_a_fresh_pairing(
        twins: tuple[Workspace, Workspace, Any]) -> None:
    a, b, settings = twins
    _export_both(a, b, settings)
    A, R = Category.ACCEPTED, Category.REJECTED
    new = [
        Row("sr-app-4", "review:src/app.py", "scrum_reviews", R, review_text("src/app.py", "A second wrong claim"),
            source_files=["src/app.py"], minutes=900),  # an uncapped task that paired before
        Row("sr-hot-a9", "review:src/store.py", "scrum_reviews", A, review_text("src/store.py", "Accepted finding 9"),
            source_files=["src/store.py"], minutes=901),  # the task at the cap
        Row("sr-new-a", "review:src/new.py", "scrum_reviews", A, review_text("src/util.py", "New accepted"),
            source_files=["src/util.py"], minutes=902),
        Row("sr-new-r", "review:src/new.py", "scrum_reviews", R, review_text("src/util.py", "New rejected"),
            source_files=["src/util.py"], minutes=903),
    ]
    for ws in (a, b):
        write_rows(ws, new)
    reused, tasks = _export_both(a, b, settings)
    assert 0 < reused <= tasks - 3, (reused, tasks)  # the two grown tasks and the new one paired
    reused, tasks = _export_both(a, b, settings)  # and then the fixpoint again
    assert reused >= tasks - 1


def test_a_damaged_or_foreign_cache_costs_a_pairing_not_a_different_result(
        twins: tuple[Workspace, Workspace, Any]) -> None:
    a, b, settings = twins
    path = a.pairing_cache_path("preference")
    lines = path.read_bytes().splitlines(keepends=True)
    damaged = [line.replace(b'"items":[[', b'"items":[[7,', 1) for line in lines[:-1]]  # no such item
    path.write_bytes(b"".join(damaged) + lines[-1])
    reused, _ = _export_both(a, b, settings)
    assert reused == 0
    path.write_bytes(b"".join(lines[:-1]) + b'{"version":1,"basis":"another"}\n')
    reused, _ = _export_both(a, b, settings)
    assert reused == 0


def test_a_dry_run_or_a_rebuild_writes_no_cache(twins: tuple[Workspace, Workspace, Any]) -> None:
    a, _, settings = twins
    path = a.pairing_cache_path("preference")
    before = path.read_bytes()
    run_export(a, settings, "preference", dry_run=True)
    assert path.read_bytes() == before


def test_after_append_turns_new_pairs_into_exported_ones() -> None:
    items = [["d", None, "", False], ["d", None, "", True], ["d", "invalid_preference_pairing", '{"q":1}', False],
             ["x", True, False, None, None], ["x", False, False, "self_pairing", "only counterpart"]]
    assert after_append(items) == [["d", None, "", True], ["d", None, "", True],
                                   ["d", "invalid_preference_pairing", '{"q":1}', False],
                                   ["x", False, True, None, None], ["x", False, False, "self_pairing", "only counterpart"]]

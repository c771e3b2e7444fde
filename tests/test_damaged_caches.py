"""A damaged cache costs the work it saved, never a wrong output or a failed stage.

Everything distill keeps at ROOT between runs (checkpoints, digests, folds and their line memos,
kept decisions, view states, the secret prefilter) is derived data it trusts on the next run. Each
file of a grown workspace is damaged in turn, five digits across it changed (what a bad disk
block or a hand edit can do, unseen by a parser), and `distill run` must give the exports and the counters of the
same run over the undamaged workspace. Before the caches were sealed (hashing.sealed), a flip in
the collect checkpoint changed a quarantine file with every counter the same, or failed collect
on a dedup key that was no longer base64; a flip in an export checkpoint's field name failed the
export stage with a KeyError.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from distill.config import load_settings
from distill.pipeline import execute_run
from distill.workspace import Workspace
from tests.fixtures_reliability import tree_bytes

pytestmark = pytest.mark.slow


def _run(root: Path) -> dict[str, Any]:
    """One `distill run` (no index): its stages' outcomes and counters, and the exports' bytes."""
    ws = Workspace.resolve(root)
    result = execute_run(ws, load_settings(root), include_index=False)
    stages = {s.stage: (s.status, s.passed, s.totals, s.by_source) for s in result.summary.stages}
    exports = {name: hashlib.sha256(data).hexdigest() for name, data in tree_bytes(ws.exports_dir).items()}
    return {"passed": result.summary.overall_passed, "stopped_by": result.summary.stopped_by,
            "stages": stages, "exports": exports}


@pytest.fixture(scope="module")
def grown(generated: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A workspace run once over the small streams, then given the grown ones (not run yet), and
    what the next run gives when nothing is damaged."""
    small, bigger = generated
    root = tmp_path_factory.mktemp("damaged") / "ws"
    shutil.copytree(small, root / "_kb")
    assert _run(root)["passed"]
    for src in bigger.glob("*.jsonl"):
        shutil.copyfile(src, root / "_kb" / src.name)
    reference = root.parent / "reference"
    shutil.copytree(root, reference)
    expected = _run(reference)
    assert expected["passed"]
    return root, expected


def _caches(root: Path) -> list[Path]:
    """Every file distill keeps at ROOT between runs (the lock files aside), and the files in its
    cache folders (the fold cache's line memos)."""
    found = []
    for entry in sorted(root.glob(".distill.*")):
        if entry.is_file() and not entry.name.startswith(".distill.lock"):
            found.append(entry)
        elif entry.is_dir():
            found.extend(sorted(p for p in entry.rglob("*") if p.is_file()))
    return found


def _damage(path: Path) -> None:
    """Five digits spread over the file each changed to the next (a count, an offset, a byte of a
    key or a hash one off, the file still the JSON or the shape it was: what a parser cannot see);
    where no digit follows, the byte's lowest bit. An empty file (the clock, whose time distill
    reads) gets a byte."""
    data = bytearray(path.read_bytes())
    if not data:
        path.write_bytes(b"x")
        return
    for k in range(1, 6):
        at = k * len(data) // 6
        digit = next((i for i in range(at, len(data)) if 0x30 <= data[i] <= 0x39), None)
        if digit is None:
            data[at] ^= 1
        else:
            data[digit] = 0x30 + (data[digit] - 0x30 + 1) % 10
    path.write_bytes(bytes(data))


def test_every_cache_damaged_in_turn_gives_the_run_it_would_have_been(
        grown: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    base, expected = grown
    names = [p.relative_to(base).as_posix() for p in _caches(base)]
    # the kinds this guards (a stage that stops keeping one would make this test weaker, not fail)
    for kept in (".distill.collect.json", ".distill.score.json", ".distill.export-rag.json",
                 ".distill.export-sft.json", ".distill.export-preference.json", ".distill.digests.json",
                 ".distill.folds.json", ".distill.decisions-preference.npz", ".distill.view-sft-trl.json"):
        assert kept in names, names
    assert any(n.startswith(".distill.folds.json.lines/") for n in names), names
    wrong = []
    for name in names:
        root = tmp_path / "ws"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(base, root)
        _damage(root / name)
        got = _run(root)
        if got != expected:
            outcome = {k: (expected[k], got[k]) for k in ("passed", "stopped_by") if got[k] != expected[k]}
            exports = sorted(f for f in expected["exports"].keys() | got["exports"].keys()
                             if got["exports"].get(f) != expected["exports"].get(f))
            stages = sorted(s for s in expected["stages"] if got["stages"].get(s) != expected["stages"][s])
            wrong.append(f"{name}: {outcome} exports differing: {exports} stages differing: {stages}")
    assert not wrong, "\n".join(wrong)

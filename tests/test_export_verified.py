"""Incremental verification of an export (distill.export.verified): after appends, edits, re-scores
and a damaged cache, verifying with the cache finds exactly what verifying the whole file finds,
and after a clean verification it reads only what was appended."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import distill.export.verify as verify_module
from distill.config import Settings
from distill.export.verified import cache_path
from distill.export.verify import native_path, verify_export
from distill.firewall import ExportKind
from distill.workspace import Workspace, iter_partition_files
from tests.export_helpers import sample_scored


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The sample workspace collected, scored and exported (every kind): a clean verification each."""
    return sample_scored(tmp_path_factory.mktemp("verified") / "ws", *(kind.value for kind in ExportKind))


@pytest.fixture()
def ws(exported: Workspace, tmp_path: Path) -> Workspace:
    """A private copy: a test may damage it."""
    root = tmp_path / "ws"
    shutil.copytree(exported.root, root)
    return Workspace.resolve(root)


def _messages(found: list[Any]) -> list[str]:
    return [v.message() for v in found]


def _full(ws: Workspace, kind: ExportKind, **kw: Any) -> list[str]:
    """What verifying the whole file finds (the cache set aside, then put back)."""
    store = cache_path(ws, kind)
    kept = store.read_bytes() if store.exists() else None
    store.unlink(missing_ok=True)
    try:
        return _messages(verify_export(ws, kind, **kw))
    finally:
        if kept is not None:
            store.write_bytes(kept)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _spy_starts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    starts: list[int] = []
    real = verify_module.json_rows

    def spy(path: Path, *args: Any, **kw: Any) -> Any:
        starts.append(kw.get("start", 0))
        return real(path, *args, **kw)

    monkeypatch.setattr(verify_module, "json_rows", spy)
    return starts


@pytest.mark.parametrize("kind", list(ExportKind))
def test_after_a_clean_verification_only_appended_rows_are_read(ws: Workspace, kind: ExportKind,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = native_path(ws, kind)
    assert cache_path(ws, kind).exists() and path.stat().st_size > 0
    size = path.stat().st_size
    row = json.loads(_lines(path)[0])
    row["id"] = row["id"] + "-appended"
    with path.open("ab") as fh:
        fh.write(json.dumps(row).encode() + b"\n")
    cap = Settings().export.max_pairs_per_task  # what the export verified under
    starts = _spy_starts(monkeypatch)
    assert verify_export(ws, kind, max_pairs_per_task=cap) == []
    assert starts == [size]  # the verified prefix was not read again
    starts.clear()
    assert verify_export(ws, kind, max_pairs_per_task=cap) == []
    assert starts == [path.stat().st_size]


@pytest.mark.parametrize("kind", list(ExportKind))
def test_an_appended_copy_of_a_verified_row_is_a_repeated_id(ws: Workspace, kind: ExportKind) -> None:
    path = native_path(ws, kind)
    with path.open("ab") as fh:
        fh.write(_lines(path)[3])
    found = _messages(verify_export(ws, kind))
    assert found == _full(ws, kind)
    assert any("duplicate_id" in m and "appears 2 times" in m for m in found)


def _rescore(ws: Workspace, run_id: str, sig: str, category: str) -> None:
    """Give the last scored line of this evidence revision another category (a late verdict)."""
    for scored in iter_partition_files(ws.scored_dir):
        lines = _lines(scored)
        hit = [i for i, line in enumerate(lines) if json.loads(line).get("evidence_run_id") == run_id
               and json.loads(line)["provenance"]["sig_hash"] == sig]
        if hit:
            row = json.loads(lines[hit[-1]])
            row["category"] = category
            lines[hit[-1]] = json.dumps(row).encode() + b"\n"
            scored.write_bytes(b"".join(lines))
            return
    pytest.fail("the exported run has no scored line")


def _spy_rescored(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    asked: list[list[int]] = []
    real = verify_module.json_rows_at

    def spy(path: Path, numbers: Any, **kw: Any) -> Any:
        asked.append(sorted(numbers))
        return real(path, numbers, **kw)

    monkeypatch.setattr(verify_module, "json_rows_at", spy)
    return asked


def test_a_run_re_scored_as_rejected_is_caught_in_the_verified_prefix(ws: Workspace,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = native_path(ws, ExportKind.RAG)
    size = path.stat().st_size
    victim = json.loads(_lines(path)[5])
    _rescore(ws, victim["source_run_id"], victim["provenance"]["sig_hash"], "rejected")
    starts, asked = _spy_starts(monkeypatch), _spy_rescored(monkeypatch)
    found = _messages(verify_export(ws, ExportKind.RAG))
    # only the re-scored row is read again: the rest of the verified prefix is not parsed
    assert starts == [size] and asked == [[6]]
    assert found == _full(ws, ExportKind.RAG)
    assert len(found) == 1 and "firewall_rag_category" in found[0] and victim["id"] in found[0]
    # the cache is kept only after a clean verification: the next one finds the same
    assert _messages(verify_export(ws, ExportKind.RAG)) == found


def test_a_re_score_to_another_shippable_category_is_a_stale_label_judged_alone(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """accepted -> partially_accepted still may ship, but the row's label no longer says what its run
    is (until this was checked, such a re-score passed: the row kept "accepted")."""
    path = native_path(ws, ExportKind.RAG)
    rows = [json.loads(line) for line in _lines(path)]
    victim = next(r for r in rows if r["success_score"] == "accepted")
    line = rows.index(victim) + 1
    _rescore(ws, victim["source_run_id"], victim["provenance"]["sig_hash"], "partially_accepted")
    asked = _spy_rescored(monkeypatch)
    found = _messages(verify_export(ws, ExportKind.RAG))
    assert found == _full(ws, ExportKind.RAG) and asked == [[line]]
    assert len(found) == 1 and "firewall_rag_stale_label" in found[0] and victim["id"] in found[0]
    assert "labelled accepted but its run is scored partially_accepted now" in found[0]
    # an unclean verification is not remembered: scored back, the prefix is as it was verified
    asked.clear()
    _rescore(ws, victim["source_run_id"], victim["provenance"]["sig_hash"], "accepted")
    assert verify_export(ws, ExportKind.RAG) == [] and asked == [[]]


def test_a_clean_re_judgement_is_remembered(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefix row whose lookup answer changed and still passes is judged once; the clean
    verification keeps today's answer, so the next one judges nothing of the prefix again."""
    path = native_path(ws, ExportKind.RAG)
    rows = [json.loads(line) for line in _lines(path)]
    victim = next(r for r in rows if r["success_score"] == "accepted")
    line = rows.index(victim) + 1
    scored = next(p for p in iter_partition_files(ws.scored_dir)
                  if any(json.loads(x).get("evidence_run_id") == victim["source_run_id"] for x in _lines(p)))
    kept = scored.read_bytes()
    scored.write_bytes(b"".join(x for x in _lines(scored) if json.loads(x).get("evidence_run_id") != victim["source_run_id"]))
    asked = _spy_rescored(monkeypatch)
    assert verify_export(ws, ExportKind.RAG) == [] and asked == [[line]]  # no score: judged by its label
    asked.clear()
    scored.write_bytes(kept)  # scored again, as it was labelled
    assert verify_export(ws, ExportKind.RAG) == [] and asked == [[line]]
    asked.clear()
    assert verify_export(ws, ExportKind.RAG) == [] and asked == [[]]
    # and a later verdict against the same run is still caught
    _rescore(ws, victim["source_run_id"], victim["provenance"]["sig_hash"], "rejected")
    found = _messages(verify_export(ws, ExportKind.RAG))
    assert found == _full(ws, ExportKind.RAG) and len(found) == 1 and victim["id"] in found[0]


def test_a_re_scored_side_of_a_verified_pair_is_caught(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    path = native_path(ws, ExportKind.PREFERENCE)
    rows = [json.loads(line) for line in _lines(path)]
    assert len(rows) >= 3
    victim = rows[2]
    _rescore(ws, victim["chosen_run_id"], victim["chosen_provenance"]["sig_hash"], "rejected")
    # a new row appended after the prefix is read as well
    with path.open("ab") as fh:
        fh.write(json.dumps(dict(rows[0], id=rows[0]["id"] + "-again")).encode() + b"\n")
    asked = _spy_rescored(monkeypatch)
    cap = Settings().export.max_pairs_per_task
    found = _messages(verify_export(ws, ExportKind.PREFERENCE, max_pairs_per_task=cap))
    assert found == _full(ws, ExportKind.PREFERENCE, max_pairs_per_task=cap)
    assert any("chosen_category" in m and victim["id"] in m for m in found)
    assert asked and 3 in asked[0] and len(asked[0]) < len(rows)


def test_a_verified_row_edited_in_place_is_judged_again(ws: Workspace) -> None:
    path = native_path(ws, ExportKind.SFT)
    lines = _lines(path)
    row = json.loads(lines[2])
    row["quality_score"] = "rejected"
    lines[2] = json.dumps(row).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    found = _messages(verify_export(ws, ExportKind.SFT))
    assert found == _full(ws, ExportKind.SFT)
    assert any("line 3" in m for m in found)


def test_the_pair_cap_counts_verified_pairs(ws: Workspace) -> None:
    path = native_path(ws, ExportKind.PREFERENCE)
    rows = [json.loads(line) for line in _lines(path)]
    task = max({r["task_id"] for r in rows}, key=lambda t: sum(r["task_id"] == t for r in rows))
    have = sum(r["task_id"] == task for r in rows)
    assert verify_export(ws, ExportKind.PREFERENCE, max_pairs_per_task=have) == []
    extra = dict(next(r for r in rows if r["task_id"] == task), id="pref-one-too-many")
    with path.open("ab") as fh:
        fh.write(json.dumps(extra).encode() + b"\n")
    found = _messages(verify_export(ws, ExportKind.PREFERENCE, max_pairs_per_task=have))
    assert found == _full(ws, ExportKind.PREFERENCE, max_pairs_per_task=have)
    assert any(f"task {task} has {have + 1} pairs" in m for m in found)
    # a lower cap than the one the prefix was verified under: the whole file is judged again
    assert any("pairs_per_task" in m for m in _messages(verify_export(ws, ExportKind.PREFERENCE, max_pairs_per_task=1)))


@pytest.mark.parametrize("damage", [b"", b"not an npz", None])
def test_a_damaged_cache_costs_a_full_verification(ws: Workspace, damage: bytes | None) -> None:
    path = native_path(ws, ExportKind.RAG)
    with path.open("ab") as fh:
        fh.write(_lines(path)[0])
    store = cache_path(ws, ExportKind.RAG)
    if damage is None:
        store.unlink()
    else:
        store.write_bytes(damage)
    found = _messages(verify_export(ws, ExportKind.RAG))
    assert found == _full(ws, ExportKind.RAG)
    assert any("duplicate_id" in m for m in found)


def _answers(ws: Workspace) -> dict[tuple[str, str], str | None]:
    from distill.export.scored_index import scored_categories

    index = scored_categories(ws)
    asks = {(r["evidence_run_id"], r["provenance"]["sig_hash"]) for p in iter_partition_files(ws.scored_dir)
            for r in map(json.loads, _lines(p))}
    asks |= {(run, "0" * 64) for run, _ in asks}  # by run alone
    return {ask: index.category(*ask) for ask in sorted(asks)}


def test_the_scored_index_built_from_its_cache_answers_as_a_full_build(ws: Workspace) -> None:
    store = ws.scored_index_path
    assert store.exists()  # the exports built it
    files = iter_partition_files(ws.scored_dir)
    # append a re-score of a run already there, edit another partition in place, delete a third
    first = json.loads(_lines(files[0])[0])
    with files[0].open("ab") as fh:
        fh.write(json.dumps(dict(first, category="rejected")).encode() + b"\n")
    edited = files[1].read_bytes()
    files[1].write_bytes(edited.replace(b'"accepted"', b'"rejected"', 1) if b'"accepted"' in edited
                         else edited.replace(b'"rejected"', b'"accepted"', 1))
    files[2].unlink()
    cached = _answers(ws)
    store.unlink()
    assert cached == _answers(ws)
    assert cached[(first["evidence_run_id"], first["provenance"]["sig_hash"])] == "rejected"


def test_an_unchanged_scored_index_is_taken_frozen_from_its_cache(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The three exports of a run each ask for the index: once one has built it, the others take
    it as frozen instead of sorting every key again, and answer as a full build."""
    import distill.export.scored_index as scored_index

    sorts: list[int] = []
    real = scored_index.sort_digests

    def spy(keys: Any) -> Any:
        sorts.append(len(keys))
        return real(keys)

    monkeypatch.setattr(scored_index, "sort_digests", spy)
    built = _answers(ws)  # the exports saved it already: taken frozen
    assert sorts == []
    ws.scored_index_path.unlink()
    assert _answers(ws) == built and sorts  # a full build sorts, and saves the frozen index
    sorts.clear()
    assert _answers(ws) == built and sorts == []


@pytest.mark.parametrize("damage", ["unsorted", "code", "short"])
def test_a_frozen_scored_index_that_is_not_one_is_built_again(ws: Workspace, damage: str) -> None:
    import numpy as np

    built = _answers(ws)
    store = ws.scored_index_path
    with np.load(store, allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in saved.files}
    keys = arrays["run_keys"]
    assert len(keys) > 2
    if damage == "unsorted":
        arrays["run_keys"] = keys[::-1].copy()
    elif damage == "code":
        arrays["version_last"] = np.full_like(arrays["version_last"], 99)
    else:
        arrays["run_single"] = arrays["run_single"][:-1]
    with store.open("wb") as fh:
        np.savez(fh, **arrays)
    assert _answers(ws) == built


def test_a_rewritten_partition_parses_only_its_changed_lines(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Score rewrites a partition in place when a late verdict re-scores one of its runs: the index
    reads the file again but takes every line whose bytes it saw before from its cache, and
    parses only the line that changed (and answers as a full build)."""
    import distill.export.scored_index as scored_index

    files = iter_partition_files(ws.scored_dir)
    target = max(files, key=lambda p: len(_lines(p)))
    lines = _lines(target)
    assert len(lines) > 2
    row = json.loads(lines[1])
    row["category"] = "rejected" if row["category"] != "rejected" else "accepted"
    lines[1] = json.dumps(row).encode() + b"\n"
    target.write_bytes(b"".join(lines))
    parsed: list[bytes] = []
    real = scored_index._entry

    def spy(data: bytes) -> Any:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(scored_index, "_entry", spy)
    cached = _answers(ws)
    assert parsed == [lines[1].rstrip(b"\n")]
    assert cached[(row["evidence_run_id"], row["provenance"]["sig_hash"])] == row["category"]
    parsed.clear()
    ws.scored_index_path.unlink()
    assert cached == _answers(ws)
    assert len(parsed) == sum(len([ln for ln in _lines(p) if ln.strip()]) for p in files)

"""Score checkpoints: after collect appends, score parses and scores only the new evidence rows
and re-scores only the extraction rows whose task's parents changed; its outputs and counters are
exactly those of a full pass, whatever happened in between (each case changes one thing and
compares with a full pass)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

import distill.score as score_module
from distill.collect import run_collect
from distill.config import load_settings
from distill.hashing import sealed, unsealed
from distill.records.stage import StageReport
from distill.records import Category
from distill.score import run_score
from distill.score_rules import JoinKey, ParentIndex, ParentRun
from distill.workspace import Workspace, iter_partition_files
from tests.fixtures_checkpoints import ROWS, Calls, flip_byte_after


def _score(ws: Workspace, **kwargs: Any) -> StageReport:
    return run_score(ws, load_settings(ws.root), **kwargs)


def _state(ws: Workspace, report: StageReport) -> tuple[dict[str, Any], dict[str, str]]:
    files = {p.relative_to(ws.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted([*ws.scored_dir.rglob("*.jsonl"), ws.quarantine_path("score")]) if p.exists()}
    return report.model_dump(exclude={"inputs", "outputs"}), files


def _twins(tmp_path: Path, streams: Path, change: Callable[[Workspace], None]) -> tuple[Workspace, Workspace]:
    """Two workspaces collected and scored once, then changed alike; the second forgets its checkpoints."""
    a = Workspace(tmp_path / "a")
    shutil.copytree(streams, a.kb_dir)
    run_collect(a, load_settings(a.root))
    _score(a)
    assert a.score_checkpoint_path.is_file()
    shutil.copytree(a.root, tmp_path / "b")
    b = Workspace(tmp_path / "b")
    b.score_checkpoint_path.unlink()
    change(a)
    change(b)
    return a, b


def _grow(ws: Workspace, grown: Path) -> None:
    for src in grown.glob("*.jsonl"):
        shutil.copyfile(src, ws.kb_dir / src.name)
    run_collect(ws, load_settings(ws.root))


def _evidence(ws: Workspace) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, orjson.loads(line)) for path in iter_partition_files(ws.evidence_dir)
            for line in path.read_bytes().splitlines() if line.strip()]


def _add_parent_before_a_child(ws: Workspace) -> str:
    """A new verdict-bearing run of a task that has extraction rows, created just before one of
    them: that row must now join it. Returns the child's run id."""
    rows = _evidence(ws)
    parents = [(p, r) for p, r in rows if r["score_class"] != "C"]
    for _, child in (x for x in rows if x[1]["score_class"] == "C" and not x[1].get("parent_run_id")):
        at = datetime.fromisoformat(child["created_at"])
        for path, parent in parents:
            if parent["task_id"] == child["task_id"] and datetime.fromisoformat(parent["created_at"]) < at - timedelta(seconds=2):
                twin = {**parent, "run_id": parent["run_id"] + "-again",
                        "created_at": (at - timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
                        "provenance": {**parent["provenance"], "sig_hash": "e" * 64}}
                with open(path, "ab") as fh:
                    fh.write(orjson.dumps(twin) + b"\n")
                return str(child["run_id"])
    raise AssertionError("the generated data has no extraction row with an earlier parent")


def test_new_rows_are_scored_alone_and_children_of_new_parents_again(
    tmp_path: Path, generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    small, grown = generated
    children: list[str] = []

    def change(ws: Workspace) -> None:
        _grow(ws, grown)
        children.append(_add_parent_before_a_child(ws))
        bad = iter_partition_files(ws.evidence_dir)[0]
        with open(bad, "ab") as fh:  # a line that is not evidence, then a torn tail
            fh.write(b'{"not": "evidence"}\n{"schema_version": 1, "run_id": "torn')

    a, b = _twins(tmp_path, small, change)
    assert children[0] == children[1]
    scored = Calls(monkeypatch, score_module, "score_one")
    resumed = _score(a)
    assert 0 < scored.rows < ROWS // 5  # the appended rows and the re-joined children, not the rest
    scored.rows = 0
    full = _score(b, checkpoints=False)
    assert scored.rows > ROWS * 0.9
    assert _state(a, resumed) == _state(b, full)
    joined = [orjson.loads(line) for p in iter_partition_files(a.scored_dir) for line in p.read_bytes().splitlines()]
    child = next(r for r in joined if r["evidence_run_id"] == children[0])
    assert child["joined_parent_run_id"].endswith("-again")
    assert {"schema_violation", "torn_line"} <= set(resumed.totals.by_reason)

    # the torn line is completed: still the same as a full pass, and nothing is scored twice
    for ws in (a, b):
        with open(iter_partition_files(ws.evidence_dir)[0], "ab") as fh:
            fh.write(b'"}\n')
    scored.rows = 0
    assert _state(a, _score(a)) == _state(b, _score(b, checkpoints=False))


def _late_parent(ws: Workspace) -> tuple[str, set[str]]:
    """A new verdict-bearing run of a task, dated so that it becomes the parent some but not all
    of the task's extraction rows join (by the join rule, on the scored categories). Returns the
    task and the run ids of its extraction rows."""
    rows = _evidence(ws)
    category = {r["evidence_run_id"]: r["category"] for p in iter_partition_files(ws.scored_dir)
                for r in map(orjson.loads, p.read_bytes().splitlines())}
    at = lambda r: datetime.fromisoformat(r["created_at"])  # noqa: E731
    tasks: dict[str, tuple[list[tuple[Path, dict[str, Any]]], list[dict[str, Any]]]] = {}
    for path, r in rows:
        parents, children = tasks.setdefault(r["task_id"], ([], []))
        if r["score_class"] == "C":
            children.append(r)
        elif category.get(r["run_id"]) not in (None, "needs_human_review"):
            parents.append((path, r))
    for task, (parents, children) in tasks.items():
        free = sorted((c for c in children if not c.get("parent_run_id")), key=at)
        if len(free) < 3 or not parents:
            continue
        old = [ParentRun(r["run_id"], task, Category(category[r["run_id"]]), at(r)) for _, r in parents]
        path, model = parents[0]
        when = at(free[-1]) - timedelta(milliseconds=1)
        late = ParentRun(model["run_id"] + "-late", task, old[0].category, when)
        keys = [JoinKey(task, None, at(c)) for c in free]
        moved = sum(ParentIndex(old).join(k) != ParentIndex([*old, late]).join(k) for k in keys)
        if 0 < moved < len(free):
            twin = {**model, "run_id": late.run_id, "created_at": when.isoformat().replace("+00:00", "Z"),
                    "provenance": {**model["provenance"], "sig_hash": "f" * 64}}
            with open(path, "ab") as fh:
                fh.write(orjson.dumps(twin) + b"\n")
            return task, {c["run_id"] for c in children}
    raise AssertionError("the generated data has no task whose rows a late parent splits")


def test_a_late_verdict_re_scores_only_the_rows_whose_join_it_changes(
    tmp_path: Path, generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's new parent is joined again from each of its extraction rows' checkpoint entries;
    only the rows it now passes a verdict to are parsed and scored again (before, every row of the
    task was), and the outputs stay those of a full pass."""
    small, _ = generated
    picked: list[tuple[str, set[str]]] = []
    a, b = _twins(tmp_path, small, lambda ws: picked.append(_late_parent(ws)))
    assert picked[0] == picked[1]
    _, children = picked[0]

    def lines(ws: Workspace) -> dict[str, bytes]:
        return {orjson.loads(line)["evidence_run_id"]: line for p in iter_partition_files(ws.scored_dir)
                for line in p.read_bytes().splitlines()}

    before = lines(a)
    scored = Calls(monkeypatch, score_module, "score_one")
    resumed = _score(a)
    after = lines(a)
    changed = {run for run in children if after[run] != before[run]}
    assert 0 < len(changed) < len(children)
    assert scored.rows == 1 + len(changed)  # the late parent itself, and the rows that now join it
    assert _state(a, resumed) == _state(b, _score(b, checkpoints=False))


@pytest.mark.slow
@pytest.mark.parametrize("change", ["evidence_edited", "scored_tampered", "scored_deleted", "setting_changed",
                                    "junk_checkpoint", "parent_category_unknown", "parent_date_not_iso",
                                    "line_digests_not_base64", "scored_sha256_not_a_string",
                                    "category_code_unknown"])
def test_a_checkpoint_that_no_longer_holds_means_a_full_pass(
    change: str, tmp_path: Path, generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    small, grown = generated
    edited: list[Path] = []

    def apply(ws: Workspace) -> None:
        _grow(ws, grown)
        first = iter_partition_files(ws.evidence_dir)[0]
        mirror = ws.scored_dir / first.relative_to(ws.evidence_dir)
        if change == "evidence_edited":  # same size, one byte inside the first row's text
            flip_byte_after(first, b'"text":"')
        elif change == "scored_tampered":  # the first scored row's category changed by hand
            head, _, rest = mirror.read_bytes().partition(b"\n")
            row = orjson.loads(head)
            row["category"] = "rejected" if row["category"] != "rejected" else "accepted"
            mirror.write_bytes(orjson.dumps(row) + b"\n" + rest)
        elif change == "scored_deleted":
            shutil.rmtree(ws.scored_dir)
        elif change == "setting_changed":
            (ws.root / "distill.toml").write_text("[score]\ngrounded_accept = 0.99\n")
        elif change == "junk_checkpoint" and ws.score_checkpoint_path.exists():
            ws.score_checkpoint_path.write_text('{"version": 1, "basis": 3}')
        elif change == "line_digests_not_base64" and ws.score_checkpoint_path.exists():
            # the scored lines' digests unreadable (the line as long): the mirror is read line by
            # line as before they were kept, and the outputs are a full pass's
            lines = ws.score_checkpoint_path.read_bytes().splitlines(keepends=True)
            at = next(k for k, line in enumerate(lines) if b'"line_digests":"' in line)
            data = bytearray(unsealed(lines[at]) or b"")
            cut = data.index(b'"line_digests":"') + len(b'"line_digests":"')
            data[cut] = ord("!")
            lines[at] = sealed(bytes(data))  # sealed as distill seals a line: the content is what is wrong
            ws.score_checkpoint_path.write_bytes(b"".join(lines))
        elif change.startswith("parent_") and ws.score_checkpoint_path.exists():
            # a parent the checkpoint keeps as an entry (a ParentRun is made of it only when a row of
            # its task is scored) that no run wrote: checked up front, that partition scored again
            lines = ws.score_checkpoint_path.read_bytes().splitlines(keepends=True)
            at = max(range(len(lines)), key=lambda k: lines[k].count(b'"],["'))  # the most parents
            head, _, body = (unsealed(lines[at]) or b"").partition(b"\t")
            entry = orjson.loads(body)["parents"][0]
            old = orjson.dumps(entry)
            if change == "parent_category_unknown":
                entry[2] = entry[2][:-1] + "x"
            else:
                entry[3] = entry[3].replace("-", "x", 1)
            new = orjson.dumps(entry)
            assert len(new) == len(old) and body.count(old) == 1  # the line as long: the header's offsets hold
            lines[at] = sealed(head + b"\t" + body.replace(old, new))  # a line distill could have written
            ws.score_checkpoint_path.write_bytes(b"".join(lines))
            edited.append(ws.evidence_dir / orjson.loads(head))
        elif change == "scored_sha256_not_a_string" and ws.score_checkpoint_path.exists():
            # pass 2's part of a line unreadable, pass 1's (the prefix, the parents) intact: pass 1
            # takes the parents, pass 2 scores that partition again from its start
            lines = ws.score_checkpoint_path.read_bytes().splitlines(keepends=True)
            at = max(range(len(lines)), key=lambda k: lines[k].count(b'"],["'))
            head, _, body = (unsealed(lines[at]) or b"").partition(b"\t")
            old = b'"scored_sha256":"' + orjson.loads(body)["scored_sha256"].encode() + b'"'
            new = b'"scored_sha256":' + b"9" * (len(old) - len(b'"scored_sha256":'))
            assert body.count(old) == 1
            lines[at] = sealed(head + b"\t" + body.replace(old, new))
            ws.score_checkpoint_path.write_bytes(b"".join(lines))
            edited.append(ws.evidence_dir / orjson.loads(head))

        elif change == "category_code_unknown" and ws.score_checkpoint_path.exists():
            # one scored line's category code not one of CATEGORY_CODES: that partition scored again
            lines = ws.score_checkpoint_path.read_bytes().splitlines(keepends=True)
            at = max(range(len(lines)), key=lambda k: lines[k].count(b'"],["'))
            head, _, body = (unsealed(lines[at]) or b"").partition(b"\t")
            old = b'"categories":"' + orjson.loads(body)["categories"].encode() + b'"'
            new = old[:-2] + b'z"'
            assert body.count(old) == 1
            lines[at] = sealed(head + b"\t" + body.replace(old, new))
            ws.score_checkpoint_path.write_bytes(b"".join(lines))
            edited.append(ws.evidence_dir / orjson.loads(head))

    a, b = _twins(tmp_path, small, apply)
    scored = Calls(monkeypatch, score_module, "score_one")
    resumed = _score(a)
    redone = scored.rows
    assert _state(a, resumed) == _state(b, _score(b, checkpoints=False))
    if change in ("evidence_edited", "scored_tampered"):
        first = iter_partition_files(a.evidence_dir)[0]
        assert redone >= sum(1 for line in first.read_bytes().splitlines() if line.strip())  # that partition again
        assert redone < ROWS
    elif change == "line_digests_not_base64":
        assert 0 < redone < ROWS // 10  # the appended rows alone: the checkpoint still held
    elif change.startswith("parent_") or change in ("scored_sha256_not_a_string", "category_code_unknown"):
        # against the same append without the edit: that partition's old rows are scored again too
        plain, _ = _twins(tmp_path / "plain", small, lambda ws: _grow(ws, grown))
        scored.rows = 0
        _score(plain)
        partition_rows = sum(1 for line in edited[0].read_bytes().splitlines() if line.strip())
        assert scored.rows < redone <= scored.rows + partition_rows < ROWS
    else:
        assert redone > ROWS * 0.9


def test_run_force_scores_everything_again(tmp_path: Path, generated: tuple[Path, Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.collect import CollectStage
    from distill.pipeline import execute_run
    from distill.score import ScoreStage

    small, grown = generated
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(small, ws.kb_dir)
    settings = load_settings(ws.root)
    stages = [CollectStage(), ScoreStage()]
    execute_run(ws, settings, include_index=False, stages=stages)
    for src in grown.glob("*.jsonl"):
        shutil.copyfile(src, ws.kb_dir / src.name)
    scored = Calls(monkeypatch, score_module, "score_one")
    execute_run(ws, settings, include_index=False, stages=stages)
    assert 0 < scored.rows < ROWS // 5
    scored.rows = 0
    execute_run(ws, settings, include_index=False, stages=stages, force=True)
    assert scored.rows > ROWS


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["none", "torn_tail", "line_dropped", "category_flipped", "emptied", "deleted"])
def test_a_partition_nothing_reached_is_hashed_not_read(
    damage: str, tmp_path: Path, generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late verdict alone: the partitions it does not reach are not read line by line (their
    mirror is hashed against the checkpoint), and one whose mirror was damaged since is read and
    written as a full pass would."""
    small, _ = generated
    victims: list[str] = []

    def change(ws: Workspace) -> None:
        sizes = {p: p.stat().st_size for p in iter_partition_files(ws.evidence_dir)}
        child = _add_parent_before_a_child(ws)
        task = next(r["task_id"] for _, r in _evidence(ws) if r["run_id"] == child)
        reached = {p for p, r in _evidence(ws) if r["task_id"] == task} | {
            p for p in sizes if p.stat().st_size != sizes[p]}
        victim = max((p for p in sizes if p not in reached), key=lambda p: sizes[p])
        victims.append(victim.relative_to(ws.evidence_dir).as_posix())
        mirror = ws.scored_dir / victim.relative_to(ws.evidence_dir)
        data = mirror.read_bytes()
        if damage == "torn_tail":
            mirror.write_bytes(data + b'{"evidence_run_id": "half')
        elif damage == "line_dropped":
            mirror.write_bytes(data.split(b"\n", 1)[1])
        elif damage == "category_flipped":
            head, _, rest = data.partition(b"\n")
            row = orjson.loads(head)
            row["category"] = "rejected" if row["category"] != "rejected" else "accepted"
            mirror.write_bytes(orjson.dumps(row) + b"\n" + rest)
        elif damage == "emptied":
            mirror.write_bytes(b"")
        elif damage == "deleted":
            mirror.unlink()

    a, b = _twins(tmp_path, small, change)
    assert victims[0] == victims[1]
    mirror_lines = sum(p.read_bytes().count(b"\n") for p in iter_partition_files(b.scored_dir))
    victim_lines = (a.evidence_dir / victims[0]).read_bytes().count(b"\n")
    lines_read = Calls(monkeypatch, score_module, "line_digest")
    resumed = _score(a)
    read = lines_read.rows
    assert _state(a, resumed) == _state(b, _score(b, checkpoints=False))
    if damage == "none":
        assert read < mirror_lines // 2
    else:
        assert read >= victim_lines  # the damaged mirror's partition was scored again


def test_partitions_left_untouched_keep_their_checkpoint_line_where_it_is(
    tmp_path: Path, generated: tuple[Path, Path]
) -> None:
    """A late verdict reaches a few partitions: only their checkpoints are written again (after the
    last header); the others' lines stay where they are, the file is not copied. A run that
    changes nothing adds a header and nothing else."""
    small, _ = generated
    a, b = _twins(tmp_path, small, lambda ws: _add_parent_before_a_child(ws) and None)
    before = a.score_checkpoint_path.read_bytes()
    resumed = _score(a)
    assert _state(a, resumed) == _state(b, _score(b, checkpoints=False))
    after = a.score_checkpoint_path.read_bytes()
    assert after.startswith(before) and 0 < len(after) - len(before) < len(before) // 2
    again = _score(a)
    assert _state(a, again) == _state(b, _score(b, checkpoints=False))
    last = a.score_checkpoint_path.read_bytes()
    assert last.startswith(after) and last.count(b"\n") == after.count(b"\n") + 1


def _mirrors(ws: Workspace) -> dict[str, bytes]:
    return {p.relative_to(ws.root).as_posix(): p.read_bytes() for p in iter_partition_files(ws.scored_dir)}


def _spy_appended(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The mirrors score appends to in place, in the order it opens them."""
    appended: list[Path] = []
    real = score_module._appended

    def spy(target: Path, *args: Any, **kwargs: Any) -> Any:
        appended.append(target)
        return real(target, *args, **kwargs)

    monkeypatch.setattr(score_module, "_appended", spy)
    return appended


def _grown_twins(tmp_path: Path, streams: tuple[Path, Path]
                 ) -> tuple[Workspace, Workspace, dict[Path, int], dict[str, bytes]]:
    """`_twins` after the append, with each mirror's inode and bytes before the next score."""
    small, grown = streams
    a, b = _twins(tmp_path, small, lambda ws: _grow(ws, grown))
    return a, b, {p: p.stat().st_ino for p in iter_partition_files(a.scored_dir)}, _mirrors(a)


def _grew(ws: Workspace, inodes: dict[Path, int], before: dict[str, bytes]) -> list[Path]:
    """The mirrors that were there before and whose bytes changed."""
    return [p for p in inodes if p.read_bytes() != before[p.relative_to(ws.root).as_posix()]]


def test_a_grown_partition_gets_its_new_lines_appended_in_place(
    tmp_path: Path, generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, inodes, before = _grown_twins(tmp_path, generated)
    appended = _spy_appended(monkeypatch)
    resumed = _score(a)
    assert _state(a, resumed) == _state(b, _score(b, checkpoints=False))
    grew = _grew(a, inodes, before)
    # the append reaches most old partitions; those where a new parent re-scores an old line are rewritten
    assert len(set(appended) & set(grew)) > len(grew) // 2
    for p in appended:
        assert p.stat().st_ino == inodes[p]  # the same file: its old lines were neither read nor copied
        assert p.read_bytes().startswith(before[p.relative_to(a.root).as_posix()])


def test_lines_a_stopped_run_appended_after_the_checkpoint_are_cut(
    tmp_path: Path, generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    small, grown = generated
    a, b = _twins(tmp_path, small, lambda ws: _grow(ws, grown))
    plain, _ = _twins(tmp_path / "plain", small, lambda ws: _grow(ws, grown))
    for mirror in iter_partition_files(a.scored_dir)[:3]:
        last = mirror.read_bytes().splitlines(keepends=True)[-1]
        with open(mirror, "ab") as fh:  # what a run killed while appending leaves: a whole line, then a torn one
            fh.write(last + last[: len(last) // 2])
    scored = Calls(monkeypatch, score_module, "score_one")
    resumed = _score(a)
    redone = scored.rows
    scored.rows = 0
    _score(plain)
    assert redone == scored.rows  # the same rows as after the append alone: the partitions were not read again
    assert _state(a, resumed) == _state(b, _score(b, checkpoints=False))  # counters too: the cut lines are not deduped


def test_an_error_while_appending_cuts_the_mirror_back(
    tmp_path: Path, generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    small, grown = generated
    a, b = _twins(tmp_path, small, lambda ws: _grow(ws, grown))
    plain, _ = _twins(tmp_path / "plain", small, lambda ws: _grow(ws, grown))
    scored = Calls(monkeypatch, score_module, "score_one")
    _score(plain)
    monkeypatch.undo()
    assert scored.rows > 8
    before = _mirrors(a)
    checkpoint = a.score_checkpoint_path.read_bytes()
    full = _score(b, checkpoints=False)
    after = _mirrors(b)
    real = score_module.score_one
    calls: list[int] = []
    def fails_late(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == scored.rows // 2:  # halfway through the rows the run after the append scores
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(score_module, "score_one", fails_late)
    appended = _spy_appended(monkeypatch)
    monkeypatch.setattr(score_module, "APPEND_HELD_BYTES", 1)  # every line reaches its file at once
    with pytest.raises(RuntimeError, match="disk full"):
        _score(a)
    assert appended, "the error must land while a partition is appended to"
    stopped = appended[-1].relative_to(a.root).as_posix()
    assert after[stopped] != before[stopped]
    now = _mirrors(a)
    assert now[stopped] == before[stopped]  # its first new lines were written, then cut off
    assert all(now[rel] in (before.get(rel), after.get(rel)) for rel in now)  # each partition old or new, never a mix
    assert a.score_checkpoint_path.read_bytes() == checkpoint
    monkeypatch.undo()
    # the files a full pass writes (the partitions the stopped run finished count their lines as deduped now)
    assert _state(a, _score(a))[1] == _state(b, full)[1]


def test_a_mirror_this_process_cannot_write_to_is_replaced_whole(
    tmp_path: Path, generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root may write any file, so the refusal is the one `os.access` gives a user whose mirror is read-only."""
    a, b, inodes, before = _grown_twins(tmp_path, generated)
    real_access = os.access
    monkeypatch.setattr(score_module.os, "access",
                        lambda path, mode: False if mode == os.W_OK and "scored-runs" in str(path) else real_access(path, mode))
    assert _state(a, _score(a)) == _state(b, _score(b, checkpoints=False))
    grew = _grew(a, inodes, before)
    assert grew and all(p.stat().st_ino != inodes[p] for p in grew)  # each written anew, none appended to

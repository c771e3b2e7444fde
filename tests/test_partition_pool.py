"""Items of one stage on every core (distill.partition_pool): results in order whatever process
made them, a child's failure or death is the stage's error, and score (partitions) and collect
(sources) on two processes write the bytes, checkpoints and counters of a one-process run (a
full run and one after appended rows); sources that share keys are read one by one."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from distill.collect import run_collect
from distill.config import Settings
from distill.errors import WorkerFailed
from distill.partition_pool import map_in_order, split_contiguous
from distill.score import run_score
from distill.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data" / "sample"))
import generate  # type: ignore[import-not-found]  # noqa: E402

ONE = Settings.model_validate({"run": {"jobs": 1, "parallel_min_input_mib": 0}})
TWO = Settings.model_validate({"run": {"jobs": 2, "parallel_min_input_mib": 0}})


def test_split_contiguous_covers_every_index_once_in_non_empty_groups() -> None:
    rng = random.Random(7)
    for _ in range(500):
        n = rng.randint(1, 40)
        weights = [rng.choice([0, 1, 5, 1000, rng.randint(0, 10_000)]) for _ in range(n)]
        groups = rng.randint(1, 6)
        ranges = split_contiguous(weights, groups)
        assert [i for r in ranges for i in r] == list(range(n))
        assert len(ranges) == min(groups, n)
        assert all(len(r) > 0 for r in ranges)
    # equal weights split evenly; one heavy partition gets a group to itself
    assert split_contiguous([10] * 8, 2) == [range(0, 4), range(4, 8)]
    assert split_contiguous([1000, 1, 1, 1], 2) == [range(0, 1), range(1, 4)]
    assert split_contiguous([], 3) == []


def test_results_come_back_in_partition_order_from_the_children() -> None:
    parent = os.getpid()
    out = list(map_in_order(lambda i: (i, os.getpid()), [1] * 9, 3, what="test"))
    assert [i for i, _ in out] == list(range(9))
    pids = [pid for _, pid in out]
    assert pids[:3] == [parent] * 3  # the first group here, the others in two other processes
    assert len(set(pids[3:6])) == len(set(pids[6:])) == 1
    assert len({pids[0], pids[3], pids[6]}) == 3


def test_one_process_does_everything_itself() -> None:
    assert {pid for pid in map_in_order(lambda i: os.getpid(), [1] * 4, 1, what="test")} == {os.getpid()}


def test_a_childs_exception_is_the_stages_error() -> None:
    def work(i: int) -> int:
        if i == 5:
            raise ValueError("row 12 is not JSON")
        return i

    got: list[int] = []
    with pytest.raises(WorkerFailed, match=r"test: a worker failed on partition 5: ValueError: row 12 is not JSON"):
        got.extend(map_in_order(work, [1] * 6, 2, what="test"))
    assert got == [0, 1, 2, 3, 4]  # what came before the failure, in order


def test_a_child_that_dies_is_the_stages_error() -> None:
    def work(i: int) -> int:
        if i == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return i

    with pytest.raises(WorkerFailed, match=r"a worker ended after [01] of its 3 partitions \(signal 9\)"):
        list(map_in_order(work, [1] * 6, 2, what="test"))


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _state(ws: Workspace) -> tuple[object, ...]:
    return (_tree(ws.scored_dir), ws.quarantine_path("score").read_bytes(), ws.score_checkpoint_path.read_bytes())


def _twins(tmp_path: Path) -> tuple[dict[str, Workspace], Path]:
    """Two workspaces ("one", "two") with the same 1,500 source rows, and a folder with those rows
    plus 300 more (write_scaled is prefix-stable) for an append."""
    small, grown = tmp_path / "small", tmp_path / "grown"
    generate.write_scaled(small, 1_500)
    generate.write_scaled(grown, 1_800)
    spaces = {}
    for name in ("one", "two"):
        ws = Workspace.resolve(tmp_path / name)
        ws.kb_dir.mkdir(parents=True)
        for f in small.glob("*.jsonl"):
            (ws.kb_dir / f.name).write_bytes(f.read_bytes())
        spaces[name] = ws
    return spaces, grown


def _append(spaces: dict[str, Workspace], grown: Path) -> None:
    for ws in spaces.values():
        for f in grown.glob("*.jsonl"):
            (ws.kb_dir / f.name).write_bytes(f.read_bytes())


def _dump(report: object) -> object:
    return report.model_dump(exclude={"started_at", "finished_at", "duration_s"})  # type: ignore[attr-defined]


def test_score_on_two_processes_writes_what_one_process_writes(tmp_path: Path) -> None:
    spaces, grown = _twins(tmp_path)
    for ws in spaces.values():
        run_collect(ws, ONE)
    assert len(list(spaces["one"].evidence_dir.rglob("*.jsonl"))) > 10  # enough partitions to split

    full = {name: run_score(ws, ONE if name == "one" else TWO) for name, ws in spaces.items()}
    assert _state(spaces["one"]) == _state(spaces["two"])
    assert _dump(full["one"]) == _dump(full["two"])

    _append(spaces, grown)  # an incremental run: resumed partitions
    for ws in spaces.values():
        run_collect(ws, ONE)
    more = {name: run_score(ws, ONE if name == "one" else TWO) for name, ws in spaces.items()}
    assert _state(spaces["one"]) == _state(spaces["two"])
    assert _dump(more["one"]) == _dump(more["two"])
    assert more["one"].totals.written > 0  # the appended rows were scored


def test_stopping_this_process_stops_and_reaps_the_children() -> None:
    import multiprocessing
    import time

    def work(i: int) -> int:
        if i == 0:
            raise KeyboardInterrupt  # Ctrl-C (or SIGTERM, a Terminated) while the children work
        time.sleep(60)
        return i

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        list(map_in_order(work, [1] * 6, 3, what="test"))
    assert time.monotonic() - started < 20
    assert multiprocessing.active_children() == []


def test_output_buffered_before_the_fork_is_printed_once(tmp_path: Path) -> None:
    import subprocess

    script = ("import sys; print('buffered', end=''); from distill.partition_pool import map_in_order; "
              "sys.exit(0 if list(map_in_order(lambda i: i, [1] * 4, 2, what='t')) == [0, 1, 2, 3] else 3)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout == "buffered"  # a pipe: block-buffered; a child that flushed its copy would repeat it


def test_without_a_scratch_directory_or_a_fork_the_work_runs_here(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import tempfile

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    with monkeypatch.context() as m:
        m.setattr(os, "fork", no_fork)
        assert list(map_in_order(lambda i: (i, os.getpid()), [1] * 5, 3, what="test")) == [
            (i, os.getpid()) for i in range(5)]

    def no_scratch(*args: object, **kwargs: object) -> object:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(tempfile, "TemporaryDirectory", no_scratch)
        assert list(map_in_order(lambda i: (i, os.getpid()), [1] * 5, 3, what="test")) == [
            (i, os.getpid()) for i in range(5)]


def test_a_childs_distill_error_is_raised_as_itself() -> None:
    from distill.errors import RowRejected, UsageError
    from distill.records import QuarantineReason

    def work(i: int) -> int:
        if i == 3:
            raise UsageError("evidence/2026/01/02/a.jsonl is not readable")
        return i

    with pytest.raises(UsageError, match=r"^evidence/2026/01/02/a.jsonl is not readable$") as caught:
        list(map_in_order(work, [1] * 4, 2, what="test"))
    assert caught.value.exit_code == 2

    def rejects(i: int) -> int:  # an error whose class cannot be rebuilt from its args travels as text
        if i == 3:
            raise RowRejected(QuarantineReason.SCHEMA_VIOLATION, "no run_id")
        return i

    with pytest.raises(WorkerFailed, match=r"partition 3: RowRejected: no run_id"):
        list(map_in_order(rejects, [1] * 4, 2, what="test"))


@pytest.mark.slow
def test_sigterm_while_score_runs_on_two_processes_stops_both_and_the_next_score_is_exact(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import time

    from tests.fixtures_reliability import DISTILL, REPO, cli_env, run_cli, tree_bytes
    from tests.test_run_signals import _alive, _children, _lock_is_free

    ws = Workspace.resolve(tmp_path / "ws")
    generate.write_scaled(ws.kb_dir, 20_000)
    assert run_cli([*DISTILL, "collect", "--root", str(ws.root)]).returncode == 0
    shutil.copytree(ws.root, tmp_path / "clean")
    pool = {"DISTILL_RUN__JOBS": "2", "DISTILL_RUN__PARALLEL_MIN_INPUT_MIB": "0"}
    log = tmp_path / "score.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*DISTILL, "score", "--root", str(ws.root)], cwd=REPO, env=cli_env(**pool),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    forked: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not forked and proc.poll() is None and time.monotonic() < deadline:
            forked = _children(proc.pid)
            time.sleep(0.02)
        assert forked, "score never forked a child for its partitions: " + log.read_text(errors="replace")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = log.read_text(errors="replace")
    assert code == 143, (code, text)
    assert "Traceback" not in text, text
    deadline = time.monotonic() + 10.0
    while [c for c in forked if _alive(c)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [c for c in forked if _alive(c)], "a partition worker outlived the command"
    assert not list(ws.root.rglob("*.tmp")), "temporary files left behind"
    assert _lock_is_free(ws.root)

    # the next score (on two processes) writes what an uninterrupted one-process score writes
    assert run_cli([*DISTILL, "score", "--root", str(ws.root)], **pool).returncode == 0
    clean = Workspace.resolve(tmp_path / "clean")
    assert run_cli([*DISTILL, "score", "--root", str(clean.root)], DISTILL_RUN__JOBS="1").returncode == 0
    assert tree_bytes(ws.scored_dir) == tree_bytes(clean.scored_dir)
    assert ws.quarantine_path("score").read_bytes() == clean.quarantine_path("score").read_bytes()
    assert ws.score_checkpoint_path.read_bytes() == clean.score_checkpoint_path.read_bytes()


@pytest.mark.slow
def test_a_killed_score_leaves_its_scratch_in_the_workspace_and_the_next_score_removes_it(tmp_path: Path) -> None:
    """The children's results go to ROOT/.distill-partitions-*.tmp, not the system's temporary
    folder: a SIGKILL runs no cleanup, and only a folder the workspace lock covers can be swept
    by the next command that takes the lock."""
    import subprocess
    import time

    from distill.workspace import SCRATCH_DIR
    from tests.fixtures_reliability import DISTILL, REPO, cli_env, run_cli

    ws = Workspace.resolve(tmp_path / "ws")
    generate.write_scaled(ws.kb_dir, 6_000)
    assert run_cli([*DISTILL, "collect", "--root", str(ws.root)]).returncode == 0
    pool = {"DISTILL_RUN__JOBS": "2", "DISTILL_RUN__PARALLEL_MIN_INPUT_MIB": "0"}
    proc = subprocess.Popen([*DISTILL, "score", "--root", str(ws.root)], cwd=REPO, env=cli_env(**pool),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    scratch: list[Path] = []
    try:
        deadline = time.monotonic() + 120
        while not scratch and proc.poll() is None and time.monotonic() < deadline:
            scratch = [p for p in ws.root.glob(".distill-partitions-*") if SCRATCH_DIR.fullmatch(p.name)]
            time.sleep(0.005)
        assert scratch, "score never made its scratch folder in the workspace"
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its forked children
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert scratch[0].is_dir(), "a SIGKILL runs no cleanup: the scratch folder should still be there"
    assert run_cli([*DISTILL, "score", "--root", str(ws.root)], **pool).returncode == 0
    assert not list(ws.root.glob(".distill-partitions-*"))


def _collect_state(ws: Workspace) -> tuple[object, ...]:
    return (_tree(ws.evidence_dir), ws.quarantine_path("collect").read_bytes(), ws.collect_checkpoint_path.read_bytes())


def test_collect_with_sources_side_by_side_writes_what_one_process_writes(tmp_path: Path) -> None:
    spaces, grown = _twins(tmp_path)
    full = {name: run_collect(ws, ONE if name == "one" else TWO) for name, ws in spaces.items()}
    assert _collect_state(spaces["one"]) == _collect_state(spaces["two"])
    assert _dump(full["one"]) == _dump(full["two"])
    assert full["one"].totals.quarantined > 0  # the bad rows (and their redacted excerpts) came along

    _append(spaces, grown)  # checkpoints resumed in the children
    more = {name: run_collect(ws, ONE if name == "one" else TWO) for name, ws in spaces.items()}
    assert _collect_state(spaces["one"]) == _collect_state(spaces["two"])
    assert _dump(more["one"]) == _dump(more["two"])
    assert more["one"].totals.written > 0 and more["one"].totals.deduped > 0
    assert not list(spaces["two"].root.glob(".distill-collect-*"))  # the scratch directory is gone


class _Replayed:
    """A source that yields given evidence records: two of them sharing records share keys."""

    def __init__(self, name: str, records: list[object]) -> None:
        self.name, self.records = name, records

    def inputs(self, ws: Workspace) -> list[Path]:
        return []

    def read(self, ws: Workspace, settings: Settings):  # type: ignore[no-untyped-def]
        yield from self.records


def test_sources_that_share_keys_are_read_one_by_one(tmp_path: Path) -> None:
    from distill.collect import iter_evidence

    donor = Workspace.resolve(tmp_path / "donor")
    generate.write_scaled(donor.kb_dir, 300)
    run_collect(donor, ONE)
    records = [ev for _, ev in iter_evidence(donor)]
    half = len(records) // 2
    # "b" repeats some of "a"'s records: read in order, "b"'s copies are duplicates
    sources = [_Replayed("a", records[:half]), _Replayed("b", records[half - 20:]), _Replayed("c", records[:5])]
    results = {}
    for name, settings in (("one", ONE), ("two", TWO)):
        ws = Workspace.resolve(tmp_path / name)
        ws.root.mkdir()
        results[name] = run_collect(ws, settings, sources=sources)
        results[name + "-tree"] = _tree(ws.evidence_dir)
    assert results["one-tree"] == results["two-tree"]
    assert results["two"].by_source["b"].deduped == 20 and results["two"].by_source["c"].deduped == 5
    assert _dump(results["one"]) == {**_dump(results["two"]), "notes": results["one"].notes}
    assert results["two"].notes[-1] == "sources share evidence keys: read one by one"

"""`distill run` with independent stages side by side in worker processes: the outputs, counters
and receipts of a one-process run, and a worker's failure (an exception, a killed process) is its
stage's failed receipt, never a hung or crashed run."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.config import Settings
from distill.pipeline import execute_run
from distill.records.stage import StageReport
from distill.workspace import Workspace
from tests.fixtures_pipeline import _FileStage, independent_stages, worker_stages
from tests.fixtures_reliability import SAMPLE_KB

ONE_BY_ONE = Settings.model_validate({"run": {"jobs": 1, "parallel_min_input_mib": 0}})


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _sample(root: Path) -> Workspace:
    ws = Workspace.resolve(root)
    ws.kb_dir.mkdir(parents=True)
    for f in sorted(SAMPLE_KB.glob("*.jsonl")):
        shutil.copyfile(f, ws.kb_dir / f.name)
    return ws


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [3, 2])  # 2: the third export runs in a worker that has done one already
def test_side_by_side_run_writes_the_bytes_and_counts_of_a_one_process_run(tmp_path: Path, jobs: int) -> None:
    serial, parallel = _sample(tmp_path / "serial"), _sample(tmp_path / "parallel")
    serial_events: list[tuple[str, str, str]] = []
    one = execute_run(serial, ONE_BY_ONE, include_index=False, on_event=lambda *e: serial_events.append(e))
    events: list[tuple[str, str, str]] = []
    side_by_side = Settings.model_validate({"run": {"jobs": jobs, "parallel_min_input_mib": 0}})
    many = execute_run(parallel, side_by_side, include_index=False, on_event=lambda *e: events.append(e))

    assert worker_stages(serial_events) == []  # jobs = 1: no stage pays for a worker process

    # the three exports side by side; the card (after all three) in the run's own process
    assert worker_stages(events) == ["export-preference", "export-rag", "export-sft"]
    assert one.exit_code == many.exit_code == 0
    assert _tree(serial.exports_dir) == _tree(parallel.exports_dir)
    assert _tree(serial.scored_dir) == _tree(parallel.scored_dir)
    assert [(s.stage, s.status, s.totals, s.by_source, s.output_categories, s.outputs_hash) for s in one.summary.stages] == [
        (s.stage, s.status, s.totals, s.by_source, s.output_categories, s.outputs_hash) for s in many.summary.stages]
    # the receipts a side-by-side run wrote let the next run skip everything
    again = execute_run(parallel, side_by_side, include_index=False)
    assert {s.status for s in again.summary.stages} == {"skipped"}


def _raises(ws: Workspace, settings: Settings) -> StageReport:
    raise RuntimeError("the stage broke")


def _dies(ws: Workspace, settings: Settings) -> StageReport:
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    raise AssertionError("unreachable")


def test_a_worker_that_raises_or_dies_fails_its_stage_only(mini: Workspace) -> None:
    broken = _FileStage("broken", _raises, ["_kb/in.jsonl"], [], ("collect",))
    killed = _FileStage("killed", _dies, ["_kb/in.jsonl"], [], ("collect",))
    events: list[tuple[str, str, str]] = []
    stages = independent_stages(broken, killed)
    result = execute_run(mini, Settings.model_validate({"run": {"jobs": 4, "parallel_min_input_mib": 0}}),
                         stages=stages, on_event=lambda *e: events.append(e))

    assert worker_stages(events) == ["broken", "killed", "lengths", "upper"]
    by_stage = {s.stage: s for s in result.summary.stages}
    assert [s.stage for s in result.summary.stages] == ["upper", "lengths", "broken", "killed"]  # run order
    assert by_stage["upper"].passed and by_stage["lengths"].passed
    assert by_stage["broken"].errors == ["stage_raised: RuntimeError: the stage broke"]
    assert not by_stage["killed"].passed and "WorkerDied" in (by_stage["killed"].error or "")
    assert "signal 9" in (by_stage["killed"].error or "")
    assert result.exit_code == 1 and result.summary.stopped_by is not None
    assert (mini.root / "out" / "upper.jsonl").exists() and (mini.root / "out" / "lengths.jsonl").exists()


def test_a_stage_stopped_by_a_full_disk_names_the_file_and_what_to_do(mini: Workspace) -> None:
    """Found with the evidence rebuild on a tmpfs: `stage_raised: OSError: [Errno 28] No space left on
    device: '...'` said neither that running again is safe nor what to do first."""
    import errno

    def full(ws: Workspace, settings: Settings) -> StageReport:
        raise OSError(errno.ENOSPC, "No space left on device", str(ws.root / "evidence" / "x.jsonl"))

    stage = _FileStage("full", full, ["_kb/in.jsonl"], [], ("collect",))
    result = execute_run(mini, Settings.model_validate({"run": {"jobs": 1}}), stages=independent_stages(stage))
    by_stage = {s.stage: s for s in result.summary.stages}
    assert by_stage["full"].errors == [f"stage_raised: OSError: cannot write {mini.root / 'evidence' / 'x.jsonl'}: "
                                       "No space left on device; free some space and run the command again"]


_BURNS_CPU = """
import resource, sys
from distill.config import Settings
from distill.pipeline import execute_run
from distill.workspace import Workspace
from tests.fixtures_pipeline import _FileStage, independent_stages
from tests.test_stage_workers import _burn

ws = Workspace.resolve(sys.argv[1])
stage = _FileStage("burn", _burn, ["_kb/in.jsonl"], [], ("collect",))
result = execute_run(ws, Settings.model_validate({"run": {"jobs": 3, "parallel_min_input_mib": 0}}),
                     stages=independent_stages(stage))
own = resource.getrusage(resource.RUSAGE_SELF)
print(own.ru_utime + own.ru_stime)  # this process's own CPU: the rest of its rusage is its children's
sys.exit(result.exit_code)
"""
BURN_CPU_S = 1.5


def _burn(ws: Workspace, settings: Settings) -> StageReport:
    start = time.process_time()
    while time.process_time() - start < BURN_CPU_S:
        pass
    return StageReport(stage="burn")


def test_a_run_s_worker_cpu_time_counts_as_the_run_s_own(mini: Workspace) -> None:
    """The benchmarks time `distill run` by its children's rusage: a stage worker's CPU must be in
    it (a worker the run does not wait for, such as one forked by a fork server nobody waits for,
    would make a run look cheaper than it is)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", _BURNS_CPU, str(mini.root)], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)

    assert done.returncode == 0, done.stderr[-2000:]
    run_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert run_cpu - float(done.stdout.split()[-1]) >= BURN_CPU_S  # the worker's burn is in the run's


def _writes_pid(name: str, ws: Workspace, settings: Settings) -> StageReport:
    out = ws.root / "out" / f"{name}.pid"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(str(os.getpid()))
    return StageReport(stage=name)


def _pid_stage(name: str) -> _FileStage:
    """A stage that writes the id of the process it ran in to out/<name>.pid."""
    from functools import partial

    return _FileStage(name, partial(_writes_pid, name), ["_kb/in.jsonl"], [], ("collect",))


def test_a_worker_that_finished_a_stage_takes_the_next(mini: Workspace) -> None:
    """With more stages ready than [run] jobs, a worker that has reported its stage is handed the
    next one instead of a new interpreter being started; every worker is ended by the end of the
    run (so its CPU time counts as the run's)."""
    import multiprocessing

    names = ["a", "b", "c", "d", "e"]
    events: list[tuple[str, str, str]] = []
    result = execute_run(mini, Settings.model_validate({"run": {"jobs": 2, "parallel_min_input_mib": 0}}),
                         stages=[_pid_stage(n) for n in names], on_event=lambda *e: events.append(e))

    assert result.exit_code == 0 and worker_stages(events) == names
    pids = {n: int((mini.root / "out" / f"{n}.pid").read_text()) for n in names}
    assert os.getpid() not in pids.values()
    assert len(set(pids.values())) == 2  # two interpreters for five stages
    assert multiprocessing.active_children() == []


def test_a_worker_killed_while_it_waits_is_replaced(mini: Workspace) -> None:
    from types import SimpleNamespace

    from distill.pipeline import _worker_for
    from distill.stage_workers import StageWorker

    settings = Settings.model_validate({"run": {"jobs": 2}})
    worker = StageWorker(_pid_stage("first"), mini, settings)
    (_, error), _ = worker.outcome()
    assert error is None and worker.reusable
    os.kill(worker._process.pid, signal.SIGKILL)
    worker._process.join()

    idle = [worker]
    other = _worker_for(_pid_stage("second"), idle, SimpleNamespace(ws=mini, settings=settings))  # type: ignore[arg-type]
    try:
        assert other is not worker and idle == []
        (report, error), _ = other.outcome()
        assert error is None and report.stage == "second"
        assert int((mini.root / "out" / "second.pid").read_text()) == other._process.pid
    finally:
        other.close()
    assert not other._process.is_alive() and other._process.exitcode == 0

"""`distill run --every` stops on SIGTERM, and on SIGINT where SIGINT is not ignored, within 5 s,
whether the signal lands during a stage or during the wait, and leaves no lock behind; in the
rounds where independent stages run side by side, no worker process outlives the run.

The child's signal dispositions are set explicitly (preexec_fn), so the test does not depend on
how pytest itself was started (a job started in the background of a script inherits SIGINT as
ignored). Every child is killed and reaped whatever happens, and its output goes to a file, so
nothing blocks on a pipe nobody reads.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from tests.fixtures_reliability import DISTILL, REPO, SAMPLE_KB, cli_env, jsonl_problems, run_cli, tree_bytes

STOP_WITHIN_S = 5.0
ROUNDS = 20
PINNED_TOML = "[drift]\nrerun_on_code_change = false\n"


def _dispositions(sigint: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGINT, sigint)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return preexec


def _wait_for(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if needle in log.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


def _children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux /proc)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """The child ended whatever happened: killed if it still runs, and waited for."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _lock_is_free(root: Path) -> bool:
    try:
        with FileLock(str(root / ".distill.lock")).acquire(timeout=0):
            return True
    except Timeout:
        return False


def _workspace(root: Path) -> Path:
    (root / "_kb").mkdir(parents=True)
    for f in sorted(SAMPLE_KB.glob("*.jsonl")):
        shutil.copyfile(f, root / "_kb" / f.name)
    (root / "distill.toml").write_text(PINNED_TOML)
    return root


# (signal to send, SIGINT disposition in the child, where the signal lands)
SCHEDULE = [
    (signal.SIGTERM if i % 2 == 0 else signal.SIGINT,
     signal.SIG_IGN if i % 4 == 0 else signal.SIG_DFL,
     "wait" if i % 5 == 4 else "stage")
    for i in range(ROUNDS)
]


@pytest.mark.slow
def test_every_stops_on_signals_within_5s_twenty_times(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws")
    outcomes: list[str] = []
    for n, (signum, sigint, where) in enumerate(SCHEDULE):
        if sigint == signal.SIG_IGN and signum == signal.SIGINT:
            signum = signal.SIGTERM  # an ignored SIGINT must not stop it: that is the point of SIGTERM
        log = tmp_path / f"run{n}.log"
        # --force keeps every run doing real work (a signal lands inside a stage); a long interval
        # without --force makes the signal land in the wait
        args = ["run", "--no-index", "--root", str(root), "--every", "1s" if where == "stage" else "60s"]
        if where == "stage":
            args.append("--force")
        # every third round runs export-rag and export-sft side by side (a worker process)
        side_by_side = {"DISTILL_RUN__JOBS": "2", "DISTILL_RUN__PARALLEL_MIN_INPUT_MIB": "0"} if n % 3 == 1 else {}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*DISTILL, *args], cwd=REPO, env=cli_env(**side_by_side), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_dispositions(sigint),
            )
        workers: set[int] = set()
        try:
            # a stage has finished (so the next one is running), or the first wait has begun
            needle = "done " if where == "stage" else "next run in"
            if side_by_side and where == "stage":
                needle = "done score"  # export-rag and export-sft are running, one in a worker
            assert _wait_for(log, needle, proc, timeout=120), log.read_text(errors="replace")
            time.sleep(0.1 * (n % 7))  # spread the moment over the stage in progress
            if side_by_side and where == "stage":
                time.sleep(1.5)  # past a worker's start-up (~1 s): into its stage's work
            workers.update(_children(proc.pid))
            sent = time.monotonic()
            proc.send_signal(signum)
            try:
                code = proc.wait(timeout=STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"round {n}: {signal.Signals(signum).name} did not stop the run within {STOP_WITHIN_S}s")
            took = time.monotonic() - sent
        finally:
            _reap(proc)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text
        assert _lock_is_free(root), f"round {n}: the workspace lock is still held"
        deadline = time.monotonic() + 10.0  # an orphan is reaped by init a moment after the run exits
        while [w for w in workers if _alive(w)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)], f"round {n}: a worker process outlived the run"
        assert not list(root.rglob("*.tmp")), f"round {n}: temporary files left behind"
        assert code in (0, 1, 130, 143), (n, code, text)
        outcomes.append(f"{signal.Signals(signum).name}/{where}: exit {code} in {took:.2f}s"
                        + (f" ({len(workers)} worker process(es) stopped)" if workers else ""))
    print("\n".join(outcomes))  # shown with -s: how each round ended
    # every way of stopping was exercised, including abandoning a stage in progress
    assert any("exit 143" in o for o in outcomes) and any("exit 130" in o for o in outcomes), outcomes
    assert any("worker process(es) stopped" in o for o in outcomes), outcomes
    # whatever was abandoned, the next run resumes and produces the exports a clean run produces
    done = run_cli([*DISTILL, "run", "--no-index", "--root", str(root)])
    assert done.returncode == 0, done.stdout + done.stderr
    clean = _workspace(tmp_path / "clean")
    assert run_cli([*DISTILL, "run", "--no-index", "--root", str(clean)]).returncode == 0
    assert tree_bytes(root / "exports") == tree_bytes(clean / "exports")
    assert jsonl_problems(root / "evidence") == [] and jsonl_problems(root / "exports") == []


@pytest.mark.slow
def test_every_reports_a_run_that_cannot_start_and_goes_on(tmp_path: Path) -> None:
    """`distill run --every` ended (exit 2) when a manual `distill export` held the workspace at
    its tick: a periodic service stopped by a user's command. Now a run that cannot start (the
    workspace busy, the settings edited into an error) is one line and the next run comes at its
    time; the settings, once mended, are read again."""
    root = _workspace(tmp_path / "ws")
    log = tmp_path / "every.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*DISTILL, "run", "--no-index", "--root", str(root), "--every", "1s"], cwd=REPO,
                                env=cli_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_dispositions(signal.SIG_DFL))
    try:
        assert _wait_for(log, "next run in", proc, timeout=120), log.read_text(errors="replace")
        with FileLock(str(root / ".distill.lock")):  # another command holds the workspace
            assert _wait_for(log, "another distill command is changing", proc, timeout=30), log.read_text()
        (root / "distill.toml").write_text(PINNED_TOML + "[export]\nno_such_setting = 1\n")
        assert _wait_for(log, "no_such_setting", proc, timeout=30), log.read_text()
        (root / "distill.toml").write_text(PINNED_TOML)
        mended = log.read_text().count("next run in")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and log.read_text().count("next run in") < mended + 2:
            time.sleep(0.05)
        tail = log.read_text().split("no_such_setting")[-1]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=STOP_WITHIN_S)
    finally:
        _reap(proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text
    assert text.count("(this run skipped)") >= 2, text
    assert "this run skipped" not in tail.split("\n", 1)[-1], tail  # the runs after the mend ran
    assert code == 0, text  # stopped between runs, with the last run's exit code
    assert _lock_is_free(root)

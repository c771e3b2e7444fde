"""Concurrency (issue 8): two `distill run`s on one workspace, and 8 `replay` writers x 100 runs.

Real processes, real locks: the second `distill run` must refuse with a message naming the lock
while the first finishes untouched (exports byte-identical to a solo run); eight replay processes
appending to one log must leave 800 whole, distinct ReplayRun lines.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from distill.jsonl import iter_raw_lines
from distill.records.replay import ReplayRun
from tests.fixtures_reliability import (
    DISTILL,
    REPLAY,
    REPO,
    cli_env,
    jsonl_problems,
    run_cli,
    small_workspace,
    tree_bytes,
    write_runtime_toml,
)
from tests.ollama_server import OllamaLoopback, Reply


def _run_dirs(root: Path) -> list[Path]:
    reports = root / "reports"
    return sorted(p for p in reports.iterdir() if p.is_dir()) if reports.is_dir() else []


def test_second_distill_run_refuses_and_the_first_is_not_corrupted(tmp_path: Path) -> None:
    base = small_workspace(tmp_path / "base", rows_per_stream=8)
    solo = tmp_path / "solo"
    shutil.copytree(base, solo)
    ref = run_cli([*DISTILL, "run", "--no-index", "--root", str(solo)])
    assert ref.returncode in (0, 1), ref.stderr

    ws = tmp_path / "ws"
    shutil.copytree(base, ws)
    first = subprocess.Popen([*DISTILL, "run", "--no-index", "--root", str(ws)], cwd=REPO, env=cli_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _run_dirs(ws) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the run directory appears only once the run lock is held
    assert first.poll() is None, "the first run finished before the second could start: no overlap to test"
    second = run_cli([*DISTILL, "run", "--no-index", "--root", str(ws)])
    out, err = first.communicate(timeout=300)

    assert second.returncode == 2, second.stdout + second.stderr
    message = second.stdout + second.stderr
    assert "another distill command is changing" in message and "`distill run`" in message
    assert "Traceback" not in message
    assert first.returncode == ref.returncode, err
    assert len(_run_dirs(ws)) == 1  # the refused run wrote no report
    assert tree_bytes(ws / "exports") == tree_bytes(solo / "exports")
    assert tree_bytes(ws / "evidence") == tree_bytes(solo / "evidence")
    assert tree_bytes(ws / "scored-runs") == tree_bytes(solo / "scored-runs")
    assert jsonl_problems(ws) == []


WRITERS = 8
RUNS_PER_WRITER = 100


@pytest.mark.slow
def test_eight_replay_writers_times_one_hundred_runs_give_800_whole_lines(tmp_path: Path) -> None:
    """8 x 100 through the real CLI and the loopback Ollama server; answers of 2-9 KB so an
    interleaved write could not hide inside one page."""
    root = tmp_path / "ws"
    (root / "_kb").mkdir(parents=True)

    def answer(body: dict) -> Reply:
        user = body["messages"][-1]["content"]
        tag = user.split("#")[-1].split("\n")[0].strip()  # the task is the prompt's "Question: ..." line
        return Reply(content=f"Verify writer task {tag}: check the fallback path. " * (40 + 3 * (hash(tag) % 60)))

    with OllamaLoopback() as srv:
        srv.set_default(answer)
        write_runtime_toml(root, srv.url)
        procs = []
        for w in range(WRITERS):
            tasks = tmp_path / f"tasks-{w}.jsonl"
            tasks.write_text("".join(json.dumps({"task": f"Audit writer task #{w}-{i}", "task_id": f"{w}-{i}"}) + "\n"
                                     for i in range(RUNS_PER_WRITER)))
            procs.append(subprocess.Popen(
                [*REPLAY, "--root", str(root), "--tasks-file", str(tasks), "--backend", "ollama", "--no-retrieval",
                 "--local-only", "--json"],
                cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode in (0, 1), err[-2000:]
            assert json.loads(out)["tasks"] == RUNS_PER_WRITER

    raw = list(iter_raw_lines(root / "_kb" / "replay_runs.jsonl"))
    assert len(raw) == WRITERS * RUNS_PER_WRITER
    assert all(r.terminated and r.data for r in raw)
    runs = [ReplayRun.model_validate_json(r.data) for r in raw]  # every line whole and schema-valid
    assert len({r.run_id for r in runs}) == 800
    assert sorted(r.task_id for r in runs) == sorted(f"{w}-{i}" for w in range(WRITERS) for i in range(RUNS_PER_WRITER))
    for r in runs:  # each line holds its own task's answer, not a neighbour's
        assert f"writer task {r.task_id}:" in r.final_output


@pytest.fixture(autouse=True)
def _no_stray_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISTILL_ROOT", raising=False)

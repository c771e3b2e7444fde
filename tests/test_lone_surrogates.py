"""Text with a lone surrogate is refused where it comes in, with a one-line reason.

Python reads JSON's "\\ud800" escape, and a command-line argument that is not UTF-8, as a lone
surrogate: no encoder takes it (a hash, a tokenizer, an HTTP body), so it raised deep inside. Found
by probe: `replay --check` with such an answer or context, `replay --task` with a byte that is not
UTF-8 (also with `--server`), and `distill search` ended in tracebacks. Collect already quarantines
a source row that holds one (it cannot be canonicalised), so no dataset carries it.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.records.common import unicode_problem
from tests.fixtures_reliability import DISTILL, REPLAY, run_cli

NOT_UTF8 = "retry \udcff policy"  # the argument b"retry \xff policy", as Python reads it


def test_unicode_problem_names_the_surrogate_and_where() -> None:
    assert unicode_problem("fine, \u00e9 and \U0001f600") is None
    assert unicode_problem("ab\ud800") == "not valid Unicode: a lone surrogate (\\ud800) at character 2"


def test_replay_check_reports_a_line_with_a_lone_surrogate(tmp_path: Path) -> None:
    good = {"id": "ok", "task": "How long does the retry wait?", "answer": "The retry waits 30 seconds in the policy.",
            "context": [{"id": "d", "text": "The retry waits 30 seconds."}]}
    path = tmp_path / "answers.jsonl"
    lines = [json.dumps(good),
             json.dumps({**good, "id": "answer", "answer": "The retry waits thirty seconds \ud800 in the policy."}),
             json.dumps({**good, "id": "context", "context": [{"id": "d", "text": "It waits 30 s \ud800."}]})]
    path.write_text("\n".join(lines) + "\n")
    done = run_cli([*REPLAY, "--check", str(path)], timeout=120)
    verdicts = {v["id"]: v for v in map(json.loads, done.stdout.splitlines())}
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert verdicts["ok"]["passed"]
    assert "answer: Value error, not valid Unicode: a lone surrogate (\\ud800)" in verdicts["answer"]["error"]
    assert "context.0.text" in verdicts["context"]["error"]


def test_a_task_or_a_query_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert run_cli([*DISTILL, "init", str(ws)], timeout=120).returncode == 0
    for args in ([*REPLAY, "--root", str(ws), "--task", NOT_UTF8],
                 [*REPLAY, "--root", str(ws), "--server", "http://127.0.0.1:9", "--task", NOT_UTF8],
                 [*DISTILL, "search", NOT_UTF8, "--root", str(ws)]):
        done = run_cli(args, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
        assert "not valid Unicode: a lone surrogate (\\udcff) at character 6" in done.stderr, done.stderr
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"task": "x \ud800 y"}) + "\n")
    done = run_cli([*REPLAY, "--root", str(ws), "--tasks-file", str(tasks), "--backend", "openai"], timeout=120)
    assert "Traceback" not in done.stderr and '"task" is not valid Unicode' in done.stderr, done.stderr

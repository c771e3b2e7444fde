"""Crash safety (issue 8): the quick mode of benchmarks/crash_harness.py inside the test suite.

14 SIGKILLs of real `distill export all`, `replay` and `distill score` processes at random points
(plus one simulated torn tail per export and replay suite); after each kill the append-only files
must be byte prefixes of an uninterrupted run (score: each file old, new, or grown in place by a
prefix of its appended bytes), and after the resume everything must be byte-identical to it
(replay: the same rows apart from run ids and wall-clock fields, collected with nothing
quarantined). The full run is `python benchmarks/crash_harness.py`; its figures are in
benchmarks/results/.
"""

from __future__ import annotations

import pytest

from benchmarks.crash_harness import markdown, run


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing_duplicates_nothing(tmp_path) -> None:
    result = run(5, 5, seed=8, rows=6, n_tasks=6, max_kills=3, torn_n=1, collect_every=1000, workdir=tmp_path,
                 score_n=4, score_rows=1000)
    report = markdown(result)
    assert result["trials"] >= 14, report
    assert [s["kind"] for s in result["suites"]] == ["export", "replay", "score"], report
    assert result["torn_tail_trials"] == 2, report
    assert result["failures"] == 0, report
    for suite in result["suites"]:
        assert suite["chains"] >= 1 and suite["chain_failures"] == 0, report
        assert suite["leftover_temp_files"] == 0, report


def test_the_score_check_takes_old_new_and_grown_files_and_nothing_else(tmp_path) -> None:
    """What the score trials accept after a kill, on files written by hand."""
    from benchmarks.crash_harness import check_score_after_kill

    old = {"scored-runs/a.jsonl": b'{"n": 1}\n', "scored-runs/b.jsonl": b'{"n": 2}\n', "scored-runs/c.jsonl": b'{"n": 3}\n'}
    new = {"scored-runs/a.jsonl": b'{"n": 1}\n{"n": 4}\n{"n": 5}\n', "scored-runs/b.jsonl": b'{"n": 6}\n',
           "scored-runs/c.jsonl": b'{"n": 3}\n', "scored-runs/d.jsonl": b'{"n": 7}\n',
           "exports/quarantine/score.jsonl": b'{"q": 1}\n'}

    def after(files: dict[str, bytes]) -> tuple[list[str], str]:
        ws = tmp_path / f"ws{len(list(tmp_path.iterdir()))}"
        for rel, data in files.items():
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            (ws / rel).write_bytes(data)
        return check_score_after_kill(ws, old, new)

    assert after(old) == ([], "old 3")
    assert after(new) == ([], "old 1/new 4")  # c.jsonl: the run left it as it was
    grown = {**old, "scored-runs/a.jsonl": b'{"n": 1}\n{"n": 4}\n{"n'}  # killed inside the append
    assert after(grown) == ([], "old 2/growing 1")
    for broken in ({**old, "scored-runs/b.jsonl": b'{"n": 2}\n{"n": 6}\n'},  # appended to a file rewritten whole
                   {**old, "scored-runs/a.jsonl": b'{"n'},  # cut inside the old bytes
                   {**old, "scored-runs/d.jsonl": b'{"n'},  # a new file half written
                   {k: v for k, v in old.items() if k != "scored-runs/c.jsonl"}):  # a file gone
        problems, _ = after(broken)
        assert len(problems) == 1, (broken, problems)

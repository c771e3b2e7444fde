"""Crash safety (issue 8): the quick mode of benchmarks/crash_harness.py inside the test suite.

10 SIGKILLs of real `distill export all` and `replay` processes at random points (plus one
simulated torn tail per suite); after each kill the append-only files must be byte prefixes of an
uninterrupted run, and after the resume everything must be byte-identical to it (replay: the same
rows apart from run ids and wall-clock fields, collected with nothing quarantined). The full run
(120 kills) is `python benchmarks/crash_harness.py`; its figures are in benchmarks/results/.
"""

from __future__ import annotations

import pytest

from benchmarks.crash_harness import markdown, run


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing_duplicates_nothing(tmp_path) -> None:
    result = run(5, 5, seed=8, rows=6, n_tasks=6, max_kills=3, torn_n=1, collect_every=1000, workdir=tmp_path)
    report = markdown(result)
    assert result["trials"] >= 10, report
    assert result["torn_tail_trials"] == 2, report
    assert result["failures"] == 0, report
    for suite in result["suites"]:
        assert suite["chains"] >= 1 and suite["chain_failures"] == 0, report

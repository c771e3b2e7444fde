"""Collect the latest full-run tables into benchmarks/results/LATEST.md (the README's benchmark section).

    python benchmarks/latest.py

Takes each suite's full-run markdown (not the _quick ones) that exists under benchmarks/results,
in a fixed order, and writes them one after the other with the command that reproduces each.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import RESULTS  # noqa: E402

SUITES = [
    ("pipeline_1m.md", "python benchmarks/pipeline.py --rows 1000000 --nice 0 --no-profile --name pipeline_1m"),
    ("pipeline_1m_one_day.md",
     "python benchmarks/pipeline.py --rows 1000000 --one-day --nice 0 --no-profile --name pipeline_1m_one_day"),
    ("pipeline_1m_one_task.md",
     "python benchmarks/pipeline.py --rows 1000000 --one-task --nice 0 --no-profile --name pipeline_1m_one_task"),
    ("pipeline.md", "python benchmarks/pipeline.py --rows 30000  # target size: --rows 1000000"),
    ("rerun_1m.md", "python benchmarks/rerun.py --rows 1000000 --name rerun_1m"),
    ("rerun.md", "python benchmarks/rerun.py --rows 30000"),
    ("secret_gate.md", "python benchmarks/secret_gate.py"),
    ("escalation.md", "python benchmarks/escalation.py --tasks 10 --max-tokens 64 --k 4 --item-max-chars 500"),
    ("escalation_local.md", "python benchmarks/escalation.py --local-only --max-tokens 64 --k 4 --item-max-chars 500"),
    ("escalation_rejudged.md", "python benchmarks/escalation_rejudge.py benchmarks/results/escalation.json"),
    ("escalation_local_rejudged.md", "python benchmarks/escalation_rejudge.py benchmarks/results/escalation_local.json"),
    ("gate_check.md", "python benchmarks/gate_check.py --split test"),
    ("gate_check_dev.md", "python benchmarks/gate_check.py --split dev"),
    ("claims.md", "python benchmarks/claims.py"),
    ("prompt_variants.md", "python benchmarks/prompt_variants.py"),
    ("prompt_variants_labels.md", "python benchmarks/prompt_variants.py --families sample --tasks 20 --max-tokens 64 "
                                  "--variants quoted quoted_says_example quoted_first_option_example --name prompt_variants_labels"),
    ("gate_quality.md", "python benchmarks/gate_quality.py"),
    ("fusion.md", "python benchmarks/fusion.py"),
    ("retrieval_scifact.md", "python benchmarks/retrieval.py"),
    ("index.md", "python benchmarks/index.py"),
    ("distinct_hits.md", "python benchmarks/distinct_hits.py"),
    ("replay_cold_start.md", "python benchmarks/replay_cold_start.py"),
    ("serve_load.md", "python benchmarks/serve_load.py"),
    ("serve_load_live.md", "python benchmarks/serve_load.py --stream live"),
    ("serve_first_token.md", "python benchmarks/serve_first_token.py"),
]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description='Collect the latest full-run tables into benchmarks/results/LATEST.md.').parse_args(argv)  # --help; refuses stray arguments
    from distill.jsonl import write_atomic

    parts = ["## Benchmarks (latest runs on the development machine)\n",
             "Every figure below comes from the command under its table; results (JSON, plots, profiles) are in "
             "`benchmarks/results/`. Quick (`--quick`) versions run in CI as smoke tests.\n"]
    for name, cmd in SUITES:
        path = RESULTS / name
        if path.is_file():
            parts.append(path.read_text().rstrip() + f"\n\nReproduce: `{cmd}`\n")
    write_atomic(RESULTS / "LATEST.md", ("\n".join(parts) + "\n").encode())
    print(RESULTS / "LATEST.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

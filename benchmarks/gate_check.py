"""`replay --check` on real grounded answers: PubMedQA long answers with their own abstracts (should
pass) and with another question's abstract (should fail).

    python benchmarks/gate_check.py              # the 500 PubMedQA test questions
    python benchmarks/gate_check.py --split dev  # the other 500 (where the support thresholds were chosen)
    python benchmarks/gate_check.py --quick      # 60 questions

Each expert-written conclusion (LONG_ANSWER) becomes an answer to its question, once with the
question's own contexts as the evidence and once with the contexts of another question (the next
one in PMID order): the files are written in the `replay --check` input form and run through the
real command, so what is measured is what a user gets. Targets: >= 90% of grounded answers pass,
>= 90% of mismatched ones fail. Per check, how many of each it failed.
Results: benchmarks/results/gate_check[_quick|_dev].json/.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import RESULTS, cli, log, machine, md_table, write_results  # noqa: E402
from benchmarks.suites import shared_dataset  # noqa: E402


def build(split: str, limit: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    root = shared_dataset("pubmedqa_pqal")
    data = json.loads((root / "ori_pqal.json").read_text())
    test_ids = set(json.loads((root / "test_ground_truth.json").read_text()))
    pmids = [p for p in sorted(data, key=int) if (p in test_ids) == (split == "test")][:limit]
    grounded, mismatched = [], []
    for i, p in enumerate(pmids):
        q = data[p]
        other = data[pmids[(i + 1) % len(pmids)]]
        answer = q["LONG_ANSWER"]
        grounded.append({"id": f"{p}:own", "task": q["QUESTION"], "answer": answer,
                         "context": [{"id": f"pubmed:{p}:{k}", "text": t} for k, t in enumerate(q["CONTEXTS"])]})
        mismatched.append({"id": f"{p}:other", "task": q["QUESTION"], "answer": answer,
                           "context": [{"id": f"other:{k}", "text": t} for k, t in enumerate(other["CONTEXTS"])]})
    return grounded, mismatched


def run_check(rows: list[dict[str, Any]], work: Path) -> tuple[list[dict[str, Any]], int, float]:
    path = work / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "--check", str(path), "--root", str(work)],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise SystemExit(f"replay --check exited {done.returncode}: {done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines()], done.returncode, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=("test", "dev"), default="test")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    grounded, mismatched = build(args.split, 60 if args.quick else None)
    with tempfile.TemporaryDirectory(prefix="distill-gate-check-") as tmp:
        own, _, wall_own = run_check(grounded, Path(tmp))
        other, _, wall_other = run_check(mismatched, Path(tmp))

    def failures(verdicts: list[dict[str, Any]]) -> dict[str, int]:
        return dict(Counter(c["name"] for v in verdicts for c in v["checks"] if not c["passed"]))

    result = {
        "suite": "gate_check", "split": args.split, "quick": args.quick, "machine": machine(), "n": len(own),
        "grounded_pass_rate": sum(v["passed"] for v in own) / len(own),
        "mismatched_fail_rate": sum(not v["passed"] for v in other) / len(other),
        "grounded_failed_by": failures(own), "mismatched_failed_by": failures(other),
        "wall_s": {"grounded": round(wall_own, 2), "mismatched": round(wall_other, 2)},
        "targets": {"grounded_pass": 0.9, "mismatched_fail": 0.9},
        "grounded_failures": [{"id": v["id"], "reasons": [c["reason"] for c in v["checks"] if not c["passed"]]}
                              for v in own if not v["passed"]][:20],
    }
    name = "gate_check" + ("_quick" if args.quick else "") + ("_dev" if args.split == "dev" else "")
    md = markdown(result)
    write_results(args.out_dir, name, result, md)
    log(md)
    return 0


def markdown(r: dict[str, Any]) -> str:
    checks = sorted(set(r["grounded_failed_by"]) | set(r["mismatched_failed_by"]))
    met = lambda v, t, more=True: "met" if (v >= t if more else v <= t) else "missed"  # noqa: E731
    return (
        f"### replay --check on PubMedQA ({r['split']} split, {r['n']} questions)\n\n"
        + md_table(["answers", "n", "result", "target", ""],
                   [["long answer + its own abstract", r["n"], f"{r['grounded_pass_rate']:.1%} pass", "≥ 90% pass",
                     met(r["grounded_pass_rate"], 0.9)],
                    ["long answer + another question's abstract", r["n"], f"{r['mismatched_fail_rate']:.1%} fail", "≥ 90% fail",
                     met(r["mismatched_fail_rate"], 0.9)]])
        + "\nFailed checks (grounded / mismatched): "
        + ", ".join(f"{c} {r['grounded_failed_by'].get(c, 0)}/{r['mismatched_failed_by'].get(c, 0)}" for c in checks)
        + f"\n\n- `replay --check` wall time {r['wall_s']['grounded']} s + {r['wall_s']['mismatched']} s; "
          f"load {r['machine']['loadavg_at_start']}; commit {r['machine']['git_commit']}\n"
    )


if __name__ == "__main__":
    raise SystemExit(cli(main))
